"""Running the same jobs three ways, timed: plain diffusers, the backend alone, the engine.

Every timed run gets fresh seeds (so the engine's result cache never answers) and the same
seeds on every side of a comparison (so the work is identical). Garbage is collected once
per round, outside the timings, after ``settle`` has frozen the objects made at start-up
(so a collection is cheap and neither side pays for the other's garbage).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from diffusers import DiffusionPipeline
from PIL import Image

from bench.models import CountingBackend, plain_generate
from engine.engine import Engine, EngineSettings
from engine.types import (
    MAX_IMAGES_PER_REQUEST,
    Done,
    GeneratedImage,
    GenerationRequest,
    ResolvedRequest,
    StepInfo,
)

PROMPT = "a lighthouse on a cliff at dawn, oil painting"
SEED_STRIDE = 64  # seeds per timed run; more than any batch uses


@dataclass(frozen=True, slots=True)
class Workload:
    """The shared parameters of a benchmark's jobs, as the engine resolves them."""

    model: str
    prompt: str
    negative_prompt: str  # resolved: with the model's negative prefix, for plain diffusers
    steps: int
    guidance: float
    width: int
    height: int
    scheduler: str

    @classmethod
    def resolve(
        cls,
        backend: CountingBackend,
        model: str,
        *,
        prompt: str = PROMPT,
        steps: int | None = None,
        width: int | None = None,
        height: int | None = None,
        scheduler: str | None = None,
    ) -> Workload:
        resolved = backend.resolve(
            GenerationRequest(
                prompt,
                model=model,
                steps=steps,
                width=width,
                height=height,
                scheduler=scheduler,
                seed=0,
            )
        )
        return cls(
            model=resolved.model,
            prompt=resolved.prompt,
            negative_prompt=resolved.negative_prompt,
            steps=resolved.steps,
            guidance=resolved.guidance,
            width=resolved.width,
            height=resolved.height,
            scheduler=resolved.scheduler,
        )

    def request(self, *, count: int, seed: int, preview_every: int = 0) -> GenerationRequest:
        return GenerationRequest(
            self.prompt,
            model=self.model,
            count=count,
            steps=self.steps,
            guidance=self.guidance,
            width=self.width,
            height=self.height,
            scheduler=self.scheduler,
            seed=seed,
            preview_every=preview_every,
        )

    @property
    def label(self) -> str:
        return f"{self.model}, {self.width}x{self.height}, {self.steps} steps, {self.scheduler}"


@dataclass(frozen=True, slots=True)
class Job:
    user: str
    count: int
    seed: int

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.count)]


def jobs_for_batch(images: int, base_seed: int) -> list[Job]:
    """``images`` images as the fewest jobs a request allows (4 images each), one user each,
    so they run as one pipeline call."""
    jobs: list[Job] = []
    offset = 0
    while offset < images:
        count = min(MAX_IMAGES_PER_REQUEST, images - offset)
        jobs.append(Job(f"user-{len(jobs)}", count, base_seed + offset))
        offset += count
    return jobs


def jobs_for_users(users: int, base_seed: int) -> list[Job]:
    """One single-image job for each of ``users`` users, with explicit, different seeds."""
    return [Job(f"user-{i}", 1, base_seed + i) for i in range(users)]


def all_seeds(jobs: Sequence[Job]) -> list[int]:
    return [seed for job in jobs for seed in job.seeds]


# --- the three ways -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_engine(
    backend: CountingBackend, settings: EngineSettings | None = None
) -> AsyncIterator[Engine]:
    engine = Engine(backend, settings or EngineSettings(max_queued_per_user=64))
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


def _check_done(final: object) -> Done:
    if not isinstance(final, Done):
        raise RuntimeError(f"a benchmark job did not finish: {final!r}")
    if final.result.from_cache:
        raise RuntimeError("a benchmark job was answered from the cache; seeds must differ")
    return final


async def engine_run(
    engine: Engine, workload: Workload, jobs: Sequence[Job], *, together: bool = True
) -> tuple[float, list[GeneratedImage]]:
    """Submit every job at once, as concurrent users would, and wait for all of them.

    ``together``: resolve the requests first, then submit them all in one go, so they are
    queued before the worker picks the next batch (jobs that arrive while the GPU is busy).
    Otherwise each ``submit`` resolves its own request, and the worker starts the first job
    alone as soon as it is queued (what an idle engine does with requests that arrive a few
    milliseconds apart). Either way the time includes resolving.
    """
    requests = [workload.request(count=job.count, seed=job.seed) for job in jobs]
    started = time.perf_counter()
    if together:
        resolved = await asyncio.gather(*(engine.resolve(request) for request in requests))
        handles = [
            await engine.submit(request, user_id=job.user)
            for request, job in zip(resolved, jobs, strict=True)
        ]
    else:
        handles = list(
            await asyncio.gather(
                *(
                    engine.submit(request, user_id=job.user)
                    for request, job in zip(requests, jobs, strict=True)
                )
            )
        )
    finals = await asyncio.gather(*(handle.wait() for handle in handles))
    elapsed = time.perf_counter() - started
    images = [image for final in finals for image in _check_done(final).result.images]
    return elapsed, images


async def engine_run_one_by_one(
    engine: Engine, workload: Workload, jobs: Sequence[Job]
) -> tuple[float, list[GeneratedImage]]:
    """The same jobs, each submitted after the previous one finished."""
    started = time.perf_counter()
    images: list[GeneratedImage] = []
    for job in jobs:
        handle = await engine.submit(
            workload.request(count=job.count, seed=job.seed), user_id=job.user
        )
        images += _check_done(await handle.wait()).result.images
    return time.perf_counter() - started, images


def plain_run(
    pipe: DiffusionPipeline, workload: Workload, jobs: Sequence[Job]
) -> tuple[float, list[Image.Image]]:
    """One plain diffusers call for all the jobs' images, one generator per image."""
    seeds = all_seeds(jobs)
    started = time.perf_counter()
    images = plain_generate(
        pipe,
        prompts=[workload.prompt] * len(seeds),
        negative_prompts=[workload.negative_prompt] * len(seeds),
        seeds=seeds,
        steps=workload.steps,
        guidance=workload.guidance,
        width=workload.width,
        height=workload.height,
    )
    return time.perf_counter() - started, images


def _no_cancel(_info: StepInfo) -> frozenset[str]:
    return frozenset()


def backend_run(
    backend: CountingBackend, workload: Workload, jobs: Sequence[Job]
) -> tuple[float, list[GeneratedImage]]:
    """The backend alone (resolve, then one ``run``), on the calling thread: the engine's
    cost without its queue, worker task and events."""
    started = time.perf_counter()
    resolved: list[ResolvedRequest] = [
        backend.resolve(workload.request(count=job.count, seed=job.seed)) for job in jobs
    ]
    slots = [slot for i, r in enumerate(resolved) for slot in r.slots(f"job-{i}")]
    outputs = backend.run(resolved[0], slots, _no_cancel)
    elapsed = time.perf_counter() - started
    return elapsed, [image for image in outputs if image is not None]


Runner = Callable[[list[Job]], Awaitable[float]]


async def alternate(
    runners: Mapping[str, Runner],
    make_jobs: Callable[[int], list[Job]],
    *,
    reps: int,
    warmup: int,
    seed_base: int = 10_000,
    deadline: float | None = None,
) -> dict[str, list[float]]:
    """Time each runner ``reps`` times, interleaved and in alternating order (ABBA...), so a
    slow drift of the machine (heat, other processes) falls on every side alike.
    ``make_jobs(base_seed)`` gives each round its jobs; every side of a round gets the same.
    Give each call its own ``seed_base`` so that no job repeats an earlier one. Past
    ``deadline`` (a ``time.monotonic()`` value) no new round starts once one was timed."""
    names = list(runners)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + reps):
        timed_rounds = round_index - warmup
        if deadline is not None and timed_rounds >= 1 and time.monotonic() > deadline:
            break
        jobs = make_jobs(seed_base + round_index * SEED_STRIDE)
        order = names if round_index % 2 == 0 else names[::-1]
        gc.collect()
        for name in order:
            seconds = await runners[name](jobs)
            if round_index >= warmup:
                samples[name].append(seconds)
    return samples


def settle() -> None:
    """Collect garbage and freeze what survives (models, modules, imports), so that later
    collections only walk the objects the benchmark itself makes."""
    gc.collect()
    gc.freeze()


def max_pixel_difference(first: Sequence[Image.Image], second: Sequence[Image.Image]) -> int:
    if len(first) != len(second):
        raise ValueError(f"{len(first)} images against {len(second)}")
    worst = 0
    for a, b in zip(first, second, strict=True):
        left = np.asarray(a.convert("RGB"), dtype=np.int16)
        right = np.asarray(b.convert("RGB"), dtype=np.int16)
        worst = max(worst, int(np.abs(left - right).max()))
    return worst
