"""Cross-user batching: N users each asking for one image at the same moment, against the
same jobs run one by one (issues 3 and 8).

For N in 1, 2, 4, 8, each round times, in alternating order:

- together: N single-image jobs from N users with explicit, different seeds, all queued
  before the worker picks its next batch (as when they arrive while the GPU is busy): the
  scheduler merges them into one pipeline call;
- one by one: the same jobs, each submitted when the previous one finished.

The gain is one-by-one time ÷ together time, i.e. the throughput ratio (target on a CPU with
the tiny model: at least 1.4x for 4 users). A third, untimed check shows what an idle
engine does with requests that arrive a few milliseconds apart: it starts the first at once
(no waiting to fill a batch), and the others merge into the next call.

    python -m bench.batching
"""

from __future__ import annotations

import argparse
import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor

from bench.common import (
    Report,
    add_record_args,
    describe_machine,
    ms,
    pct,
    quiet_libraries,
    record_path,
    summarize,
)
from bench.harness import (
    Job,
    Runner,
    Workload,
    alternate,
    engine_run,
    engine_run_one_by_one,
    jobs_for_users,
    running_engine,
    settle,
)
from bench.models import tiny_backend
from engine.engine import EngineSettings

TARGET_GAIN_4_USERS = 1.4


async def main_async(args: argparse.Namespace) -> None:
    quiet_libraries()
    # Every torch call on one thread, as in bench.engine_overhead (see its docstring).
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch")
    )
    report = Report("Cross-user batching", describe_machine(args.device))
    backend = tiny_backend(args.device)
    workload = Workload.resolve(backend, args.model)
    backend.manager.get(backend.registry.get(workload.model))
    settle()
    users_list = [int(n) for n in args.users.split(",")]
    # No result cache: both sides of a round run the same seeds.
    settings = EngineSettings(
        max_queued_per_user=64, max_batch_images=max(users_list), cache_entries=0
    )
    rows = []
    gains: dict[int, float] = {}
    async with running_engine(backend, settings) as engine:
        for users in users_list:
            calls: dict[str, list[int]] = {"together": [], "one by one": []}

            def counted(name: str, together: bool, calls: dict[str, list[int]] = calls) -> Runner:
                async def run(jobs: list[Job]) -> float:
                    before = backend.calls
                    if together:
                        seconds, _ = await engine_run(engine, workload, jobs)
                    else:
                        seconds, _ = await engine_run_one_by_one(engine, workload, jobs)
                    calls[name].append(backend.calls - before)
                    return seconds

                return run

            samples = await alternate(
                {"together": counted("together", True), "one by one": counted("one by one", False)},
                functools.partial(jobs_for_users, users),
                reps=args.reps,
                warmup=args.warmup,
                seed_base=1_000_000 * users,
            )
            before = backend.calls
            await engine_run(
                engine, workload, jobs_for_users(users, 1_000_000 * users - 100), together=False
            )
            arriving_calls = backend.calls - before

            together = summarize(samples["together"])
            one_by_one = summarize(samples["one by one"])
            gain = one_by_one.median / together.median
            gains[users] = gain
            paired = summarize(
                [o / t for o, t in zip(samples["one by one"], samples["together"], strict=True)]
            )
            rows.append(
                [
                    users,
                    f"{ms(one_by_one.median)} ± {pct(one_by_one.iqr_fraction / 2)}",
                    f"{ms(together.median)} ± {pct(together.iqr_fraction / 2)}",
                    f"{users / one_by_one.median:.1f} / {users / together.median:.1f}",
                    f"**{gain:.2f}x**",
                    f"{paired.median:.2f}x ({paired.p25:.2f}–{paired.p75:.2f})",
                    f"{max(calls['one by one'])} / {max(calls['together'])}",
                    arriving_calls,
                ]
            )
            print(f"  {users} users: gain {gain:.2f}x", flush=True)

    report.text(
        f"**{workload.label}**, one image per user; {args.reps} timed rounds after "
        f"{args.warmup} warm-up rounds, alternating; every torch call on one worker thread.\n"
    )
    report.table(
        [
            "users",
            "one by one, ms",
            "together, ms",
            "images/s one by one / together",
            "throughput gain",
            "round by round (IQR)",
            "pipeline calls one by one / together",
            "calls when arriving ms apart on an idle engine",
        ],
        rows,
    )
    report.text(
        "Medians; ± is half the interquartile range. 'together' jobs are resolved, then "
        "queued in one go; 'arriving ms apart' submits the raw requests concurrently to an "
        "idle engine, which starts the first one alone at once.\n"
    )
    if 4 in gains:
        verdict = "met" if gains[4] >= TARGET_GAIN_4_USERS else "NOT met"
        report.text(
            f"4 users: **{gains[4]:.2f}x** the throughput of one by one "
            f"(target ≥ {TARGET_GAIN_4_USERS}x: {verdict}).\n"
        )
    report.record(record_path(args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--model", default="tiny", help="registry model (default: tiny)")
    parser.add_argument("--users", default="1,2,4,8", help="user counts (default: 1,2,4,8)")
    parser.add_argument("--reps", type=int, default=11, help="timed rounds per user count")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    add_record_args(parser)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
