"""History search over 100,000 jobs (issue 16): ``JobRepository.history(text=...)`` on the
full-text index, for one user who owns every job (the worst case), against a plain substring
scan of the same rows (what the search did before the index). Then the library pages
(``LibraryRepository.page``) Discord and the API show: history with filters, and a server's
gallery of the same 100,000 public results, newest and most favourited.

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
from core.storage.records import LibraryQuery, LibraryScope, LibrarySort

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
GUILD = 1
START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def fill(path: Path, jobs: int) -> None:
    rng = random.Random(1)
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT OR IGNORE INTO users (id, created_at) VALUES (?, '2026-01-01')", (USER,)
        )
        conn.execute(
            "INSERT OR IGNORE INTO guilds (id, created_at, updated_at) VALUES (?, ?, ?)",
            (GUILD, "2026-01-01", "2026-01-01"),
        )
        rows, images, stars = [], [], []
        for n in range(jobs):
            prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14)))
            request = json.dumps({"prompt": prompt, "model": "tiny"})
            stamp = to_db(START + dt.timedelta(seconds=n))
            job_id = f"job{n:09d}"
            rows.append((job_id, USER, GUILD, "txt2img", request, prompt, "done", stamp))
            images.append((n + 1, job_id, n, f"key{n}", stamp))
            if rng.random() < 0.02:  # one result in fifty starred, by up to five people
                stars += [(user, n + 1, stamp) for user in range(100, 100 + rng.randint(1, 5))]
        conn.executemany(
            "INSERT INTO jobs (id, user_id, guild_id, kind, request, prompt, image_count, "
            "status, attempts, created_at) VALUES (?, ?, ?, ?, ?, ?, 1, ?, 1, ?)",
            rows,
        )
        conn.executemany(
            "INSERT INTO images (id, job_id, idx, seed, width, height, content_hash, file_key,"
            " size_bytes, created_at) VALUES (?, ?, 0, ?, 64, 64, 'x', ?, 1000, ?)",
            images,
        )
        conn.executemany(
            "INSERT OR IGNORE INTO users (id, created_at) VALUES (?, '2026-01-01')",
            [(user,) for user in range(100, 105)],
        )
        conn.executemany(
            "INSERT INTO favourites (user_id, image_id, created_at) VALUES (?, ?, ?)", stars
        )
        conn.execute("UPDATE jobs SET model = json_extract(request, '$.model')")
        conn.execute(  # as FavouriteRepository keeps it
            "UPDATE jobs SET favourite_count = (SELECT count(*) FROM favourites JOIN images"
            " ON images.id = favourites.image_id WHERE images.job_id = jobs.id)"
        )
        conn.execute("INSERT INTO jobs_fts(jobs_fts) VALUES ('rebuild')")


LIBRARY_PAGES = (
    (
        "history: `castle`, model, since, favourites first",
        LibraryScope.HISTORY,
        LibraryQuery(
            text="castle",
            model="tiny",
            since=START + dt.timedelta(hours=1),
            sort=LibrarySort.MOST_FAVOURITED,
        ),
    ),
    ("history: every job, newest", LibraryScope.HISTORY, LibraryQuery()),
    ("gallery: newest", LibraryScope.GALLERY, LibraryQuery()),
    (
        "gallery: `castle`, most favourited",
        LibraryScope.GALLERY,
        LibraryQuery(text="castle", sort=LibrarySort.MOST_FAVOURITED),
    ),
    (
        "gallery: every result, most favourited",
        LibraryScope.GALLERY,
        LibraryQuery(sort=LibrarySort.MOST_FAVOURITED),
    ),
    ("favourites of one user", LibraryScope.FAVOURITES, LibraryQuery()),
)


async def time_library(db: Database, rounds: int) -> list[list[str]]:
    rows = []
    for name, scope, query in LIBRARY_PAGES:
        viewer = 100 if scope is LibraryScope.FAVOURITES else USER
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            page = await db.library.page(scope, viewer, query, guild_id=GUILD, limit=10)
            times.append(time.perf_counter() - started)
        rows.append(
            [
                name,
                f"{page.total:,}",
                ms(summarize(times).median),
                ms(sorted(times)[int(len(times) * 0.95) - 1]),
            ]
        )
    return rows


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
            library_rows = await time_library(db, args.rounds)
        scan.close()
    report.table(
        ["query", "matches", "indexed median ms", "p95 ms", "substring scan ms", "speed-up"],
        rows,
    )
    worst = max(float(row[2]) for row in rows)
    verdict = "met" if worst < 50 else "MISSED"
    report.text(f"Slowest median: **{worst:.1f} ms** (target under 50 ms: {verdict}).")
    report.table(["library page (10 entries)", "matches", "median ms", "p95 ms"], library_rows)
    slowest = max(float(row[2]) for row in library_rows)
    report.text(f"Slowest library page median: **{slowest:.1f} ms**.")
    report.record(record_path(args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=30)
    add_record_args(parser)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
