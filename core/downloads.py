"""Fetching a user's image safely: redirects checked hop by hop, addresses checked after DNS
resolution, and a byte cap enforced while the body streams in (whatever Content-Length claims).

An attachment comes from Discord's CDN only (``fetch``): Discord puts its own CDN's URL in
an attachment, and the allow-list exists for Discord-compatible proxies and the fake Discord
of the tests. A link a user gives (``fetch_link``) may point anywhere public: https only, and
never to a private, loopback or link-local address, for the link and for every redirect.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

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
    """Resolves like aiohttp's default resolver, but refuses when one of ``names`` (``None``:
    any name but the ``exempt`` ones) resolves to a private, loopback or link-local address
    (a poisoned resolver, DNS rebinding). It runs for every connection, so every redirect."""

    def __init__(
        self,
        names: Iterable[str] | None,
        inner: AbstractResolver | None = None,
        *,
        exempt: Iterable[str] = (),
        refusal: str = N_(
            "Discord's file server resolved to a private address here, so I did not fetch the "
            "attachment. Please tell the bot's operator."
        ),
    ) -> None:
        self.names = None if names is None else {_normal_host(n) for n in names}
        self.exempt = {_normal_host(n) for n in exempt}
        self.refusal = refusal
        self.inner: AbstractResolver = inner if inner is not None else aiohttp.DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        name = _normal_host(host)
        checked = name not in self.exempt and (self.names is None or name in self.names)
        if checked and not all(_is_public(result["host"]) for result in results):
            raise DownloadRefused(self.refusal)
        return results

    async def close(self) -> None:
        await self.inner.close()


def _mebibytes(limit: int) -> str:
    return f"{limit / 2**20:g}"


@dataclass(frozen=True, slots=True)
class _Refusals:
    """What to tell the user when a download goes wrong (N_-marked templates)."""

    no_location: str
    status: str  # with {status}
    redirects: str
    too_large: str  # with {size}
    size_text: Callable[[int], str] = _mebibytes  # how {size} shows the limit


_ATTACHMENT = _Refusals(
    no_location=N_("I could not download that attachment."),
    status=N_(
        "I could not download that attachment (the file server answered {status}). "
        "Please try again."
    ),
    redirects=N_("That attachment's address redirected too many times."),
    too_large=N_("That image is larger than {size} MiB; please attach a smaller one."),
)
_LINK = _Refusals(
    no_location=N_("I could not download the image at that link."),
    status=N_("I could not download the image at that link (its server answered {status})."),
    redirects=N_("That link redirected too many times."),
    too_large=N_("The image at that link is larger than {size} MiB; please use a smaller one."),
)


async def fetch(
    url: str,
    *,
    hosts: Iterable[AllowedHost] | None = None,
    max_bytes: int,
    max_redirects: int = MAX_REDIRECTS,
    resolver: AbstractResolver | None = None,
) -> bytes:
    """The attachment at ``url``, at most ``max_bytes`` of it. Raises a UserError subclass
    otherwise.

    Every hop (the URL and each redirect) is checked against ``hosts`` before connecting; no
    proxy from the environment is used; the body is read in chunks and the connection dropped
    as soon as the cap is passed. Callers bound the time (``asyncio.timeout``).
    """
    allowed = tuple(hosts) if hosts is not None else allowed_hosts(DISCORD_CDN_HOSTS)
    return await _get(
        _parse(url),
        lambda hop: check_url(hop, allowed),
        PublicOnlyResolver(DISCORD_CDN_HOSTS, resolver),
        max_bytes,
        max_redirects,
        _ATTACHMENT,
    )


def check_link(url: URL, allowed: Iterable[AllowedHost] = ()) -> None:
    """Raise DownloadRefused unless ``url`` is an https address that is not a private,
    loopback or link-local IP address. ``allowed`` (a test setting) lets exactly those
    host:port pairs through, over http too."""
    if not url.host or url.scheme not in _DEFAULT_PORTS:
        raise DownloadRefused(N_("That is not a web address (https://...) of an image."))
    host = _normal_host(url.host)
    if any(a.host == host and a.port == url.port for a in allowed):
        return
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None  # a name: checked after resolution, by PublicOnlyResolver
    if literal is not None and not literal.is_global:
        raise DownloadRefused(_PRIVATE_LINK)
    if url.scheme != "https":
        raise DownloadRefused(N_("Only https links are fetched: that one is not secure."))
    if url.user or url.password:
        raise DownloadRefused(N_("Links with a user name or password are not fetched."))


_PRIVATE_LINK = N_("That link points to a private or local address, so I did not fetch it.")


async def fetch_link(
    url: str,
    *,
    max_bytes: int,
    allowed: Iterable[AllowedHost] = (),
    max_redirects: int = MAX_REDIRECTS,
    resolver: AbstractResolver | None = None,
) -> bytes:
    """The image a user links to, at most ``max_bytes`` of it (``check_link`` for each hop,
    and the addresses every name resolves to must be public). Raises a UserError subclass
    otherwise. Callers bound the time (``asyncio.timeout``) and check that it is an image."""
    exempt = tuple(allowed)
    return await _get(
        _parse(url, link=True),
        lambda hop: check_link(hop, exempt),
        PublicOnlyResolver(None, resolver, exempt=[a.host for a in exempt], refusal=_PRIVATE_LINK),
        max_bytes,
        max_redirects,
        _LINK,
    )


async def _get(
    current: URL,
    check: Callable[[URL], None],
    resolver: AbstractResolver,
    max_bytes: int,
    max_redirects: int,
    refusals: _Refusals,
) -> bytes:
    async with _final_response(
        current, check, resolver, max_bytes, max_redirects, refusals
    ) as response:
        body = bytearray()
        async for chunk in response.content.iter_chunked(CHUNK_BYTES):
            body += chunk
            if len(body) > max_bytes:
                raise _too_large(refusals, max_bytes)
        return bytes(body)


def _too_large(refusals: _Refusals, max_bytes: int) -> DownloadTooLarge:
    return DownloadTooLarge(refusals.too_large, size=refusals.size_text(max_bytes))


@contextlib.asynccontextmanager
async def _final_response(
    current: URL,
    check: Callable[[URL], None],
    resolver: AbstractResolver,
    max_bytes: int,
    max_redirects: int,
    refusals: _Refusals,
    client_timeout: aiohttp.ClientTimeout | None = None,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """The 200 response at the end of ``current``'s redirects, each hop checked before the
    connection is made; its body not read yet, and not announced as over ``max_bytes``."""
    check(current)
    connector = aiohttp.TCPConnector(resolver=resolver, limit=1, force_close=True)
    async with aiohttp.ClientSession(
        connector=connector,
        trust_env=False,
        auto_decompress=False,
        timeout=client_timeout or aiohttp.client.DEFAULT_TIMEOUT,
    ) as session:
        for _hop in range(max_redirects + 1):
            async with session.get(
                current, allow_redirects=False, headers={"Accept-Encoding": "identity"}
            ) as response:
                if response.status in _REDIRECTS:
                    location = response.headers.get("Location")
                    if not location:
                        raise DownloadFailed(refusals.no_location)
                    current = current.join(_parse(location))
                    check(current)
                    continue
                if response.status != 200:
                    raise DownloadFailed(refusals.status, status=response.status)
                if response.content_length is not None and response.content_length > max_bytes:
                    raise _too_large(refusals, max_bytes)
                yield response
                return
        raise DownloadRefused(refusals.redirects)


def human_size(size: int) -> str:
    """``8 GiB``, ``1.5 MiB``, ``200 KiB``, ``17 bytes``: for messages, not for parsing."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{size} bytes"


# What a model download tells the user when it goes wrong.
_MODEL_LINK = _Refusals(
    no_location=N_("I could not download the file at that link."),
    status=N_("I could not download the file at that link (its server answered {status})."),
    redirects=N_("That link redirected too many times."),
    too_large=N_("The file at that link is larger than the limit of {size}."),
    size_text=human_size,
)
# Bytes gathered before a write (and the hashing of them) goes to a thread: few thread hops
# for a file of gigabytes, and little memory.
FILE_WRITE_BYTES = 4 * 2**20

ProgressCallback = Callable[[int, int | None], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class DownloadedFile:
    path: Path
    size_bytes: int
    sha256: str  # hex


async def download_link_to_file(
    url: str,
    destination: Path,
    *,
    max_bytes: int,
    allowed: Iterable[AllowedHost] = (),
    on_progress: ProgressCallback | None = None,
    idle_timeout_s: float = 60.0,
    max_redirects: int = MAX_REDIRECTS,
    resolver: AbstractResolver | None = None,
) -> DownloadedFile:
    """Stream the file a user links to into ``destination``, with ``fetch_link``'s guard
    (``check_link`` for each hop, public addresses only after DNS resolution) and its
    SHA-256 computed on the way. ``on_progress(done, total)`` is awaited as chunks arrive
    (``total``: the announced length, if any); the caller decides how often to show it.

    Over ``max_bytes`` (announced or streamed), a server that stalls for ``idle_timeout_s``,
    or any failure: ``destination`` is deleted and a UserError subclass raised. Writing
    and hashing run in a thread, so a file of gigabytes never blocks the event loop.
    """
    exempt = tuple(allowed)
    digest = hashlib.sha256()
    done = 0
    destination.parent.mkdir(parents=True, exist_ok=True)
    file = await asyncio.to_thread(destination.open, "wb")
    try:
        async with _final_response(
            _parse(url, link=True),
            lambda hop: check_link(hop, exempt),
            PublicOnlyResolver(
                None, resolver, exempt=[a.host for a in exempt], refusal=_PRIVATE_LINK
            ),
            max_bytes,
            max_redirects,
            _MODEL_LINK,
            aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=idle_timeout_s),
        ) as response:
            total = response.content_length
            pending = bytearray()
            async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                done += len(chunk)
                if done > max_bytes:
                    raise _too_large(_MODEL_LINK, max_bytes)
                pending += chunk
                if len(pending) >= FILE_WRITE_BYTES:
                    await asyncio.to_thread(_write_and_hash, file, digest, bytes(pending))
                    pending.clear()
                if on_progress is not None:
                    await on_progress(done, total)
            await asyncio.to_thread(_write_and_hash, file, digest, bytes(pending))
        await asyncio.to_thread(file.close)
    except TimeoutError:
        await _discard(file, destination)
        raise DownloadFailed(
            N_("The server of that link stopped sending the file (nothing for {seconds} s)."),
            seconds=f"{idle_timeout_s:g}",
        ) from None
    except aiohttp.ClientError:
        await _discard(file, destination)
        raise DownloadFailed(N_("I could not reach the server of that link.")) from None
    except BaseException:
        await _discard(file, destination)
        raise
    return DownloadedFile(destination, done, digest.hexdigest())


def _write_and_hash(file: BinaryIO, digest: Any, data: bytes) -> None:
    file.write(data)
    digest.update(data)


async def _discard(file: BinaryIO, path: Path) -> None:
    """Close and delete a partial download (shielded: it runs when the download is
    cancelled too, and must not leave gigabytes behind)."""

    def discard() -> None:
        file.close()
        path.unlink(missing_ok=True)

    await asyncio.shield(asyncio.to_thread(discard))


# What the bytes start with, whatever the server's headers claim: PNG, JPEG, GIF, BMP, WebP.
_IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")


def looks_like_image(data: bytes) -> bool:
    return data.startswith(_IMAGE_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


async def image_from_link(
    url: str,
    *,
    max_bytes: int,
    timeout_s: float,
    allowed: Iterable[AllowedHost] = (),
    resolver: AbstractResolver | None = None,
) -> bytes:
    """The image a user links to (``fetch_link``), within ``timeout_s``, and only if its
    bytes are an image's (the engine then decodes and checks it)."""
    try:
        async with asyncio.timeout(timeout_s):
            data = await fetch_link(url, max_bytes=max_bytes, allowed=allowed, resolver=resolver)
    except TimeoutError:
        raise DownloadFailed(
            N_("The image at that link took too long to download (over {seconds} s)."),
            seconds=f"{timeout_s:g}",
        ) from None
    except aiohttp.ClientError:
        raise DownloadFailed(N_("I could not reach the server of that link.")) from None
    if not looks_like_image(data):
        raise DownloadFailed(
            N_("That link does not lead to an image (PNG, JPEG, WebP, GIF or BMP).")
        )
    return data


def _parse(url: str, *, link: bool = False) -> URL:
    try:
        return URL(url.strip())
    except (ValueError, TypeError):
        raise DownloadRefused(
            N_("That link is not a valid web address.")
            if link
            else N_("That attachment's address is not a valid one.")
        ) from None


def _is_public(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_global
    except ValueError:
        return False


def _normal_host(host: str) -> str:
    host = host.strip("[]").rstrip(".").lower()
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host
