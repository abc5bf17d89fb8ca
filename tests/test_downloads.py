"""Attachment downloads against real HTTP servers on 127.0.0.1: only allowed hosts, each redirect
checked before it is followed, and the byte cap enforced while the body streams."""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import discord
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from discord.http import HTTPClient
from yarl import URL

from cogs.imagine import read_upload
from core import downloads
from core.downloads import (
    AllowedHost,
    DownloadRefused,
    DownloadTooLarge,
    allowed_hosts,
    check_url,
    download_hosts,
    parse_allowed_host,
)
from core.errors import UserError

CAP = 1 * 2**20
HUGE = 64 * 2**20
# A cut-off download may still have filled the socket buffers on both sides: bounded, though
# far below the body's size.
BUFFER_SLACK = 15 * 2**20
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 100


@dataclass
class Server:
    """A real aiohttp server on 127.0.0.1 that counts what it was asked and what it sent."""

    routes: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]
    hits: list[str] = field(default_factory=list)
    sent: int = 0
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    runner: web.AppRunner | None = None

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> AllowedHost:
        return AllowedHost("127.0.0.1", self.port)

    async def start(self) -> Server:
        async def dispatch(request: web.Request) -> web.StreamResponse:
            self.hits.append(request.path)
            return await self.routes[request.path](request)

        app = web.Application()
        app.router.add_get("/{tail:.*}", dispatch)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest_asyncio.fixture
async def servers() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    started: list[Server] = []

    async def start(**routes: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Server:
        server = await Server({f"/{k}": v for k, v in routes.items()}).start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


@pytest_asyncio.fixture
async def discord_http() -> AsyncIterator[HTTPClient]:
    """The HTTP client discord.py itself gives an Attachment (``Attachment.read`` uses it)."""
    http = HTTPClient(asyncio.get_running_loop())
    http._HTTPClient__session = aiohttp.ClientSession()  # type: ignore[attr-defined]
    yield http
    await http.close()


def attachment(http: HTTPClient, url: str, size: int = len(PNG)) -> discord.Attachment:
    """A real discord.py Attachment, as built from an interaction's resolved payload."""
    payload: Any = {
        "id": "1",
        "filename": "start.png",
        "size": size,
        "url": url,
        "proxy_url": url,
        "content_type": "image/png",
    }
    return discord.Attachment(data=payload, state=SimpleNamespace(http=http))  # type: ignore[arg-type]


def png_route(body: bytes = PNG) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="image/png")

    return handler


def redirect_route(location: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": location})

    return handler


@pytest.mark.asyncio
async def test_a_huge_body_with_a_small_declared_size_is_cut_off_near_the_cap(
    servers: Callable[..., Awaitable[Server]], discord_http: HTTPClient
) -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        await response.prepare(request)
        chunk = b"\0" * 2**16
        try:
            while server.sent < HUGE:
                await response.write(chunk)
                server.sent += len(chunk)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client hung up
        finally:
            server.finished.set()
        return response

    server = await servers(**{"big.png": endless})
    small = attachment(discord_http, f"{server.origin}/big.png", size=1000)
    with pytest.raises(DownloadTooLarge, match="larger than 1 MiB"):
        await read_upload(small, (server.host,), max_bytes=CAP, timeout_s=60)
    await asyncio.wait_for(server.finished.wait(), 30)
    assert server.sent < CAP + BUFFER_SLACK, server.sent


@pytest.mark.asyncio
async def test_a_declared_length_over_the_cap_is_refused_before_the_body(
    servers: Callable[..., Awaitable[Server]],
) -> None:
    server = await servers(**{"big.png": png_route(b"\0" * (CAP + 1))})
    with pytest.raises(DownloadTooLarge):
        await downloads.fetch(f"{server.origin}/big.png", hosts=(server.host,), max_bytes=CAP)


@pytest.mark.asyncio
async def test_a_body_at_the_cap_is_accepted(servers: Callable[..., Awaitable[Server]]) -> None:
    body = PNG + b"\1" * (CAP - len(PNG))
    server = await servers(**{"ok.png": png_route(body)})
    got = await downloads.fetch(f"{server.origin}/ok.png", hosts=(server.host,), max_bytes=CAP)
    assert got == body


@pytest.mark.asyncio
async def test_a_redirect_off_the_list_is_refused_without_following_it(
    servers: Callable[..., Awaitable[Server]], discord_http: HTTPClient
) -> None:
    elsewhere = await servers(**{"secret.png": png_route()})
    allowed = await servers(
        **{
            "local.png": redirect_route(f"{elsewhere.origin}/secret.png"),
            "remote.png": redirect_route("https://example.com/x.png"),
            "plain.png": redirect_route("http://cdn.discordapp.com/x.png"),
            "broken.png": redirect_route("http://[::1"),
        }
    )
    for path in ("local.png", "remote.png", "plain.png", "broken.png"):
        with pytest.raises(DownloadRefused):
            await read_upload(attachment(discord_http, f"{allowed.origin}/{path}"), [allowed.host])
    assert elsewhere.hits == []
    assert allowed.hits == ["/local.png", "/remote.png", "/plain.png", "/broken.png"]


@pytest.mark.asyncio
async def test_redirects_on_the_list_are_followed_hop_by_hop_up_to_a_limit(
    servers: Callable[..., Awaitable[Server]],
) -> None:
    server = await servers(
        **{
            "a": redirect_route("/b"),
            "b": redirect_route("final.png"),
            "final.png": png_route(),
            "loop": redirect_route("/loop"),
        }
    )
    hosts = (server.host,)
    assert await downloads.fetch(f"{server.origin}/a", hosts=hosts, max_bytes=CAP) == PNG
    assert server.hits == ["/a", "/b", "/final.png"]
    with pytest.raises(DownloadRefused, match="redirected too many times"):
        await downloads.fetch(f"{server.origin}/loop", hosts=hosts, max_bytes=CAP)
    assert server.hits.count("/loop") == downloads.MAX_REDIRECTS + 1


@pytest.mark.asyncio
async def test_an_address_off_the_list_is_refused_without_connecting(
    servers: Callable[..., Awaitable[Server]], discord_http: HTTPClient
) -> None:
    server = await servers(**{"x.png": png_route()})
    for hosts in (None, download_hosts(None, "https://discord.com/api/v10")):
        with pytest.raises(DownloadRefused, match="not on Discord's file servers"):
            await read_upload(attachment(discord_http, f"{server.origin}/x.png"), hosts)
    # The same host on another port is another server.
    other_port = AllowedHost("127.0.0.1", server.port + 1 if server.port < 65535 else 1)
    with pytest.raises(DownloadRefused):
        await read_upload(attachment(discord_http, f"{server.origin}/x.png"), [other_port])
    assert server.hits == []


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data",
        "https://10.0.0.5/a.png",
        "https://[::1]/a.png",
        "https://localhost/a.png",
        "http://cdn.discordapp.com/attachments/1/2/a.png",  # plain http off loopback
        "https://cdn.discordapp.com.evil.example/a.png",
        "https://cdn.discordapp.com:8443/a.png",
        "https://user@evil.example/cdn.discordapp.com/a.png",
        "file:///etc/passwd",
        "ftp://cdn.discordapp.com/a.png",
    ],
)
def test_addresses_refused_by_default(url: str) -> None:
    with pytest.raises(DownloadRefused):
        check_url(URL(url), allowed_hosts(downloads.DISCORD_CDN_HOSTS))


@pytest.mark.parametrize(
    "url",
    [
        "https://cdn.discordapp.com/attachments/1/2/a.png",
        "https://CDN.DiscordApp.com./attachments/1/2/a.png",
        "https://media.discordapp.net:443/attachments/1/2/a.png",
    ],
)
def test_discord_cdn_addresses_are_allowed(url: str) -> None:
    check_url(URL(url), allowed_hosts(downloads.DISCORD_CDN_HOSTS))


class StaticResolver(AbstractResolver):
    """A resolver that answers one address for every name (a poisoned DNS)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        return [
            {
                "hostname": host,
                "host": self.address,
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self) -> None:
        pass


@pytest.mark.asyncio
async def test_discord_cdn_resolving_to_a_private_address_is_refused() -> None:
    resolver = StaticResolver("127.0.0.1")
    with pytest.raises(DownloadRefused, match="private address"):
        await downloads.fetch(
            "https://cdn.discordapp.com/attachments/1/2/a.png", max_bytes=CAP, resolver=resolver
        )
    assert resolver.asked == ["cdn.discordapp.com"]


def test_allowed_host_entries_are_parsed_and_checked() -> None:
    assert parse_allowed_host("CDN.example.com") == AllowedHost("cdn.example.com")
    assert parse_allowed_host(" proxy.example:8443 ") == AllowedHost("proxy.example", 8443)
    assert parse_allowed_host("[::1]:9000") == AllowedHost("::1", 9000)
    assert str(AllowedHost("::1", 9000)) == "[::1]:9000"
    for bad in ("", "https://cdn.example.com", "cdn.example.com/path", "a@b", "host:port"):
        with pytest.raises(ValueError):
            parse_allowed_host(bad)


def test_the_rest_base_urls_own_origin_is_allowed_and_only_it() -> None:
    cdn = allowed_hosts(downloads.DISCORD_CDN_HOSTS)
    assert download_hosts(None, "https://discord.com/api/v10") == cdn
    fake = download_hosts(None, "http://127.0.0.1:5555/api/v10")
    assert fake == (*cdn, AllowedHost("127.0.0.1", 5555))
    assert download_hosts(["proxy.example"], "https://proxy.example/api/v10") == (
        AllowedHost("proxy.example"),
    )
    check_url(URL("http://127.0.0.1:5555/ephemeral-attachments/1/2/a.png"), fake)
    with pytest.raises(DownloadRefused):
        check_url(URL("http://127.0.0.1:5556/a.png"), fake)
    # A plain-http proxy off this machine is trusted with REST, but not for downloads.
    with pytest.raises(DownloadRefused, match="secure"):
        check_url(
            URL("http://proxy.internal:8080/a.png"),
            download_hosts(None, "http://proxy.internal:8080/api/v10"),
        )


@pytest.mark.asyncio
async def test_an_allowed_server_that_fails_gets_a_clear_message(
    servers: Callable[..., Awaitable[Server]], discord_http: HTTPClient
) -> None:
    async def gone(request: web.Request) -> web.Response:
        return web.Response(status=404)

    server = await servers(**{"gone.png": gone})
    with pytest.raises(UserError, match="answered 404"):
        await read_upload(attachment(discord_http, f"{server.origin}/gone.png"), [server.host])
    url = f"{server.origin}/gone.png"
    await server.stop()  # nothing listens there any more
    server.runner = None
    with pytest.raises(UserError, match="could not download"):
        await read_upload(attachment(discord_http, url), [server.host])


# --- links a user gives (images from links) --------------------------------------------------


@pytest.mark.parametrize(
    ("url", "refusal"),
    [
        ("http://example.com/a.png", "Only https links"),
        ("ftp://example.com/a.png", "not a web address"),
        ("file:///etc/passwd", "not a web address"),
        ("https://127.0.0.1/a.png", "private or local address"),
        ("https://10.1.2.3/a.png", "private or local address"),
        ("https://169.254.169.254/latest/meta-data", "private or local address"),
        ("https://[::1]/a.png", "private or local address"),
        ("https://[::ffff:127.0.0.1]/a.png", "private or local address"),
        ("https://[fd00::1]/a.png", "private or local address"),
        ("https://0.0.0.0/a.png", "private or local address"),
        ("https://user:secret@example.com/a.png", "user name or password"),
    ],
)
def test_links_to_insecure_or_private_addresses_are_refused(url: str, refusal: str) -> None:
    with pytest.raises(DownloadRefused, match=refusal):
        downloads.check_link(URL(url))


def test_public_https_links_pass_the_address_check() -> None:
    for url in ("https://example.com/a.png", "https://8.8.8.8/a.png", "https://[2606:4700::1]/"):
        downloads.check_link(URL(url))


@pytest.mark.asyncio
async def test_a_link_whose_name_resolves_to_a_private_address_is_refused() -> None:
    # DNS rebinding, or a name that simply points inside: checked after resolution.
    for address in ("127.0.0.1", "10.0.0.7", "169.254.169.254"):
        resolver = StaticResolver(address)
        with pytest.raises(DownloadRefused, match="private or local address"):
            await downloads.fetch_link(
                "https://images.example.com/a.png", max_bytes=CAP, resolver=resolver
            )
        assert resolver.asked == ["images.example.com"]


@pytest.mark.asyncio
async def test_a_link_is_fetched_and_every_redirect_is_checked_again(
    servers: Callable[..., Awaitable[Server]],
) -> None:
    inside = await servers(**{"secret.png": png_route()})
    # The test setting lets exactly this host:port through, as a public https server would.
    public = await servers(
        **{
            "ok.png": png_route(),
            "hop.png": redirect_route("/ok.png"),
            "inside.png": redirect_route(f"{inside.origin}/secret.png"),
            "metadata.png": redirect_route("https://169.254.169.254/latest/meta-data"),
            "plain.png": redirect_route("http://example.com/a.png"),
            "loop.png": redirect_route("/loop.png"),
            "big.png": png_route(b"\0" * (CAP + 1)),
            "gone.png": lambda request: _status(404),
        }
    )
    allowed = (public.host,)
    assert (
        await downloads.fetch_link(f"{public.origin}/hop.png", max_bytes=CAP, allowed=allowed)
        == PNG
    )
    refused = {
        "inside.png": "private or local address",  # the same machine, another port
        "metadata.png": "private or local address",
        "plain.png": "Only https links",
        "loop.png": "redirected too many times",
        "big.png": "larger than 1 MiB",
        "gone.png": "answered 404",
    }
    for path, message in refused.items():
        with pytest.raises(UserError, match=message):
            await downloads.fetch_link(f"{public.origin}/{path}", max_bytes=CAP, allowed=allowed)
    assert inside.hits == []  # refused before connecting
    # Without the test setting, the same server is a local address like any other.
    with pytest.raises(DownloadRefused, match="private or local address"):
        await downloads.fetch_link(f"{public.origin}/ok.png", max_bytes=CAP)


async def _status(code: int) -> web.Response:
    return web.Response(status=code)


@pytest.mark.asyncio
async def test_an_image_link_is_sniffed_and_time_capped(
    servers: Callable[..., Awaitable[Server]],
) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        await response.prepare(request)
        await response.write(PNG[:8])
        await asyncio.sleep(3)  # stalls after the first bytes, past the 0.5 s cap
        return response

    server = await servers(
        **{
            "ok.png": png_route(),
            # The server says PNG; the bytes say HTML: the bytes win.
            "page.png": png_route(b"<!doctype html><html>not an image</html>"),
            "slow.png": slow,
        }
    )
    allowed = (server.host,)

    async def get(path: str) -> bytes:
        return await downloads.image_from_link(
            f"{server.origin}/{path}", max_bytes=CAP, timeout_s=0.5, allowed=allowed
        )

    assert await get("ok.png") == PNG
    with pytest.raises(UserError, match="does not lead to an image"):
        await get("page.png")
    with pytest.raises(UserError, match=r"took too long to download \(over 0.5 s\)"):
        await get("slow.png")


@pytest.mark.asyncio
async def test_other_spellings_of_this_machine_are_refused_too() -> None:
    # Names and odd numeric forms that the system resolver turns into 127.0.0.1.
    for url in ("https://localhost/a.png", "https://0x7f.1/a.png"):
        with pytest.raises(DownloadRefused, match="private or local address"):
            await downloads.image_from_link(url, max_bytes=CAP, timeout_s=5)
    for url in ("https://2130706433/a.png", "https://127.1/a.png"):
        with pytest.raises(UserError):  # not even a valid address for the HTTP client
            await downloads.image_from_link(url, max_bytes=CAP, timeout_s=5)


# --- model files: streamed to disk with the link guard, hashed, progress reported -------------


@pytest.mark.asyncio
async def test_a_linked_file_streams_to_disk_with_its_sha256_and_progress(
    servers: Callable[..., Awaitable[Server]], tmp_path: Path
) -> None:
    body = bytes(range(256)) * (3 * downloads.FILE_WRITE_BYTES // 256 + 17)
    public = await servers(
        **{"model.safetensors": png_route(body), "hop": redirect_route("/model.safetensors")}
    )
    seen: list[tuple[int, int | None]] = []

    async def progress(done: int, total: int | None) -> None:
        seen.append((done, total))

    target = tmp_path / "models" / "m.part"
    got = await downloads.download_link_to_file(
        f"{public.origin}/hop",
        target,
        max_bytes=len(body),
        allowed=(public.host,),
        on_progress=progress,
    )
    assert got == downloads.DownloadedFile(target, len(body), hashlib.sha256(body).hexdigest())
    assert target.read_bytes() == body
    assert seen[-1] == (len(body), len(body)) and len(seen) > 1
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


@pytest.mark.asyncio
async def test_a_linked_file_over_the_cap_or_refused_leaves_nothing_behind(
    servers: Callable[..., Awaitable[Server]], tmp_path: Path
) -> None:
    async def streamed_without_length(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(64):
            await response.write(b"\1" * 2**16)
        await response.write_eof()
        return response

    inside = await servers(**{"x": png_route()})
    public = await servers(
        **{
            "announced": png_route(b"\0" * (CAP + 1)),
            "streamed": streamed_without_length,
            "inside": redirect_route(f"{inside.origin}/x"),
            "named-inside": redirect_route(f"https://localhost:{inside.port}/x"),
        }
    )
    refused = {
        "announced": "larger than the limit of 1 MiB",
        "streamed": "larger than the limit of 1 MiB",
        "inside": "private or local address",
        "named-inside": "private or local address",  # a name, checked once resolved
    }
    for path, message in refused.items():
        target = tmp_path / f"{path}.part"
        with pytest.raises(UserError, match=message):
            await downloads.download_link_to_file(
                f"{public.origin}/{path}", target, max_bytes=CAP, allowed=(public.host,)
            )
        assert not target.exists(), path
    assert inside.hits == []


def test_sizes_read_as_people_write_them() -> None:
    assert downloads.human_size(8 * 2**30) == "8 GiB"
    assert downloads.human_size(3 * 2**19) == "1.5 MiB"
    assert downloads.human_size(200 * 2**10) == "200 KiB"
    assert downloads.human_size(17) == "17 bytes"
