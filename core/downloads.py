"""Fetching a user's attachment safely: only from allowed hosts, redirects checked hop by hop,
and a byte cap enforced while the body streams in (whatever Content-Length claims).

Discord puts its own CDN's URL in an attachment; nothing else should ever be fetched. The
allow-list exists for Discord-compatible proxies and for the fake Discord of the tests.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from core.errors import N_, UserError

# The hosts Discord serves attachments from. These names must resolve to public addresses.
DISCORD_CDN_HOSTS: tuple[str, ...] = ("cdn.discordapp.com", "media.discordapp.net")
MAX_REDIRECTS = 3
CHUNK_BYTES = 64 * 1024
_REDIRECTS = {301, 302, 303, 307, 308}
_DEFAULT_PORTS = {"https": 443, "http": 80}


class DownloadRefused(UserError):
    """The attachment's address (or a redirect's) is not one the bot fetches from."""


class DownloadTooLarge(UserError):
    """The attachment turned out to be bigger than the cap."""


class DownloadFailed(UserError):
    """The server answered, but not with the file."""


@dataclass(frozen=True, slots=True)
class AllowedHost:
    """``host`` on ``port`` (``None``: the scheme's default port)."""

    host: str
    port: int | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


def parse_allowed_host(entry: str) -> AllowedHost:
    """``cdn.example.com``, ``proxy.example.com:8443``, ``127.0.0.1:8080`` or ``[::1]:8080``.

    Raises ValueError with a message that says what is wrong (for settings validation).
    """
    text = entry.strip()
    if not text:
        raise ValueError("an empty host name")
    if "://" in text or "/" in text or "@" in text or "?" in text or "#" in text:
        raise ValueError(f"{text!r} is not a host name; write host or host:port, no scheme/path")
    try:
        url = URL(f"https://{text}")
        host, explicit_port = url.host, url.explicit_port
    except ValueError:
        raise ValueError(f"{text!r} is not a host name or host:port") from None
    if not host:
        raise ValueError(f"{text!r} is not a host name or host:port")
    return AllowedHost(_normal_host(host), explicit_port)


def allowed_hosts(entries: Iterable[str | AllowedHost]) -> tuple[AllowedHost, ...]:
    return tuple(e if isinstance(e, AllowedHost) else parse_allowed_host(e) for e in entries)


def api_origin_host(api_base_url: str) -> AllowedHost | None:
    """The exact host and port of the REST base URL, when it is not Discord's own.

    The bot already trusts that origin with its token and takes its word on everything it does,
    so a fake or proxy Discord there may serve attachments too; only that one port, never the
    rest of its host or network.
    """
    url = URL(api_base_url)
    if not url.host or url.scheme not in _DEFAULT_PORTS:
        return None
    host = _normal_host(url.host)
    if host in {"discord.com", "discordapp.com"}:
        return None
    return AllowedHost(host, url.explicit_port)


def download_hosts(
    configured: Iterable[str | AllowedHost] | None, api_base_url: str | None
) -> tuple[AllowedHost, ...]:
    """The hosts attachments are fetched from: ``configured`` (``None``: Discord's CDN hosts)
    plus the exact origin of a non-Discord REST base URL."""
    hosts = list(allowed_hosts(DISCORD_CDN_HOSTS if configured is None else configured))
    origin = api_origin_host(api_base_url) if api_base_url else None
    if origin is not None and origin not in hosts:
        hosts.append(origin)
    return tuple(hosts)


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: URL, hosts: Iterable[AllowedHost]) -> None:
    """Raise DownloadRefused unless ``url`` is https (or http to a loopback host) on the list."""
    if url.scheme not in _DEFAULT_PORTS or not url.host:
        raise DownloadRefused(N_("That attachment's address is not a Discord file address."))
    host = _normal_host(url.host)
    if url.scheme == "http" and not is_loopback_host(host):
        raise DownloadRefused(
            N_("That attachment's address is not a secure (https) one, so I did not fetch it.")
        )
    port = url.port
    for allowed in hosts:
        if allowed.host != host:
            continue
        if port == (allowed.port if allowed.port is not None else _DEFAULT_PORTS[url.scheme]):
            return
    raise DownloadRefused(
        N_(
            "That attachment is not on Discord's file servers, so I did not fetch it. "
            "Please attach the image to the command directly."
        )
    )


class PublicOnlyResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, but refuses when one of ``names`` resolves to a
    private, loopback or link-local address (a poisoned resolver, DNS rebinding)."""

    def __init__(self, names: Iterable[str], inner: AbstractResolver | None = None) -> None:
        self.names = {_normal_host(n) for n in names}
        self.inner: AbstractResolver = inner if inner is not None else aiohttp.DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        if _normal_host(host) in self.names:
            for result in results:
                if not ipaddress.ip_address(result["host"]).is_global:
                    raise DownloadRefused(
                        N_(
                            "Discord's file server resolved to a private address here, so I did "
                            "not fetch the attachment. Please tell the bot's operator."
                        )
                    )
        return results

    async def close(self) -> None:
        await self.inner.close()


async def fetch(
    url: str,
    *,
    hosts: Iterable[AllowedHost] | None = None,
    max_bytes: int,
    max_redirects: int = MAX_REDIRECTS,
    resolver: AbstractResolver | None = None,
) -> bytes:
    """The body at ``url``, at most ``max_bytes`` of it. Raises a UserError subclass otherwise.

    Every hop (the URL and each redirect) is checked against ``hosts`` before connecting; no
    proxy from the environment is used; the body is read in chunks and the connection dropped
    as soon as the cap is passed. Callers bound the time (``asyncio.timeout``).
    """
    allowed = tuple(hosts) if hosts is not None else allowed_hosts(DISCORD_CDN_HOSTS)
    current = _parse(url)
    check_url(current, allowed)
    connector = aiohttp.TCPConnector(
        resolver=PublicOnlyResolver(DISCORD_CDN_HOSTS, resolver),
        limit=1,
        force_close=True,
    )
    async with aiohttp.ClientSession(
        connector=connector, trust_env=False, auto_decompress=False
    ) as session:
        for _hop in range(max_redirects + 1):
            async with session.get(
                current, allow_redirects=False, headers={"Accept-Encoding": "identity"}
            ) as response:
                if response.status in _REDIRECTS:
                    location = response.headers.get("Location")
                    if not location:
                        raise DownloadFailed(N_("I could not download that attachment."))
                    current = current.join(_parse(location))
                    check_url(current, allowed)
                    continue
                if response.status != 200:
                    raise DownloadFailed(
                        N_(
                            "I could not download that attachment "
                            "(the file server answered {status}). Please try again."
                        ),
                        status=response.status,
                    )
                if response.content_length is not None and response.content_length > max_bytes:
                    raise _too_large(max_bytes)
                body = bytearray()
                async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                    body += chunk
                    if len(body) > max_bytes:
                        raise _too_large(max_bytes)
                return bytes(body)
        raise DownloadRefused(N_("That attachment's address redirected too many times."))


def _parse(url: str) -> URL:
    try:
        return URL(url)
    except (ValueError, TypeError):
        raise DownloadRefused(N_("That attachment's address is not a valid one.")) from None


def _too_large(max_bytes: int) -> DownloadTooLarge:
    return DownloadTooLarge(
        N_("That image is larger than {size} MiB; please attach a smaller one."),
        size=f"{max_bytes / 2**20:g}",
    )


def _normal_host(host: str) -> str:
    host = host.strip("[]").rstrip(".").lower()
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host
