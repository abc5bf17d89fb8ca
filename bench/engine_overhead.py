"""The engine's overhead: plain diffusers calls against the same jobs through ``Engine.submit``.

Same process, same modules, same seeds, alternating runs (issues 3 and 8). For each batch
size, three sides are timed per round, in alternating order:

- plain: a diffusers pipeline over the loaded model's very modules, called directly, with
  one generator per image (what a user of diffusers writes);
- backend: ``DiffusersBackend.resolve`` and ``run`` on the calling thread: the engine's
  pipeline code without its queue, worker task and events;
- engine: the images submitted through ``Engine.submit`` as jobs of at most 4 images (a
  request's limit), one user each, all at once, timed until every job's ``Done``; they run as
  one pipeline call.

The headline is the engine's median time per call over plain diffusers' at batch 1 (target
on a CPU with the tiny model: at most 1.05). For it, every torch call of the process runs on
one thread (the event loop's default executor is replaced by a one-thread pool, and plain
diffusers runs there too), so the sides differ only in the engine's own code.

Why: on a CPU, each native thread that runs torch gets its own OpenMP team, and two teams
on the same cores slow every call down (about 2x measured here with the tiny model on 2
cores). ``asyncio.to_thread`` hands the engine's pipeline calls to whichever thread of the
default executor is free, so a bot process ends up with several teams. A second part runs
each side alone in a fresh process, as deployed (the engine with asyncio's default executor,
and with a one-thread executor), which shows that effect.

    python -m bench.engine_overhead                 # tiny model, batches 1, 4, 8
    python -m bench.engine_overhead --sd15-arch     # also SD 1.5's real UNet at 64x64
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from bench.common import (
    Report,
    Summary,
    add_record_args,
    describe_machine,
    ms,
    pct,
    quiet_libraries,
    record_path,
    summarize,
)
from bench.harness import (
    SEED_STRIDE,
    Job,
    Workload,
    alternate,
    backend_run,
    engine_run,
    jobs_for_batch,
    max_pixel_difference,
    plain_run,
    running_engine,
    settle,
)
from bench.models import (
    CountingBackend,
    Scale,
    arch_presets,
    arch_spec,
    build_sd15,
    parameter_count,
    plain_pipeline,
    prebuilt_backend,
    tiny_backend,
)
from engine.engine import EngineSettings
from engine.loader import LoaderOptions
from engine.types import Family

TARGET_RATIO = 1.05


@dataclass(frozen=True, slots=True)
class Case:
    backend: CountingBackend
    workload: Workload
    note: str


@dataclass(frozen=True, slots=True)
class BatchResult:
    batch: int
    plain: Summary
    backend: Summary
    engine: Summary
    paired: Summary  # engine ÷ plain, round by round
    pixel_difference: int

    @property
    def ratio(self) -> float:
        return self.engine.median / self.plain.median

    @property
    def backend_ratio(self) -> float:
        return self.backend.median / self.plain.median


async def measure(case: Case, batches: list[int], reps: int, warmup: int) -> list[BatchResult]:
    backend, workload = case.backend, case.workload
    loaded = backend.manager.get(backend.registry.get(workload.model))
    plain = plain_pipeline(loaded, workload.scheduler)
    settle()
    settings = EngineSettings(max_queued_per_user=64, max_batch_images=max(batches))
    results = []
    async with running_engine(backend, settings) as engine:
        loop = asyncio.get_running_loop()

        # On the loop's default executor: the one thread that runs the engine's calls too.
        async def on_plain(jobs: list[Job]) -> float:
            return (await loop.run_in_executor(None, plain_run, plain, workload, jobs))[0]

        async def on_backend(jobs: list[Job]) -> float:
            return (await loop.run_in_executor(None, backend_run, backend, workload, jobs))[0]

        async def on_engine(jobs: list[Job]) -> float:
            calls = backend.calls
            seconds, _ = await engine_run(engine, workload, jobs)
            if backend.calls - calls != 1:
                raise RuntimeError(f"{len(jobs)} jobs took {backend.calls - calls} calls, not 1")
            return seconds

        runners = {"plain": on_plain, "backend": on_backend, "engine": on_engine}
        for batch in batches:
            seed_base = 1_000_000 * batch
            samples = await alternate(
                runners,
                functools.partial(jobs_for_batch, batch),
                reps=reps,
                warmup=warmup,
                seed_base=seed_base,
            )
            # The same seeds must give the same pixels either way.
            jobs = jobs_for_batch(batch, seed_base - SEED_STRIDE)
            _, plain_images = await loop.run_in_executor(None, plain_run, plain, workload, jobs)
            _, engine_images = await engine_run(engine, workload, jobs)
            difference = max_pixel_difference(plain_images, [g.image for g in engine_images])
            result = BatchResult(
                batch=batch,
                plain=summarize(samples["plain"]),
                backend=summarize(samples["backend"]),
                engine=summarize(samples["engine"]),
                paired=summarize(
                    [e / p for e, p in zip(samples["engine"], samples["plain"], strict=True)]
                ),
                pixel_difference=difference,
            )
            print(
                f"  batch {batch}: plain {ms(result.plain.median)} ms, engine "
                f"{ms(result.engine.median)} ms, ratio {result.ratio:.3f}",
                flush=True,
            )
            results.append(result)
    return results


def report_case(report: Report, case: Case, results: list[BatchResult], reps: int) -> None:
    report.text(f"**{case.workload.label}** — {case.note}; {reps} timed rounds per batch size.\n")
    rows = []
    for r in results:
        rows.append(
            [
                r.batch,
                f"{ms(r.plain.median)} ± {pct(r.plain.iqr_fraction / 2)}",
                f"{ms(r.backend.median)} ± {pct(r.backend.iqr_fraction / 2)}",
                f"{ms(r.engine.median)} ± {pct(r.engine.iqr_fraction / 2)}",
                f"{ms(r.plain.median / r.batch)} / {ms(r.engine.median / r.batch)}",
                f"{r.batch / r.plain.median:.2f} / {r.batch / r.engine.median:.2f}",
                f"{r.backend_ratio:.3f}",
                f"**{r.ratio:.3f}**",
                f"{r.paired.median:.3f} ({r.paired.p25:.3f}–{r.paired.p75:.3f})",
                r.pixel_difference,
            ]
        )
    report.table(
        [
            "batch",
            "plain ms/call",
            "backend ms/call",
            "engine ms/call",
            "ms/image plain / engine",
            "images/s plain / engine",
            "backend ÷ plain",
            "engine ÷ plain",
            "round by round (IQR)",
            "max pixel diff",
        ],
        rows,
    )
    spread = ", ".join(
        f"batch {r.batch}: plain {pct(r.plain.cv)}, engine {pct(r.engine.cv)}" for r in results
    )
    report.text(
        "Medians; ± is half the interquartile range; 'round by round' is the median (and "
        "interquartile range) of each round's engine ÷ plain. Coefficient of variation — "
        f"{spread}. 'max pixel diff' compares the engine's images with plain diffusers' "
        "for the same seeds (0 = identical).\n"
    )


def tiny_case(device: str) -> Case:
    backend = tiny_backend(device)
    return Case(backend, Workload.resolve(backend, "tiny"), "the built-in tiny SD 1.5-layout model")


def sd15_arch_case(device: str, size: int, steps: int) -> Case:
    name = "sd15-arch"
    pipe = build_sd15(Scale.REAL)
    spec = arch_spec(
        name,
        Family.SD15,
        arch_presets(Family.SD15, width=size, height=size, steps=steps, scheduler="euler_a"),
    )
    backend = prebuilt_backend([spec], {name: pipe}, LoaderOptions(device=device))
    millions = parameter_count(pipe.unet) / 1e6
    note = (
        f"SD 1.5's real UNet ({millions:.0f}M parameters), VAE and CLIP text encoder with "
        "random weights, at a small size so that it runs on a CPU"
    )
    return Case(backend, Workload.resolve(backend, name), note)


# --- each side alone, in a fresh process ---------------------------------------------------

SOLO_MODES = {
    "plain": "plain diffusers, on the main thread",
    "engine": "the engine, as shipped (asyncio's default executor)",
    "engine-one-thread": "the engine with a one-thread default executor",
}


async def solo(mode: str, rounds: int, warmup: int) -> dict[str, object]:
    """Sequential single-image tiny jobs, one side only; prints one JSON line."""
    if mode == "engine-one-thread":
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch")
        )
    case = tiny_case("cpu")
    backend, workload = case.backend, case.workload
    times: list[float] = []
    if mode == "plain":
        loaded = backend.manager.get(backend.registry.get(workload.model))
        plain = plain_pipeline(loaded, workload.scheduler)
        settle()
        for i in range(warmup + rounds):
            times.append(plain_run(plain, workload, jobs_for_batch(1, 100 * i))[0])
        threads = 1
    else:
        settle()
        async with running_engine(backend) as engine:
            for i in range(warmup + rounds):
                times.append((await engine_run(engine, workload, jobs_for_batch(1, 100 * i)))[0])
        threads = len(backend.threads)
    return {"mode": mode, "median_s": statistics.median(times[warmup:]), "threads": threads}


def run_solo_processes(report: Report, rounds: int, repeats: int) -> None:
    medians: dict[str, list[float]] = {mode: [] for mode in SOLO_MODES}
    threads: dict[str, int] = {mode: 0 for mode in SOLO_MODES}
    for _ in range(repeats):
        for mode in SOLO_MODES:
            command = [sys.executable, "-m", "bench.engine_overhead", "--solo", mode]
            command += ["--reps", str(rounds), "--no-record"]
            output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            line = json.loads(output.strip().splitlines()[-1])
            medians[mode].append(float(line["median_s"]))
            threads[mode] = max(threads[mode], int(line["threads"]))
    plain = statistics.median(medians["plain"])
    rows = [
        [
            description,
            ms(statistics.median(medians[mode])),
            " / ".join(ms(m) for m in medians[mode]),
            threads[mode],
            f"{statistics.median(medians[mode]) / plain:.3f}",
        ]
        for mode, description in SOLO_MODES.items()
    ]
    report.text(
        f"Each side alone in a fresh process (tiny, batch 1, {rounds} sequential jobs after "
        f"warm-up; {repeats} processes per side, in turn):\n"
    )
    report.table(
        ["side", "median ms/job", "per process", "threads that ran torch", "÷ plain"], rows
    )


async def main_async(args: argparse.Namespace) -> None:
    quiet_libraries()
    if args.solo:
        print(json.dumps(await solo(args.solo, args.reps, args.warmup)))
        return
    # Every torch call on one thread (see the module docstring).
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch")
    )
    report = Report("Engine overhead against plain diffusers", describe_machine(args.device))
    batches = [int(b) for b in args.batches.split(",")]
    headline: list[str] = []

    case = tiny_case(args.device)
    results = await measure(case, batches, args.reps, args.warmup)
    report.text(
        "Same process, alternating rounds; every torch call on one worker thread (the "
        "engine's and plain diffusers').\n"
    )
    report_case(report, case, results, args.reps)
    single = results[0]
    verdict = "met" if single.ratio <= TARGET_RATIO else "NOT met"
    headline.append(
        f"- tiny, batch {single.batch}: engine ÷ plain = **{single.ratio:.3f}** "
        f"(target ≤ {TARGET_RATIO}: {verdict}); "
        + ", ".join(f"batch {r.batch}: {r.ratio:.3f}" for r in results[1:])
    )

    if args.sd15_arch:
        case = sd15_arch_case(args.device, args.arch_size, args.arch_steps)
        results = await measure(case, batches, args.arch_reps, 1)
        report_case(report, case, results, args.arch_reps)
        headline.append(
            "- sd15-arch: engine ÷ plain = "
            + ", ".join(f"batch {r.batch}: {r.ratio:.3f}" for r in results)
        )
    report.text("Overhead ratios (engine ÷ plain diffusers, median time per call):\n")
    report.text("\n".join(headline) + "\n")
    if args.solo_processes and args.device == "cpu":
        run_solo_processes(report, rounds=20, repeats=args.solo_processes)
    report.record(record_path(args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--batches", default="1,4,8", help="batch sizes (default: 1,4,8)")
    parser.add_argument("--reps", type=int, default=25, help="timed rounds per batch (tiny)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first (tiny)")
    parser.add_argument(
        "--sd15-arch",
        action="store_true",
        help="also measure SD 1.5's real architecture (random weights) at a small size",
    )
    parser.add_argument("--arch-size", type=int, default=64, help="its image side in pixels")
    parser.add_argument("--arch-steps", type=int, default=2, help="its denoising steps")
    parser.add_argument("--arch-reps", type=int, default=3, help="its timed rounds per batch")
    parser.add_argument(
        "--solo-processes",
        type=int,
        default=3,
        help="fresh processes per side for the 'each side alone' part (0: skip it)",
    )
    parser.add_argument("--solo", choices=sorted(SOLO_MODES), help=argparse.SUPPRESS)
    add_record_args(parser)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
