"""Pytest fixtures for the fake Discord.

Register with ``pytest_plugins = ["fakediscord.plugin"]`` in ``tests/conftest.py``.

* ``fake_discord``: a started :class:`FakeDiscord`; its teardown fails the test when the
  client sent a body Discord's spec rejects, called a route the fake does not know, or broke
  the gateway protocol. Opt out with ``@pytest.mark.fakediscord_allow_problems``.
* ``run_discord_client``: ``await run_discord_client(bot)`` starts a discord.py client
  in-process against the fake, waits for ``on_ready`` and closes it at teardown.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import discord
import pytest
import pytest_asyncio

from .client import point_discord_py_at, start_client, stop_client
from .server import FakeDiscord
from .spec import spec_unavailable_reason


class SpecUnavailableWarning(UserWarning):
    """Discord's OpenAPI spec is missing, so request bodies are not validated."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "fakediscord_allow_problems: the fake_discord fixture does not fail the test on "
        "spec violations or unknown routes",
    )


def requires_spec(test: Any) -> Any:
    """The spec is vendored: a test that needs it fails (never skips) when it is missing."""
    reason = spec_unavailable_reason()
    if reason is not None:
        raise RuntimeError(reason)
    return test


@pytest_asyncio.fixture
async def fake_discord(request: pytest.FixtureRequest) -> AsyncIterator[FakeDiscord]:
    fake = FakeDiscord()
    if fake.spec_skip_reason:
        warnings.warn(SpecUnavailableWarning(fake.spec_skip_reason), stacklevel=1)
    async with fake:
        yield fake
    if request.node.get_closest_marker("fakediscord_allow_problems") is None:
        fake.assert_no_problems()


@pytest_asyncio.fixture
async def run_discord_client(
    fake_discord: FakeDiscord,
) -> AsyncIterator[Callable[..., Awaitable[discord.Client]]]:
    started: list[tuple[discord.Client, object]] = []
    old_base, old_gateway = point_discord_py_at(fake_discord.api_base, fake_discord.gateway_url)

    async def run(
        client: discord.Client,
        *,
        ready_timeout: float = 10.0,
        guild_ready_timeout: float | None = 0.05,
    ) -> discord.Client:
        task = await start_client(
            client,
            fake_discord,
            ready_timeout=ready_timeout,
            guild_ready_timeout=guild_ready_timeout,
        )
        started.append((client, task))
        return client

    try:
        yield run
    finally:
        for client, task in reversed(started):
            await stop_client(client, task)  # type: ignore[arg-type]
        discord.http.Route.BASE = old_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway
