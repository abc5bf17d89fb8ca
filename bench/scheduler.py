"""The scheduler's cost at scale: 10,000 queued jobs from 1,000 users (issue 3).

Pure logic, no model: requests are made up, with mixed batch keys (four models, two sizes,
two step counts, one to four images). Measured:

- ``Scheduler.push``: per submit, while the queue fills to 10,000;
- ``Scheduler.next_batch``: per dispatch with the queue held at 10,000 (each dispatched job is
  replaced by a new one from the same user), and the mean per dispatch while draining;
- ``Scheduler.positions`` and ``ordered`` at 10,000;
- the engine at that size (with a backend that blocks, so the queue stays full):
  ``Engine.submit`` of one more job including the position updates it triggers for every
  queued job, and ``Engine.queue_snapshot``.

    python -m bench.scheduler
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import statistics
import threading
import time
from collections.abc import Callable

from bench.common import Report, add_record_args, describe_machine, record_path, summarize, us
from engine.engine import Engine, EngineSettings
from engine.scheduler import QueuedJob, Scheduler
from engine.types import (
    Family,
    GeneratedImage,
    GenerationRequest,
    ImageSlot,
    LoadCallback,
    Operation,
    ResolvedRequest,
    StepCallback,
)

MODELS = {"sd15": Family.SD15, "sd-turbo": Family.SD15, "sdxl": Family.SDXL, "pony": Family.SDXL}
SIZES = ((512, 512), (768, 512))
STEPS = (20, 30)


def make_request(rng: random.Random, seed: int) -> ResolvedRequest:
    model = rng.choice(list(MODELS))
    width, height = rng.choice(SIZES)
    return ResolvedRequest(
        model=model,
        family=MODELS[model],
        operation=Operation.TXT2IMG,
        prompt=f"prompt {seed}",
        negative_prompt="",
        count=rng.randint(1, 4),
        steps=rng.choice(STEPS),
        guidance=7.0,
        width=width,
        height=height,
        scheduler="euler_a",
        seed=seed,
        seed_was_explicit=True,
        strength=None,
        init_image=None,
        mask_image=None,
        preview_every=0,
    )


def images_per_call(request: ResolvedRequest) -> int:
    return 8 if request.family is Family.SD15 else 4


def new_scheduler(jobs: int, per_user: int) -> Scheduler:
    return Scheduler(
        max_queued=jobs * 2,
        max_queued_per_user=per_user * 2,
        max_images_per_call=images_per_call,
        affinity_max_wait_s=30.0,
    )


class JobFactory:
    def __init__(self, users: int, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.users = users
        self._ids = itertools.count()

    def job(self, user: int, now: float) -> QueuedJob:
        number = next(self._ids)
        return QueuedJob(
            job_id=f"job-{number}",
            user_id=f"user-{user}",
            request=make_request(self.rng, number),
            enqueued_at=now,
        )

    def fill_order(self, jobs: int) -> list[int]:
        """Users in submission order: ``jobs // users`` each, interleaved at random."""
        order = [user for user in range(self.users) for _ in range(jobs // self.users)]
        self.rng.shuffle(order)
        return order


def time_each(action: Callable[[], object], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return samples


def bench_scheduler(report: Report, jobs: int, users: int, dispatches: int) -> dict[str, float]:
    factory = JobFactory(users)
    scheduler = new_scheduler(jobs, jobs // users)
    pushes = []
    for user in factory.fill_order(jobs):
        job = factory.job(user, 0.0)
        started = time.perf_counter()
        scheduler.push(job)
        pushes.append(time.perf_counter() - started)
    assert len(scheduler) == jobs

    loaded = "sd15"
    now = 1.0
    steady: list[float] = []
    batch_sizes: list[int] = []
    for _ in range(dispatches):
        started = time.perf_counter()
        batch = scheduler.next_batch(loaded, now)
        steady.append(time.perf_counter() - started)
        batch_sizes.append(sum(job.images for job in batch))
        loaded = batch[0].request.model
        for job in batch:  # keep the queue full: the same users queue again
            scheduler.push(factory.job(int(job.user_id.removeprefix("user-")), now))
        now += 1.0

    positions = time_each(scheduler.positions, 20)
    ordered = time_each(lambda: list(scheduler.iter_ordered()), 20)

    drain_started = time.perf_counter()
    drained = 0
    while len(scheduler):
        batch = scheduler.next_batch(loaded, now)
        loaded = batch[0].request.model
        drained += 1
        now += 1.0
    drain = (time.perf_counter() - drain_started) / drained

    push = summarize(pushes)
    late_push = summarize(pushes[-users:])
    dispatch = summarize(steady)
    rows = [
        ["push (one submit), all 10k", us(push.median), us(push.mean), us(push.high)],
        [f"push, the last {users}", us(late_push.median), us(late_push.mean), us(late_push.high)],
        [
            f"next_batch at {jobs:,} queued ({dispatches} dispatches)",
            us(dispatch.median),
            us(dispatch.mean),
            us(dispatch.high),
        ],
        [f"next_batch while draining ({drained} dispatches)", "", us(drain), ""],
        [f"positions() at {jobs:,}", us(statistics.median(positions)), "", ""],
        [f"ordered() at {jobs:,}", us(statistics.median(ordered)), "", ""],
    ]
    report.text(
        f"**Scheduler** — {jobs:,} jobs from {users:,} users ({jobs // users} each, arriving "
        f"interleaved), {len(MODELS)} models x {len(SIZES)} sizes x {len(STEPS)} step counts, "
        f"1-4 images a job; a dispatch took {statistics.mean(batch_sizes):.1f} images on "
        "average.\n"
    )
    report.table(["operation", "median µs", "mean µs", "max µs"], rows)
    return {"push_us": push.median * 1e6, "dispatch_us": dispatch.median * 1e6}


# --- the engine at that size --------------------------------------------------------------


class BlockingBackend:
    """A backend whose first call blocks until released, so that the queue stays full."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def resolve(self, request: GenerationRequest) -> ResolvedRequest:
        raise NotImplementedError("the benchmark submits resolved requests")

    def is_loaded(self, model: str) -> bool:
        return True

    def load(self, model: str, on_progress: LoadCallback | None = None) -> None:
        return None

    def run(
        self, request: ResolvedRequest, slots: list[ImageSlot], on_step: StepCallback
    ) -> list[GeneratedImage | None]:
        self.release.wait(timeout=600)
        return [None] * len(slots)


async def bench_engine(report: Report, jobs: int, users: int, samples: int) -> None:
    backend = BlockingBackend()
    engine = Engine(
        backend,
        EngineSettings(max_queued=jobs * 2, max_queued_per_user=2 * jobs // users),
    )
    await engine.start()
    factory = JobFactory(users, seed=2)
    try:
        # One job to occupy the worker, then the queue.
        await engine.submit(factory.job(0, 0.0).request, user_id="blocker")
        await asyncio.sleep(0.05)
        handles = []
        fill_started = time.perf_counter()
        for user in factory.fill_order(jobs):
            handles.append(
                await engine.submit(factory.job(user, 0.0).request, user_id=f"user-{user}")
            )
        await asyncio.sleep(0)  # the one coalesced position update
        fill = (time.perf_counter() - fill_started) / jobs

        submits = []
        for i in range(samples):
            request = factory.job(0, 0.0).request
            started = time.perf_counter()
            handle = await engine.submit(request, user_id=f"newcomer-{i}")
            await asyncio.sleep(0)  # let the position update it scheduled run
            submits.append(time.perf_counter() - started)
            handle.cancel()
            await asyncio.sleep(0)
        snapshots = time_each(engine.queue_snapshot, 10)
        events = sum(h._events.qsize() for h in handles)
    finally:
        backend.release.set()
        await engine.stop()
    report.text(
        f"**Engine at {jobs:,} queued** (a backend that blocks keeps the queue full). Submits "
        "made in one event-loop turn share one position update; a submit in a turn of its "
        "own pays for a full one, which sends a Queued event to every job whose position "
        "changed.\n"
    )
    report.table(
        ["operation", "median µs"],
        [
            [f"submit while filling to {jobs:,} (one turn, mean)", us(fill)],
            [
                f"submit of a new user's job at {jobs:,}, with its position update",
                us(statistics.median(submits)),
            ],
            [f"queue_snapshot() at {jobs:,}", us(statistics.median(snapshots))],
        ],
    )
    report.text(f"Queued events waiting in the {jobs:,} handles afterwards: {events:,}.\n")


async def main_async(args: argparse.Namespace) -> None:
    report = Report("Scheduler cost at scale", describe_machine("cpu"))
    figures = bench_scheduler(report, args.jobs, args.users, args.dispatches)
    await bench_engine(report, args.jobs, args.users, args.engine_submits)
    report.text(
        f"Per submit (push): **{figures['push_us']:.1f} µs**; per dispatch (next_batch): "
        f"**{figures['dispatch_us']:.1f} µs**, at {args.jobs:,} jobs from {args.users:,} users.\n"
    )
    report.record(record_path(args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="queued jobs (default 10,000)")
    parser.add_argument("--users", type=int, default=1_000, help="users (default 1,000)")
    parser.add_argument("--dispatches", type=int, default=300, help="timed steady dispatches")
    parser.add_argument("--engine-submits", type=int, default=20, help="timed engine submits")
    add_record_args(parser)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
