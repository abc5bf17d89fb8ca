"""The Engine's worker, batching, cancel, failures, restarts and cache, on a simulated backend."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from engine.engine import TOO_LARGE, Engine, EngineSettings, JobHandle
from engine.errors import EngineStopped, QueueFullError, TooManyJobsError, ValidationError
from engine.types import (
    Cancelled,
    Done,
    Event,
    Failed,
    GenerationRequest,
    ModelLoading,
    Progress,
    Queued,
    Started,
)
from tests.fake_backend import FakeBackend

pytestmark = pytest.mark.asyncio


async def started_engine(backend: FakeBackend, **settings: object) -> Engine:
    # Every step reported, unless a test asks otherwise: tests wait for particular steps.
    settings = {"progress_interval_s": 0.0, **settings}
    engine = Engine(backend, EngineSettings(**settings))  # type: ignore[arg-type]
    await engine.start()
    return engine


async def collect(handle: JobHandle) -> list[Event]:
    async with asyncio.timeout(10):
        return [event async for event in handle]


def request(prompt: str = "a fox", **fields: object) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, **fields)  # type: ignore[arg-type]


async def test_job_life_events_in_order() -> None:
    backend = FakeBackend(step_seconds=0.005)
    engine = await started_engine(backend)
    handle = await engine.submit(request(count=2, seed=5, preview_every=2), user_id="u")
    events = await collect(handle)
    kinds = [type(e) for e in events]
    assert kinds[0] is Queued
    assert ModelLoading in kinds
    assert kinds.index(ModelLoading) < kinds.index(Started)
    progress = [e for e in events if isinstance(e, Progress)]
    assert [(p.step, p.total) for p in progress] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert [p.preview is not None for p in progress] == [False, True, False, True]
    done = events[-1]
    assert isinstance(done, Done)
    assert done.result.seeds == (5, 6)
    assert done.result.job_id == handle.job_id
    assert done.result.timings.total_s >= done.result.timings.generate_s > 0
    await engine.stop()


async def test_four_users_compatible_jobs_run_as_one_pipeline_call() -> None:
    backend = FakeBackend()
    engine = Engine(backend)  # not started: all four are queued before the worker looks
    engine._accepting = True
    handles = [
        await engine.submit(request(f"prompt {i}", seed=i * 10), user_id=f"user{i}")
        for i in range(4)
    ]
    await engine.start()
    results = [await asyncio.wait_for(h.wait(), 10) for h in handles]
    assert all(isinstance(r, Done) for r in results)
    assert len(backend.calls) == 1
    assert [(s.prompt, s.seed) for s in backend.calls[0]] == [
        (f"prompt {i}", i * 10) for i in range(4)
    ]
    await engine.stop()


async def test_incompatible_jobs_do_not_merge() -> None:
    backend = FakeBackend()
    engine = Engine(backend)
    engine._accepting = True
    handles = [
        await engine.submit(request(steps=3), user_id="a"),
        await engine.submit(request(steps=5), user_id="b"),
        await engine.submit(request(width=128), user_id="c"),
    ]
    await engine.start()
    for handle in handles:
        assert isinstance(await asyncio.wait_for(handle.wait(), 10), Done)
    assert [len(call) for call in backend.calls] == [1, 1, 1]
    await engine.stop()


async def test_limits_refuse_with_clear_errors() -> None:
    engine = Engine(FakeBackend(), EngineSettings(max_queued=3, max_queued_per_user=2))
    engine._accepting = True  # worker not started: everything stays queued
    await engine.submit(request(), user_id="a")
    await engine.submit(request(), user_id="a")
    with pytest.raises(TooManyJobsError):
        await engine.submit(request(), user_id="a")
    await engine.submit(request(), user_id="b")
    with pytest.raises(QueueFullError):
        await engine.submit(request(), user_id="c")
    with pytest.raises(ValidationError):
        await engine.submit(request("   "), user_id="c")


async def test_cancel_queued_job_leaves_queue_at_once() -> None:
    engine = Engine(FakeBackend())
    engine._accepting = True
    first = await engine.submit(request(steps=3), user_id="a")
    second = await engine.submit(request(steps=9), user_id="b")
    await asyncio.sleep(0)
    assert [e.job_id for e in engine.queue_snapshot()] == [first.job_id, second.job_id]
    assert first.cancel()
    assert [e.job_id for e in engine.queue_snapshot()] == [second.job_id]
    assert isinstance(first.last_event, Cancelled)
    assert not first.cancel()  # already finished
    await asyncio.sleep(0)
    assert second.last_event == Queued(position=1, eta_s=None)


async def test_cancel_running_job_stops_at_next_step_and_batch_mates_finish() -> None:
    backend = FakeBackend(step_seconds=0.02)
    engine = Engine(backend, EngineSettings(progress_interval_s=0.0))
    engine._accepting = True
    victim = await engine.submit(request("victim", steps=20), user_id="a")
    survivor = await engine.submit(request("survivor", steps=20), user_id="b")
    await engine.start()
    async for event in victim:
        if isinstance(event, Progress) and event.step == 3:
            victim.cancel()
            break
    survivor_events = await collect(survivor)
    assert isinstance(survivor_events[-1], Done)
    assert len(survivor_events[-1].result.images) == 1
    assert isinstance(victim.last_event, Cancelled)
    assert len(backend.calls) == 1 and len(backend.calls[0]) == 2
    await engine.stop()


async def test_cancel_of_whole_running_batch_interrupts_the_call() -> None:
    backend = FakeBackend(step_seconds=0.02)
    steps: list[int] = []
    backend.step_hook = steps.append
    engine = await started_engine(backend)
    handle = await engine.submit(request(steps=50), user_id="a")
    async for event in handle:
        if isinstance(event, Progress) and event.step == 2:
            handle.cancel()
    assert isinstance(handle.last_event, Cancelled)
    # The worker goes on with the next job, so the cancelled call has returned by then.
    after = await engine.submit(request(steps=2), user_id="a")
    assert isinstance(await asyncio.wait_for(after.wait(), 10), Done)
    assert max(steps) < 10  # the call stopped at its next step, not after 50
    await engine.stop()


async def test_out_of_memory_splits_batch_down_to_single_images() -> None:
    backend = FakeBackend(oom_above=1)
    engine = await started_engine(backend)
    handle = await engine.submit(request(count=4, seed=1), user_id="a")
    done = await asyncio.wait_for(handle.wait(), 10)
    assert isinstance(done, Done)
    assert done.result.seeds == (1, 2, 3, 4)
    assert [len(c) for c in backend.calls] == [4, 2, 1, 1, 2, 1, 1]
    await engine.stop()


async def test_out_of_memory_on_one_image_fails_with_too_large() -> None:
    backend = FakeBackend(oom_above=0)
    engine = await started_engine(backend)
    handle = await engine.submit(request(), user_id="a")
    failed = await asyncio.wait_for(handle.wait(), 10)
    assert failed == Failed(TOO_LARGE)
    assert "too large for this GPU" in TOO_LARGE
    await engine.stop()


async def test_exception_fails_only_that_batch_and_worker_goes_on() -> None:
    backend = FakeBackend(fail_with=RuntimeError("CUDA error: device-side assert"))
    engine = await started_engine(backend)
    handle = await engine.submit(request(), user_id="a")
    failed = await asyncio.wait_for(handle.wait(), 10)
    assert isinstance(failed, Failed)
    assert "CUDA" not in failed.reason  # internals stay in the log
    backend.fail_with = None
    handle = await engine.submit(request(), user_id="a")
    assert isinstance(await asyncio.wait_for(handle.wait(), 10), Done)
    await engine.stop()


async def test_dead_worker_is_restarted_and_its_jobs_retried_once() -> None:
    backend = FakeBackend(crashes_left=1)
    engine = await started_engine(backend)
    handle = await engine.submit(request(), user_id="a")
    assert isinstance(await asyncio.wait_for(handle.wait(), 10), Done)
    assert engine.worker_restarts == 1
    assert len(backend.calls) == 2
    assert engine.status().worker_alive

    backend.crashes_left = 2
    handle = await engine.submit(request(), user_id="a")
    failed = await asyncio.wait_for(handle.wait(), 10)
    assert isinstance(failed, Failed)
    assert engine.worker_restarts == 3
    await engine.stop()


async def test_identical_seeded_request_is_served_from_cache() -> None:
    backend = FakeBackend()
    engine = await started_engine(backend)
    first = await asyncio.wait_for((await engine.submit(request(seed=7), user_id="a")).wait(), 10)
    calls = len(backend.calls)
    second = await engine.submit(request(seed=7), user_id="b")
    done = await asyncio.wait_for(second.wait(), 10)
    assert isinstance(first, Done) and isinstance(done, Done)
    assert len(backend.calls) == calls  # no pipeline call
    assert done.result.from_cache
    assert done.result.job_id == second.job_id
    assert done.result.images == first.result.images
    assert engine.status().cache_hits == 1
    await engine.stop()


async def test_identical_requests_in_flight_are_computed_once() -> None:
    backend = FakeBackend()
    engine = Engine(backend)
    engine._accepting = True
    handles = [await engine.submit(request(seed=3), user_id=f"u{i}") for i in range(3)]
    await engine.start()
    results = [await asyncio.wait_for(h.wait(), 10) for h in handles]
    assert len(backend.calls) == 1 and len(backend.calls[0]) == 1
    assert all(isinstance(r, Done) for r in results)
    assert len({r.result.job_id for r in results if isinstance(r, Done)}) == 3
    await engine.stop()


async def test_unseeded_requests_are_never_merged_by_the_cache() -> None:
    backend = FakeBackend()
    engine = Engine(backend)
    engine._accepting = True
    handles = [await engine.submit(request(), user_id="a") for _ in range(2)]
    await engine.start()
    for handle in handles:
        assert isinstance(await asyncio.wait_for(handle.wait(), 10), Done)
    assert sum(len(c) for c in backend.calls) == 2
    await engine.stop()


async def test_cancelling_one_follower_keeps_the_shared_computation() -> None:
    backend = FakeBackend(step_seconds=0.01)
    engine = Engine(backend)
    engine._accepting = True
    owner = await engine.submit(request(seed=9), user_id="a")
    follower = await engine.submit(request(seed=9), user_id="b")
    owner.cancel()
    await engine.start()
    assert isinstance(await asyncio.wait_for(follower.wait(), 10), Done)
    await engine.stop()


async def test_queued_events_carry_positions_and_eta_once_measured() -> None:
    backend = FakeBackend(step_seconds=0.01)
    engine = await started_engine(backend)
    await asyncio.wait_for((await engine.submit(request(), user_id="warm")).wait(), 10)
    engine._accepting = True
    blocker = await engine.submit(request(steps=30), user_id="a")
    async for event in blocker:
        if isinstance(event, Started):
            break
    waiting = await engine.submit(request(steps=4), user_id="b")
    await asyncio.sleep(0)
    queued = waiting.last_event
    assert isinstance(queued, Queued)
    assert queued.position == 1
    assert queued.eta_s is not None and queued.eta_s > 0
    await asyncio.wait_for(waiting.wait(), 10)
    await engine.stop()


async def test_stop_ends_handles_with_engine_stopped_for_resume() -> None:
    engine = Engine(FakeBackend())
    engine._accepting = True
    handle = await engine.submit(request(), user_id="a")
    await engine.stop()
    with pytest.raises(EngineStopped):
        async for _ in handle:
            pass
    with pytest.raises(EngineStopped):
        await engine.submit(request(), user_id="a")


async def test_drain_finishes_everything_queued() -> None:
    engine = await started_engine(FakeBackend())
    handles = [await engine.submit(request(steps=2 + i), user_id="a") for i in range(3)]
    await asyncio.wait_for(engine.drain(), 10)
    assert all(isinstance(h.last_event, Done) for h in handles)


async def test_identical_request_after_a_cancel_is_computed_afresh() -> None:
    backend = FakeBackend(step_seconds=0.02)
    engine = await started_engine(backend)
    first = await engine.submit(request(seed=4, steps=30), user_id="a")
    async for event in first:
        if isinstance(event, Progress):
            first.cancel()
    second = await engine.submit(request(seed=4, steps=3), user_id="b")
    assert isinstance(await asyncio.wait_for(second.wait(), 10), Done)
    again = await engine.submit(request(seed=4, steps=30), user_id="c")
    assert isinstance(await asyncio.wait_for(again.wait(), 10), Done)
    await engine.stop()


async def test_resumed_jobs_are_not_refused_by_queue_limits() -> None:
    engine = Engine(FakeBackend(), EngineSettings(max_queued=1, max_queued_per_user=1))
    engine._accepting = True
    await engine.submit(request(), user_id="a")
    with pytest.raises(QueueFullError):
        await engine.submit(request(), user_id="b")
    resumed = await engine.submit(request(), user_id="b", resumed=True)
    assert resumed.job_id in engine._works


def test_result_cache_is_bounded_by_bytes() -> None:
    from PIL import Image as PILImage

    from engine.cache import ResultCache, result_bytes
    from engine.types import GeneratedImage, JobResult, Timings

    base = FakeBackend().resolve(request(seed=1))

    def result(seed: int) -> JobResult:
        image = GeneratedImage(PILImage.new("RGB", (100, 100)), seed, "")
        return JobResult(f"job{seed}", base, (image,), Timings())

    one = result_bytes(result(0))
    assert one == 100 * 100 * 3
    cache = ResultCache(max_entries=100, max_bytes=2 * one)
    for seed in range(3):
        cache.put(dataclasses.replace(base, seed=seed), result(seed))
    assert len(cache) == 2 and cache.bytes == 2 * one
    assert cache.get(dataclasses.replace(base, seed=0)) is None  # the oldest went first
    assert cache.get(dataclasses.replace(base, seed=2)) is not None


async def test_long_queue_tells_the_front_exact_positions_and_the_back_an_upper_bound() -> None:
    from engine.engine import POSITION_WINDOW

    engine = Engine(FakeBackend(), EngineSettings(max_queued=10_000))
    engine._accepting = True
    handles = [
        await engine.submit(request(steps=3 + i % 7), user_id=f"user{i}")
        for i in range(POSITION_WINDOW + 50)
    ]
    await asyncio.sleep(0)
    front, back = handles[0], handles[-1]
    assert front.last_event == Queued(position=1, eta_s=None)
    assert isinstance(back.last_event, Queued)
    assert back.last_event.position >= POSITION_WINDOW
    # A newcomer (a user never served) is placed exactly by the next update.
    newcomer = await engine.submit(request(steps=99), user_id="newcomer")
    await asyncio.sleep(0)
    assert isinstance(newcomer.last_event, Queued)


async def test_progress_is_throttled_but_previews_and_the_last_step_always_arrive() -> None:
    backend = FakeBackend(step_seconds=0.005)
    engine = await started_engine(backend, progress_interval_s=10.0)
    handle = await engine.submit(request(steps=20, preview_every=7), user_id="a")
    steps = [e.step for e in await collect(handle) if isinstance(e, Progress)]
    assert steps == [1, 7, 14, 20]
    await engine.stop()
