"""A job's events fan out: several followers at once, a late one starts from the current state,
a reconnecting one from the last event it saw, and all of them learn that the engine stopped."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from core.feed import FeedEvent, JobFeed
from engine.engine import Engine, EngineSettings
from engine.errors import EngineStopped
from engine.types import Done, GenerationRequest, Progress, Queued, Started
from tests.fake_backend import FakeBackend

pytestmark = pytest.mark.asyncio


class Pausable:
    """Holds the backend's worker thread at one step until released."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step
        self.reached = threading.Event()
        self.release = threading.Event()

    def __call__(self, step: int) -> None:
        if step == self.at_step:
            self.reached.set()
            self.release.wait(10)


@pytest_asyncio.fixture
async def engine() -> AsyncIterator[Engine]:
    engine = Engine(FakeBackend(step_seconds=0.001), EngineSettings(progress_interval_s=0.0))
    await engine.start()
    yield engine
    await engine.stop()


async def collect(feed: JobFeed, after: int = 0) -> list[FeedEvent]:
    async with asyncio.timeout(10):
        return [item async for item in feed.follow(after)]


async def feed_for(engine: Engine, pause: Pausable | None = None, steps: int = 8) -> JobFeed:
    backend = engine._backend
    assert isinstance(backend, FakeBackend)
    backend.step_hook = pause
    handle = await engine.submit(GenerationRequest(prompt="a fox", steps=steps), user_id="u")
    return JobFeed.start(handle)


async def test_a_late_follower_starts_from_the_current_state(engine: Engine) -> None:
    pause = Pausable(at_step=5)
    feed = await feed_for(engine, pause)
    early = asyncio.create_task(collect(feed))
    await asyncio.to_thread(pause.reached.wait, 10)
    async with asyncio.timeout(10):  # step 4 has been kept by the feed
        async for item in feed.follow():
            if isinstance(item.event, Progress) and item.event.step >= 4:
                break
    late = asyncio.create_task(collect(feed))
    await asyncio.sleep(0)
    pause.release.set()
    early_events, late_events = await early, await late

    for events in (early_events, late_events):
        assert isinstance(events[-1].event, Done)
        seqs = [item.seq for item in events]
        assert seqs == sorted(set(seqs))
    assert early_events[-1] == late_events[-1]  # the same end, with the same id
    # The late follower got the state it joined at (started, at step 4 or later), not the
    # progress that was already out of date, then what came after.
    late = [item.event for item in late_events]
    assert sum(isinstance(event, Started) for event in late) == 1
    assert sum(isinstance(event, Queued) for event in late) <= 1
    steps = [event.step for event in late if isinstance(event, Progress)]
    assert steps[0] >= 4 and steps == sorted(steps) and steps[-1] == 8


async def test_a_reconnecting_follower_gets_what_it_missed_and_no_more(engine: Engine) -> None:
    feed = await feed_for(engine)
    everything = await collect(feed)
    started = next(item for item in everything if isinstance(item.event, Started))
    resumed = await collect(feed, after=started.seq)
    missed = [item for item in everything if item.seq > started.seq]

    def progress(items: list[FeedEvent]) -> list[FeedEvent]:
        return [item for item in items if isinstance(item.event, Progress)]

    def others(items: list[FeedEvent]) -> list[FeedEvent]:
        return [item for item in items if not isinstance(item.event, Progress)]

    assert others(resumed) == others(missed)  # every change of state, with its id
    assert progress(resumed) == progress(missed)[-1:]  # and only the newest progress
    assert isinstance(resumed[-1].event, Done)
    assert await collect(feed, after=everything[-1].seq) == []  # it already had the end


async def test_every_follower_learns_that_the_engine_stopped(engine: Engine) -> None:
    pause = Pausable(at_step=2)
    feed = await feed_for(engine, pause)
    await asyncio.to_thread(pause.reached.wait, 10)
    followers = [asyncio.create_task(collect(feed)) for _ in range(3)]
    await asyncio.sleep(0)
    stopping = asyncio.create_task(engine.stop())
    pause.release.set()
    await stopping
    for follower in followers:
        with pytest.raises(EngineStopped):
            await follower
    with pytest.raises(EngineStopped):  # and one that comes after
        await collect(feed)
