"""Run an unmodified discord.py client in-process against a :class:`FakeDiscord`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import discord
import yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route

if TYPE_CHECKING:
    from .server import FakeDiscord


def point_discord_py_at(api_base: str, gateway_url: str) -> tuple[str, yarl.URL]:
    """Point discord.py's REST base and default gateway at a server; returns the old values.

    ``Route.BASE`` is read each time a route is built (also by the webhook client that sends
    interaction responses); ``DiscordWebSocket.DEFAULT_GATEWAY`` is where a plain ``Client``
    connects (an ``AutoShardedClient`` uses the URL from ``GET /gateway/bot``).
    """
    old = (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)
    Route.BASE = api_base.rstrip("/")
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)
    return old


@contextlib.contextmanager
def discord_py_pointed_at(api_base: str, gateway_url: str) -> Iterator[None]:
    old_base, old_gateway = point_discord_py_at(api_base, gateway_url)
    try:
        yield
    finally:
        Route.BASE = old_base
        DiscordWebSocket.DEFAULT_GATEWAY = old_gateway


async def start_client(
    client: discord.Client,
    fake: FakeDiscord,
    *,
    token: str | None = None,
    ready_timeout: float = 10.0,
    guild_ready_timeout: float | None = 0.05,
) -> asyncio.Task[None]:
    """Start ``client`` against ``fake`` and wait for ``on_ready``; returns the client task.

    The caller must ``await stop_client(client, task)``. discord.py must already point at
    the fake (see :func:`point_discord_py_at`).
    """
    if guild_ready_timeout is not None:
        client._connection.guild_ready_timeout = guild_ready_timeout
    task = asyncio.create_task(client.start(token or fake.token), name="discord-client")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ready_timeout
    while not client.is_ready():
        if task.done():
            exc = task.exception()
            raise AssertionError(f"the client stopped before it was ready: {exc!r}") from exc
        if loop.time() > deadline:
            task.cancel()
            raise AssertionError(
                f"the client was not ready after {ready_timeout:g} s\n{fake.describe()}"
            )
        await asyncio.sleep(0.01)
    return task


async def stop_client(client: discord.Client, task: asyncio.Task[None] | None = None) -> None:
    await client.close()
    if task is not None:
        try:
            await asyncio.wait_for(task, 5)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()


@contextlib.asynccontextmanager
async def running_client(
    client: discord.Client,
    fake: FakeDiscord,
    *,
    token: str | None = None,
    ready_timeout: float = 10.0,
    guild_ready_timeout: float | None = 0.05,
) -> AsyncIterator[discord.Client]:
    """``async with running_client(bot, fake):`` — started, ready, and closed afterwards."""
    with discord_py_pointed_at(fake.api_base, fake.gateway_url):
        task = await start_client(
            client,
            fake,
            token=token,
            ready_timeout=ready_timeout,
            guild_ready_timeout=guild_ready_timeout,
        )
        try:
            yield client
        finally:
            await stop_client(client, task)
