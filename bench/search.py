"""History search over 100,000 jobs (issue 16): ``JobRepository.history(text=...)`` on the
full-text index, for one user who owns every job (the worst case), against a plain substring
scan of the same rows (what the search did before the index).

    python -m bench.search
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import sqlite3
import tempfile
import time
from pathlib import Path

from bench.common import Report, add_record_args, describe_machine, ms, record_path, summarize
from core.storage import Database
from core.storage.clock import to_db
from core.storage.prompts import fold

WORDS = tuple(
    [
        "castle",
        "forest",
        "dragon",
        "portrait",
        "neon",
        "city",
        "river",
        "mountain",
        "sunset",
        "robot",
        "cat",
        "fox",
        "ocean",
        "lighthouse",
        "garden",
        "desert",
        "storm",
        "winter",
        "temple",
        "market",
        "train",
        "bridge",
        "moon",
        "island",
        "knight",
        "watercolor",
        "oil",
        "painting",
        "cinematic",
        "anime",
        "pixel",
        "sketch",
        "photo",
        "detailed",
        "soft",
        "light",
    ]
)
QUERIES = ("castle", "lighthouse storm", "watercol", "neon city night")
USER = 7
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def fill(path: Path, jobs: int) -> None:
    rng = random.Random(1)
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT OR IGNORE INTO users (id, created_at) VALUES (?, '2026-01-01')", (USER,)
        )
        rows = []
        for n in range(jobs):
            prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14)))
            request = json.dumps({"prompt": prompt, "model": "tiny"})
            stamp = to_db(START + dt.timedelta(seconds=n))
            rows.append((f"job{n:09d}", USER, "txt2img", request, prompt, "done", stamp))
        conn.executemany(
            "INSERT INTO jobs (id, user_id, kind, request, prompt, image_count, status, "
            "attempts, created_at) VALUES (?, ?, ?, ?, ?, 1, ?, 1, ?)",
            rows,
        )
        conn.execute("INSERT INTO jobs_fts(jobs_fts) VALUES ('rebuild')")


async def run(args: argparse.Namespace) -> None:
    report = Report(f"History search over {args.jobs:,} jobs", describe_machine())
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "search.sqlite3"
        async with Database.open(path):
            pass  # the schema
        fill(path, args.jobs)
        scan = sqlite3.connect(path)
        scan.create_function("dc_fold", 1, fold, deterministic=True)
        rows = []
        async with Database.open(path) as db:
            for query in QUERIES:
                indexed, scanned = [], []
                for _ in range(args.rounds):
                    started = time.perf_counter()
                    page = await db.jobs.history(USER, text=query, limit=20)
                    indexed.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    scan.execute(
                        "SELECT count(*) FROM jobs WHERE user_id = ? AND"
                        " instr(dc_fold(prompt), ?) > 0",
                        (USER, fold(query)),
                    ).fetchone()
                    scanned.append(time.perf_counter() - started)
                fast, slow = summarize(indexed), summarize(scanned)
                rows.append(
                    [
                        f"`{query}`",
                        f"{page.total:,}",
                        ms(fast.median),
                        ms(sorted(indexed)[int(len(indexed) * 0.95) - 1]),
                        ms(slow.median),
                        f"{slow.median / fast.median:.1f}x",
                    ]
                )
        scan.close()
    report.table(
        ["query", "matches", "indexed median ms", "p95 ms", "substring scan ms", "speed-up"],
        rows,
    )
    worst = max(float(row[2]) for row in rows)
    verdict = "met" if worst < 50 else "MISSED"
    report.text(f"Slowest median: **{worst:.1f} ms** (target under 50 ms: {verdict}).")
    report.record(record_path(args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=30)
    add_record_args(parser)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
