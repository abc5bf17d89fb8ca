"""Transactions: cancellation and lock contention never leave half a write behind."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import pytest
from storage_helpers import (
    START,
    both_backends,  # noqa: F401  (the fixture "backend": SQLite, PostgreSQL)
    job_spec,
)

from core.storage import Database, DatabaseBusy, ManualClock, QuotaPolicy

FREE = QuotaPolicy.unlimited()


async def spends_and_jobs(db: Database) -> tuple[int, int]:
    async with db._ctx.read(snapshot=True) as tx:
        jobs = await tx.scalar("SELECT count(*) FROM jobs")
        spends = await tx.scalar("SELECT count(*) FROM usage_ledger WHERE entry = 'spend'")
    return jobs, spends


@pytest.mark.asyncio
async def test_cancelled_writes_are_all_or_nothing(db: Database, backend: str) -> None:
    # Cancel after more and more loop iterations: before the transaction, inside it, during
    # the commit. Each job is committed together with its quota spend, or not at all.
    for iterations in range(0, 120, 3):
        task = asyncio.create_task(db.create_job(job_spec(image_count=2), FREE))
        for _ in range(iterations):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    job = await db.create_job(job_spec(), FREE)  # the lock was released, no open transaction
    if backend == "sqlite":
        assert db._ctx.writer is not None and not db._ctx.writer.in_transaction
    else:  # every pooled connection went back without a transaction left open
        async with db._ctx.server.pool.acquire() as conn:  # type: ignore[union-attr]
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND state LIKE 'idle in transaction%'"
                )
                == 0
            )
    jobs, spends = await spends_and_jobs(db)
    assert jobs == spends >= 1
    assert (await db.quotas.usage(100, 1)).used == 2 * (jobs - 1) + 1
    assert (await db.jobs.get(job.id)).status == "queued"


@pytest.mark.asyncio
async def test_a_held_write_lock_gives_database_busy(db_path: Path) -> None:
    clock = ManualClock(START)
    async with Database.open(db_path, clock=clock, busy_timeout=0.2) as db:
        other = sqlite3.connect(db_path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(DatabaseBusy):
                await db.create_job(job_spec(), FREE)
            # Reads are not blocked by a writer (WAL).
            assert await db.jobs.unfinished() == []
            other.execute("ROLLBACK")
        finally:
            other.close()
        job = await db.create_job(job_spec(), FREE)
        assert await db.jobs.get(job.id) == job


@pytest.mark.asyncio
async def test_close_is_idempotent_and_waits_for_writes(db_path: Path) -> None:
    db = await Database.open(db_path, clock=ManualClock(START))
    pending = asyncio.create_task(db.create_job(job_spec(), FREE))
    await asyncio.sleep(0)
    await db.close()
    await db.close()
    job = await pending
    async with Database.open(db_path) as again:
        assert await again.jobs.find(job.id) is not None
