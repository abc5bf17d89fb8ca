"""The engine on Ray replicas (ENGINE=ray), on a local Ray cluster with CPU replicas running
the tiny model: the same public API as the local engine, with jobs spread over replicas,
progress and cancel crossing the process boundary, and a replica's death costing no job."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import ray
from e2e_support import hold_jobs
from ray_support import ROOT, RayCluster

from engine.backend import DiffusersBackend
from engine.engine import Engine, EngineSettings
from engine.loader import LoaderOptions, ModelManager
from engine.registry import ModelRegistry
from engine.replicas import RayDevice, RayOptions, ReplicaConfig, ReplicaStats
from engine.types import (
    Cancelled,
    Done,
    Event,
    GenerationRequest,
    Progress,
    Started,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

LOADER = LoaderOptions(device="cpu", local_files_only=True)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ray-engine") / "data"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def engine(ray_cluster: RayCluster, data_dir: Path) -> AsyncIterator[Engine]:
    """Two replicas, one torch thread each; one image per call, so each job is its own
    batch and the order the replicas take them in is the scheduler's."""
    registry = ModelRegistry.load()
    holds = str(data_dir.parent / "engine-holds")
    options = RayOptions(
        address=ray_cluster.address,
        replicas=2,
        gpus_per_replica=0,
        cpus_per_replica=1,
        namespace="engine-tests",
        env={
            "PYTHONPATH": str(ROOT / "tests" / "engine_holds"),
            "ENGINE_HOLD_DIR": holds,
            "HF_HUB_OFFLINE": "1",
        },
    )
    config = ReplicaConfig(registry=registry, loader=LOADER, torch_threads=1)
    devices = [RayDevice(index, config, options) for index in range(2)]
    started = Engine(
        DiffusersBackend(registry, ModelManager(LOADER)),
        EngineSettings(max_batch_images=1, progress_interval_s=0.0, affinity_max_wait_s=5.0),
        devices=devices,
    )
    await started.start()
    try:
        yield started
    finally:
        await started.stop()
        ray.shutdown()


def replica_stats(namespace: str = "engine-tests") -> list[ReplicaStats]:
    actors = [ray.get_actor(f"engine-replica-{n}", namespace=namespace) for n in range(2)]
    return [ray.get(actor.stats.remote(), timeout=60) for actor in actors]


def request(prompt: str, **fields: Any) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, **{"model": "tiny", "steps": 3, **fields})


async def poll_until(predicate: Callable[[], object], limit_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"not true within {limit_s} s")
        await asyncio.sleep(0.1)


async def test_two_replicas_finish_eight_jobs_from_four_users_fairly(
    engine: Engine, data_dir: Path
) -> None:
    with hold_jobs(data_dir, "fair blocker", from_step=1) as release:
        # Both replicas busy, so the eight below are all queued before either takes one.
        blockers = [await engine.submit(request(f"fair blocker {n}"), user_id="b") for n in (1, 2)]
        await poll_until(lambda: all(stats.running for stats in replica_stats()), 120)
        # Each user sends two, user after user: a fair queue takes one of each user's
        # first, then their second ones.
        handles = [
            await engine.submit(request(f"fair {user} {n}"), user_id=f"u{user}")
            for user in range(4)
            for n in range(2)
        ]
        release()
        finals = await asyncio.wait_for(asyncio.gather(*(h.wait() for h in handles)), 240)
    assert all(isinstance(b, Done) for b in [await b.wait() for b in blockers])
    assert all(isinstance(final, Done) for final in finals)
    assert all(len(final.result.images) == 1 for final in finals if isinstance(final, Done))

    stats = replica_stats()
    ran = [[job for job in replica.jobs if job in {h.job_id for h in handles}] for replica in stats]
    # Every job ran once, on one replica, and both replicas took part.
    assert sorted(ran[0] + ran[1]) == sorted(h.job_id for h in handles)
    assert ran[0] and ran[1], f"one replica did everything: {ran}"
    # Fair order: each replica took first jobs before any second job of the same user.
    first_round = {h.job_id for n, h in enumerate(handles) if n % 2 == 0}
    for order in ran:
        rounds = [job in first_round for job in order]
        assert rounds == sorted(rounds, reverse=True), order


async def test_progress_and_previews_cross_the_boundary_and_cancel_reaches_the_replica(
    engine: Engine, data_dir: Path
) -> None:
    with hold_jobs(data_dir, "held for cancel", from_step=2):
        handle = await engine.submit(
            request("held for cancel", steps=4, preview_every=1), user_id="watcher"
        )
        seen: list[Event] = []
        async with asyncio.timeout(120):
            async for event in handle:
                seen.append(event)
                if isinstance(event, Progress):
                    break
        progress = [e for e in seen if isinstance(e, Progress)]
        assert progress and progress[0].step == 1 and progress[0].total == 4
        assert progress[0].preview is not None  # a preview image, sent by the replica
        assert any(isinstance(e, Started) for e in seen)
        running = [stats.running for stats in replica_stats()]
        assert [handle.job_id] in running, running
        assert handle.cancel()
    final = await asyncio.wait_for(handle.wait(), 60)
    assert isinstance(final, Cancelled)
    # The replica stopped that call (at its next step) and takes new work.
    await poll_until(lambda: not any(stats.running for stats in replica_stats()), 60)
    assert all(handle.job_id not in stats.jobs for stats in replica_stats())
    after = await engine.submit(request("after the cancel"), user_id="watcher")
    assert isinstance(await asyncio.wait_for(after.wait(), 120), Done)


async def test_a_replica_killed_mid_batch_its_job_finishes_on_the_other(
    engine: Engine, data_dir: Path
) -> None:
    with hold_jobs(data_dir, "doomed replica", from_step=1) as release:
        handle = await engine.submit(request("doomed replica"), user_id="victim")
        async with asyncio.timeout(120):
            while True:
                where = [n for n, s in enumerate(replica_stats()) if handle.job_id in s.running]
                if where:
                    break
                await asyncio.sleep(0.1)
        victim = ray.get_actor(f"engine-replica-{where[0]}", namespace="engine-tests")
        ray.kill(victim)  # for good: Ray does not restart it
        await asyncio.sleep(0.5)
        release()
        final = await asyncio.wait_for(handle.wait(), 180)
    assert isinstance(final, Done)
    # Delivered once: the handle ends with one Done; the other replica's record has the job.
    other = ray.get_actor(f"engine-replica-{1 - where[0]}", namespace="engine-tests")
    assert handle.job_id in ray.get(other.stats.remote(), timeout=60).jobs
    # The killed replica's lane creates a new one, which serves again.
    async with asyncio.timeout(180):
        while True:
            with contextlib.suppress(Exception):
                actor = ray.get_actor(f"engine-replica-{where[0]}", namespace="engine-tests")
                if ray.get(actor.ping.remote(), timeout=5):
                    break
            await asyncio.sleep(0.5)
    assert engine.status().worker_alive
    more = [await engine.submit(request(f"after the kill {n}"), user_id=f"k{n}") for n in range(4)]
    finals = await asyncio.wait_for(asyncio.gather(*(h.wait() for h in more)), 240)
    assert all(isinstance(f, Done) for f in finals)


async def test_models_stay_on_their_replica(engine: Engine) -> None:
    loads_before = [list(stats.loads) for stats in replica_stats()]
    handles = [
        await engine.submit(
            request(f"affinity {n}", model="tiny-xl" if n % 2 else "tiny"), user_id=f"a{n % 4}"
        )
        for n in range(8)
    ]
    finals = await asyncio.wait_for(asyncio.gather(*(h.wait() for h in handles)), 300)
    assert all(isinstance(final, Done) for final in finals)
    now = replica_stats()
    new_loads = [list(now[n].loads)[len(loads_before[n]) :] for n in range(2)]
    # Eight jobs of two models alternating: far fewer loads than jobs.
    assert sum(len(loads) for loads in new_loads) <= 3, new_loads
