"""Success metrics (issue 22): the kept daily figures add up to a recount from the raw jobs,
a finished day is counted once and kept, and votes and stars recount the days they touch."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

import pytest
from storage_helpers import (
    USAGE_DAYS,
    USAGE_GUILDS,
    USAGE_START,
    both_backends,  # noqa: F401  (the fixture "backend": SQLite, PostgreSQL)
    fill_usage,
    job_spec,
    make_png,
)

from core.storage import Database, GeneratedImage, ManualClock, QuotaPolicy, migrate
from core.storage.migrations import V11_USAGE_FACTS
from core.storage.usage import ALL_SERVERS, BUCKET_EDGES, bucket_of, percentile_of, server_key

pytestmark = pytest.mark.asyncio
START, DAYS, GUILDS = USAGE_START, USAGE_DAYS, USAGE_GUILDS


def recount(path: Path, guild: object = ALL_SERVERS) -> dict[str, object]:
    """The same figures counted straight from the raw rows, independently of the code."""
    where = "" if guild is ALL_SERVERS else "WHERE guild_id IS ?"
    params: tuple[object, ...] = () if guild is ALL_SERVERS else (guild,)
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        row = conn.execute(
            f"""SELECT count(*) AS jobs, sum(status = 'done') AS done,
                       sum(status = 'failed') AS failed, sum(status = 'cancelled') AS cancelled,
                       sum(CASE WHEN status = 'done' THEN image_count ELSE 0 END) AS images,
                       count(DISTINCT user_id) AS users,
                       sum(status = 'done' AND favourite_count > 0) AS favourited,
                       sum(parent_job_id IS NOT NULL) AS from_buttons
                FROM jobs {where}""",
            params,
        ).fetchone()
        waits = [
            json.loads(t)["queued_s"]
            for (t,) in conn.execute(
                f"SELECT timings FROM jobs {where} {'AND' if where else 'WHERE'} status = 'done'",
                params,
            )
        ]
        votes = conn.execute(
            "SELECT sum(value = 1), sum(value = -1) FROM feedback JOIN jobs"
            f" ON jobs.id = feedback.job_id {where.replace('guild_id', 'jobs.guild_id')}",
            params,
        ).fetchone()
    return {**dict(row), "waits": sorted(waits), "up": votes[0] or 0, "down": votes[1] or 0}


async def test_kept_daily_figures_equal_a_recount_from_the_raw_jobs(tmp_path: Path) -> None:
    path = tmp_path / "usage.sqlite3"
    clock = ManualClock(START + dt.timedelta(days=DAYS + 1, hours=2))
    async with Database.open(path, clock=clock):
        pass
    fill_usage(path, 20_000)
    first, last = START.date(), (START + dt.timedelta(days=DAYS - 1)).date()
    async with Database.open(path, clock=clock) as db:
        for guild in (ALL_SERVERS, None, 100):
            key = ALL_SERVERS if guild is ALL_SERVERS else server_key(guild)  # type: ignore[arg-type]
            stats = await db.usage.period(first, last, key)
            raw = recount(path, guild)
            assert (stats.jobs, stats.done, stats.failed, stats.cancelled) == (
                raw["jobs"],
                raw["done"],
                raw["failed"],
                raw["cancelled"],
            )
            assert stats.images == raw["images"] and stats.active_users == raw["users"]
            assert stats.favourited == raw["favourited"]
            assert sum(stats.from_buttons.values()) == raw["from_buttons"]
            assert (stats.thumbs_up, stats.thumbs_down) == (raw["up"], raw["down"])
            waits = raw["waits"]
            assert isinstance(waits, list)
            exact = waits[max(0, -(-95 * len(waits) // 100) - 1)]
            assert percentile_of(stats.wait, 0.95) == BUCKET_EDGES[bucket_of(exact)]
            assert stats.failure_reasons == {"CUDA out of memory": raw["failed"]}
        async with db._ctx.read() as tx:
            kept = await tx.scalar("SELECT count(*) FROM daily_stats")
        assert kept == DAYS * (len(GUILDS) + 1)  # every finished day kept, per server and all
        # Kept days are read, not recounted: change the raw jobs behind the code's back.
        counted = await db.usage.period(first, last)
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE jobs SET status = 'failed' WHERE status = 'done'")
        again = await db.usage.period(first, last)
        assert (again.done, again.failed) == (counted.done, counted.failed)


async def test_a_vote_or_a_star_recounts_its_day(db: Database, clock: ManualClock) -> None:
    job = await db.create_job(job_spec(prompt="rated"), QuotaPolicy.unlimited())
    done = await db.complete_job(job.id, [GeneratedImage(0, 1, make_png(1))])
    day = clock.now.date()
    clock.advance(days=2)
    before = await db.usage.period(day, day)
    assert (before.thumbs_up, before.favourited) == (0, 0)
    assert await db.usage.vote(7, job.id, 1) == 1
    await db.favourites.add(7, [done.images[0].id])
    after = await db.usage.period(day, day)
    assert (after.thumbs_up, after.favourited) == (1, 1)
    assert await db.usage.vote(7, job.id, 1) == 0  # the same vote again takes it back
    assert (await db.usage.period(day, day)).thumbs_up == 0


async def test_a_jobs_settings_and_times_are_counted_as_it_is_written(db: Database) -> None:
    """The columns the counts read are written with the job (no JSON read when counting)."""
    request = {
        "prompt": "a cat",
        "negative_prompt": "blurry",
        "aspect": "16:9",
        "explicit": ["seed", "scheduler"],
        "init_image_key": "ab/cd.png",
    }
    plain = await db.create_job(job_spec(prompt="plain"), QuotaPolicy.unlimited())
    tuned = await db.create_job(
        job_spec(prompt="tuned", request=json.dumps(request)), QuotaPolicy.unlimited()
    )
    other = await db.create_job(  # never done: counted from what it was created with
        job_spec(prompt="other", request=json.dumps({"prompt": "x", "explicit": ["steps"]})),
        QuotaPolicy.unlimited(),
    )
    await db.complete_job(
        tuned.id,
        [GeneratedImage(0, 1, make_png(1))],
        timings={"queued_s": 2.0, "total_s": 7.5},
        generation_seconds=5.0,
    )
    await db.jobs.mark_failed(plain.id, "")
    await db.jobs.mark_cancelled(other.id)
    today = db._ctx.now().date()
    stats = await db.usage.period(today, today)
    assert stats.advanced == {
        "negative_prompt": 1,
        "size": 1,
        "seed": 1,
        "scheduler": 1,
        "image": 1,
        "steps": 1,
    }
    assert stats.wait == {bucket_of(2.0): 1} and stats.total == {bucket_of(7.5): 1}
    assert stats.generation == {bucket_of(5.0): 1}
    assert stats.failure_reasons == {"unknown error": 1}
    assert (stats.jobs, stats.done, stats.failed, stats.cancelled) == (3, 1, 1, 1)


async def test_the_migration_fills_the_columns_of_jobs_and_votes_made_before_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.sqlite3"
    await migrate(path, target=V11_USAGE_FACTS.version - 1)
    request = {"prompt": "p", "model": "tiny", "explicit": ["guidance"], "negative_prompt": "x"}
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO users (id, created_at) VALUES (1, '2026-01-01T00:00:00Z')")
        conn.execute(
            "INSERT INTO jobs (id, user_id, kind, request, prompt, image_count, status, timings,"
            " generation_seconds, created_at, model) VALUES ('old000000001', 1, 'txt2img', ?, 'p',"
            " 1, 'done', ?, 3.0, '2026-01-05T10:00:00Z', 'tiny')",
            (json.dumps(request), json.dumps({"queued_s": 1.0, "total_s": 4.0})),
        )
        conn.execute(
            "INSERT INTO feedback (user_id, job_id, value, created_at)"
            " VALUES (1, 'old000000001', -1, '2026-01-05T11:00:00Z')"
        )
    clock = ManualClock(dt.datetime(2026, 1, 10, tzinfo=dt.UTC))
    async with Database.open(path, clock=clock) as db:
        day = dt.date(2026, 1, 5)
        stats = await db.usage.period(day, day)
    assert stats.advanced == {"guidance": 1, "negative_prompt": 1}
    assert (stats.wait, stats.total) == ({bucket_of(1.0): 1}, {bucket_of(4.0): 1})
    assert stats.generation == {bucket_of(3.0): 1}
    assert stats.thumbs_down == 1 and stats.feedback_by_model == {"tiny": [0, 1]}
