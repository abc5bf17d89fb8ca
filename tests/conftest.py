"""Shared pytest configuration.

``fakediscord.plugin`` provides the ``fake_discord`` and ``run_discord_client`` fixtures
(a fake Discord that the unmodified discord.py client talks to over real sockets).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from e2e_support import World, assert_no_problems, start_world, stop_world
from ray_support import RayCluster
from ray_support import ray_cluster as start_ray_cluster
from s3_support import S3Server

pytest_plugins = ["fakediscord.plugin"]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    """The bot as its own process against a fake Discord, shared by one test module."""
    started = await start_world(tmp_path_factory.mktemp("bot-data"))
    try:
        yield started
    finally:
        await stop_world(started)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3-compatible server over HTTP on 127.0.0.1 (moto's, in a thread of this
    process), shared by the whole run; each test makes its own bucket on it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(f"http://{host}:{port}")
    finally:
        server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test that used the bot process shows what the bot logged."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)  # for fixtures that act on a failure
    world = getattr(item, "funcargs", {}).get("world")
    if report.when == "call" and report.failed and isinstance(world, World):
        report.sections.append(("the bot's output (its end)", world.bot.output[-8000:]))


@pytest.fixture
def no_problems(world: World) -> Iterator[None]:
    """After the test: nothing the bot sent would have been refused by Discord."""
    yield
    assert_no_problems(world)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """A Ray cluster on 127.0.0.1 for the whole session, started by the first test that
    needs one."""
    with start_ray_cluster() as cluster:
        yield cluster
