"""Success metrics over 100,000 jobs in 90 days (issue 22): counting every day from the raw
jobs the first time (then keeping them), and reading the kept days afterwards, for all
servers and for one; a month's chart reads 30 kept days.

    python -m bench.usage
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Report, add_record_args, describe_machine, ms, record_path, summarize
from core.storage import Database, ManualClock
from core.storage.usage import ALL_SERVERS, server_key

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "storage"))
from storage_helpers import USAGE_DAYS, USAGE_START, fill_usage


async def run(args: argparse.Namespace) -> None:
    report = Report(
        f"Usage figures over {args.jobs:,} jobs in {USAGE_DAYS} days", describe_machine()
    )
    first = USAGE_START.date()
    last = first + dt.timedelta(days=USAGE_DAYS - 1)
    clock = ManualClock(USAGE_START + dt.timedelta(days=USAGE_DAYS + 1))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "usage.sqlite3"
        async with Database.open(path, clock=clock):
            pass
        fill_usage(path, args.jobs)
        rows = []
        async with Database.open(path, clock=clock) as db:
            started = time.perf_counter()
            await db.usage.period(first, last)
            cold = time.perf_counter() - started
            rows.append(["every day counted from the raw jobs, then kept", ms(cold), "1"])
            for name, key, span in (
                ("90 days, all servers (kept)", ALL_SERVERS, USAGE_DAYS),
                ("90 days, one server (kept)", server_key(100), USAGE_DAYS),
                ("30 days, all servers (kept)", ALL_SERVERS, 30),
            ):
                times = []
                for _ in range(args.rounds):
                    started = time.perf_counter()
                    await db.usage.period(last - dt.timedelta(days=span - 1), last, key)
                    times.append(time.perf_counter() - started)
                rows.append([name, ms(summarize(times).median), str(args.rounds)])
    report.table(["figures", "median ms", "runs"], rows)
    report.text(f"Counting {args.jobs:,} raw jobs once: **{cold:.2f} s** (target under 1 s).")
    report.record(record_path(args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=10)
    add_record_args(parser)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
