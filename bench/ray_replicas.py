"""Throughput on Ray replicas (issue 20): the same jobs through the local engine, one Ray
replica and N replicas, and what Ray adds per job.

On a CPU (the default) each replica runs the tiny model with torch limited to one thread, on
a Ray cluster this script starts on 127.0.0.1 with one logical CPU per core; the local engine
runs with one torch thread too, so the sides differ only in where the pipeline runs. Every
job is its own pipeline call (one image, batching off), from its own user, all submitted at
once, timed from the first submit to the last result. Sides alternate over the rounds.

Headlines: throughput with 2 replicas over 1 (target: at least 1.8x) and the time Ray adds
per job over the local engine.

    python -m bench.ray_replicas                       # CPU: local, 1 and 2 replicas
    python -m bench.ray_replicas --device cuda --replicas 1,2,4,8 \
        --models-file my-models.toml --model sd15    # one replica per GPU, a cluster of its
                                                     # own (or --address of a running one)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Sequence

import ray
import torch

from bench.common import Report, add_record_args, describe_machine, quiet_libraries, record_path
from engine.backend import DiffusersBackend
from engine.devices import Device
from engine.engine import Engine, EngineSettings
from engine.loader import LoaderOptions, ModelManager
from engine.registry import ModelRegistry
from engine.replicas import RayDevice, RayOptions, ReplicaConfig, local_cluster
from engine.types import Done, GenerationRequest


def engine_for(
    registry: ModelRegistry, loader: LoaderOptions, devices: Sequence[Device] | None
) -> Engine:
    return Engine(
        DiffusersBackend(registry, ModelManager(loader)),
        # One image per call: the replicas' share of the work is what is measured.
        EngineSettings(max_batch_images=1, max_queued=1000, max_queued_per_user=1000),
        devices=devices,
    )


async def timed_run(engine: Engine, args: argparse.Namespace, round_: int) -> float:
    """Seconds for ``args.jobs`` one-image jobs from as many users, submitted at once."""
    started = time.perf_counter()
    handles = [
        await engine.submit(
            GenerationRequest(
                prompt=f"a lighthouse at dusk, round {round_} job {n}",
                model=args.model,
                steps=args.steps,
                seed=1000 * (round_ + 1) + n,
            ),
            user_id=f"user {n}",
        )
        for n in range(args.jobs)
    ]
    finals = await asyncio.gather(*(handle.wait() for handle in handles))
    if not all(isinstance(final, Done) for final in finals):
        raise RuntimeError(f"not every job finished: {finals}")
    return time.perf_counter() - started


async def measure(args: argparse.Namespace, address: str) -> dict[str, list[float]]:
    registry = ModelRegistry.load(args.models_file)
    loader = LoaderOptions(device=args.device, local_files_only=True)
    torch_threads = 1 if args.device == "cpu" else 0
    if torch_threads:
        torch.set_num_threads(torch_threads)
    config = ReplicaConfig(registry=registry, loader=loader, torch_threads=torch_threads)
    sides: dict[str, Engine] = {}
    sides["local"] = engine_for(registry, loader, None)
    for count in args.replicas:
        options = RayOptions(
            address=address,
            replicas=count,
            gpus_per_replica=0 if args.device == "cpu" else 1,
            cpus_per_replica=1,
            namespace=f"bench-{count}",
            env={"HF_HUB_OFFLINE": "1"},
        )
        devices = [RayDevice(index, config, options) for index in range(count)]
        sides[f"{count} replica{'s' if count > 1 else ''}"] = engine_for(registry, loader, devices)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for engine in sides.values():
        await engine.start()
        await timed_run(engine, args, -1)  # loads the model everywhere, warms up
    for round_ in range(args.rounds):
        order = list(sides.items())
        if round_ % 2:
            order.reverse()
        for name, engine in order:
            times[name].append(await timed_run(engine, args, round_))
            print(f"round {round_ + 1}: {name}: {times[name][-1]:.2f} s", flush=True)
    for engine in sides.values():
        await engine.stop()
    return times


def run(args: argparse.Namespace) -> None:
    quiet_libraries()
    report = Report("Throughput on Ray replicas", describe_machine(args.device))
    if args.address:
        times = asyncio.run(measure(args, args.address))
    else:
        gpus = torch.cuda.device_count() if args.device.startswith("cuda") else 0
        # Logical CPUs: every side's replicas stay up, though only one side runs at a time.
        cpus = max(os.cpu_count() or 1, sum(args.replicas))
        with local_cluster(cpus=cpus, gpus=gpus, env={"HF_HUB_OFFLINE": "1"}) as address:
            try:
                times = asyncio.run(measure(args, address))
            finally:
                ray.shutdown()  # before the cluster stops, or Ray ends this process with it
    medians = {name: statistics.median(samples) for name, samples in times.items()}
    rows = [
        [
            name,
            f"{median:.2f}",
            f"{args.jobs / median:.2f}",
            f"{medians[next(iter(medians))] / median:.2f}x",
        ]
        for name, median in medians.items()
    ]
    report.table(["side", "median s for all jobs", "jobs a second", "speed-up"], rows)
    one, two = medians.get("1 replica"), medians.get("2 replicas")
    if one is not None and two is not None:
        report.text(f"2 replicas over 1: **{one / two:.2f}x** the throughput (target: 1.8x).")
    if one is not None and "local" in medians:
        added = (one - medians["local"]) / args.jobs
        report.text(
            f"Ray's cost per job over the local engine (1 replica against local, both one "
            f"torch thread): {added * 1000:+.0f} ms a job, on {medians['local'] / args.jobs:.3f}"
            f" s a job locally."
        )
    report.text(
        f"{args.jobs} one-image jobs of {args.steps} steps ({args.model}), "
        f"{args.rounds} rounds, sides alternating."
    )
    report.record(record_path(args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--address", help="a running cluster's address (GPU runs)")
    parser.add_argument(
        "--replicas",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 2],
        help="replica counts to measure, such as 1,2,4",
    )
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--models-file", help="a registry TOML file (default: the built-in)")
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    add_record_args(parser)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
