"""JobService with its real parts (SQLite, image store, engine) and a simulated backend, where
the order of pipeline calls must be held still to be observed."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from core.feed import JobFeed
from core.jobcodec import StoredRequest
from core.recorder import record_outcome
from core.service import JobService, Requester
from core.storage import Database, LocalImageStore, Priority, QuotaScope
from engine.engine import Engine, EngineSettings
from engine.registry import ModelRegistry
from engine.types import Done, GenerationRequest, Started
from tests.fake_backend import FakeBackend

pytestmark = pytest.mark.asyncio

GUILD = 100
PATRON_ROLE = 7


class GatedBackend(FakeBackend):
    """Pipeline calls wait at their first step until the test opens the gate: the first call
    holds the device while the test queues the others behind it."""

    def __init__(self) -> None:
        super().__init__(step_seconds=0.001)
        self.gate = threading.Event()
        self.step_hook = lambda _step: self.gate.wait(10)


@pytest_asyncio.fixture
async def service(tmp_path: Path) -> AsyncIterator[JobService]:
    backend = GatedBackend()
    engine = Engine(backend, EngineSettings(progress_interval_s=0.0))
    await engine.start()
    images = LocalImageStore(tmp_path / "images")
    async with Database.open(tmp_path / "db.sqlite3", images=images) as db:
        yield JobService(db, images, engine, ModelRegistry.load(), preview_every=0)
    backend.gate.set()
    await engine.stop()


async def wait_started(feed: JobFeed) -> None:
    async with asyncio.timeout(10):
        async for item in feed.follow():
            if isinstance(item.event, Started):
                return


async def finish_order(feeds: dict[str, JobFeed]) -> list[str]:
    order: list[str] = []

    async def follow(name: str, feed: JobFeed) -> None:
        async for item in feed.follow():
            if isinstance(item.event, Done):
                order.append(name)

    async with asyncio.timeout(10):
        await asyncio.gather(*(follow(name, feed) for name, feed in feeds.items()))
    return order


def prompt(text: str, steps: int) -> GenerationRequest:
    # Different step counts keep the jobs out of one shared batch.
    return GenerationRequest(prompt=text, count=1, steps=steps, seed=1)


async def test_moderator_set_priority_decides_who_goes_first(service: JobService) -> None:
    quotas = service.db.quotas
    await quotas.set_policy(GUILD, QuotaScope.ROLE, PATRON_ROLE, priority=Priority.HIGH)
    await quotas.set_policy(GUILD, QuotaScope.USER, 1, priority=Priority.LOW)
    backend = service.engine._backend
    assert isinstance(backend, GatedBackend)

    blocker = await service.accept(Requester(9, GUILD, 1), prompt("busy", 2))
    await wait_started(blocker.feed)
    low = await service.accept(Requester(1, GUILD, 1), prompt("low", 3))
    normal = await service.accept(Requester(2, GUILD, 1), prompt("normal", 4))
    high = await service.accept(Requester(3, GUILD, 1, role_ids=(PATRON_ROLE,)), prompt("hi", 5))
    stored = [StoredRequest.loads(a.job.request).priority for a in (low, normal, high)]
    assert stored == [-1, 0, 1]  # kept with the job, so a resumed job keeps its place
    assert StoredRequest.loads(high.job.request).role_ids == (PATRON_ROLE,)  # for its footer

    backend.gate.set()
    order = await finish_order(
        {"busy": blocker.feed, "low": low.feed, "normal": normal.feed, "high": high.feed}
    )
    assert order == ["busy", "high", "normal", "low"]


async def test_without_plans_the_queue_is_first_come_first_served(service: JobService) -> None:
    backend = service.engine._backend
    assert isinstance(backend, GatedBackend)
    blocker = await service.accept(Requester(9, GUILD, 1), prompt("busy", 2))
    await wait_started(blocker.feed)
    first = await service.accept(Requester(1, GUILD, 1), prompt("first", 3))
    second = await service.accept(Requester(3, GUILD, 1, role_ids=(PATRON_ROLE,)), prompt("2", 5))
    backend.gate.set()
    order = await finish_order({"first": first.feed, "second": second.feed})
    assert order == ["first", "second"]


async def test_the_stored_request_names_what_it_resolved_to(service: JobService) -> None:
    accepted = await service.accept(Requester(1, GUILD, 1), GenerationRequest(prompt="a fox"))
    stored = StoredRequest.loads(accepted.job.request).request
    resolved = accepted.request
    assert (stored.model, stored.steps, stored.guidance, stored.scheduler, stored.seed) == (
        resolved.model,
        resolved.steps,
        resolved.guidance,
        resolved.scheduler,
        resolved.seed,
    )
    assert stored.model is not None and stored.steps is not None


async def test_a_seeded_result_one_front_process_made_answers_another(tmp_path: Path) -> None:
    """Front processes on one database (each its own connection and engine): a seeded
    result one made answers the others from the stored images, without their GPU; an
    unseeded request, a hidden result and images gone to retention are generated again."""
    images = LocalImageStore(tmp_path / "images")
    registry = ModelRegistry.load()
    path = tmp_path / "db.sqlite3"
    async with contextlib.AsyncExitStack() as stack:

        async def process() -> tuple[JobService, FakeBackend]:
            backend = FakeBackend(step_seconds=0.001)
            engine = Engine(backend, EngineSettings(progress_interval_s=0.0))
            await engine.start()
            stack.push_async_callback(engine.stop)
            db = await stack.enter_async_context(Database.open(path, images=images))
            return JobService(db, images, engine, registry, preview_every=0), backend

        async def run(service: JobService, request: GenerationRequest) -> str:
            accepted = await service.accept(Requester(1, GUILD, 1), request)
            await asyncio.wait_for(record_outcome(service, accepted.job, accepted.feed), 30)
            return accepted.job.id

        seeded = GenerationRequest(prompt="a harbour at dawn", model="tiny", count=2, seed=42)
        (first, first_gpu), (second, second_gpu) = await process(), await process()
        made = await run(first, seeded)
        answered = await run(second, seeded)
        assert len(first_gpu.calls) == 1 and second_gpu.calls == []
        made_images = await first.job_images(made)
        answered_images = await second.job_images(answered)
        assert [i.content_hash for i in answered_images] == [i.content_hash for i in made_images]
        assert [i.seed for i in answered_images] == [i.seed for i in made_images]
        assert (await second.db.jobs.get(answered)).status.value == "done"

        # Without a seed a new picture is asked for: generated.
        await run(second, dataclasses.replace(seeded, seed=None))
        assert len(second_gpu.calls) == 1
        # The newest result that answered was deleted by its owner: not handed out.
        await second.db.library.hide(answered)
        third, third_gpu = await process()
        remade = await run(third, seeded)
        assert len(third_gpu.calls) == 1
        # Retention took the images away: generated again.
        await third.db.cleanup(0, file_grace=dt.timedelta(0))
        assert await third.job_images(remade) == []
        fourth, fourth_gpu = await process()
        await run(fourth, seeded)
        assert len(fourth_gpu.calls) == 1
