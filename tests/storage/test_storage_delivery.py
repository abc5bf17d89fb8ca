"""Delivery state: a finished job whose outcome was never shown is found again at start-up,
and a job whose images were stored is never generated again."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from storage_helpers import (
    both_backends,  # noqa: F401  (the fixture "backend": SQLite, PostgreSQL)
    job_spec,
    make_png,
)

from core.storage import (
    Database,
    GeneratedImage,
    JobStatus,
    LocalImageStore,
    ManualClock,
    migrate,
)
from core.storage.migrations import MIGRATIONS
from core.storage.records import QuotaPolicy

FREE = QuotaPolicy.unlimited()
pytestmark = pytest.mark.asyncio


async def test_a_finished_job_is_undelivered_until_marked(db: Database) -> None:
    job = await db.create_job(job_spec(), FREE)
    await db.jobs.mark_running(job.id)
    done = await db.complete_job(job.id, [GeneratedImage(0, 1, make_png(1))])
    assert done.job.status is JobStatus.DONE and done.job.delivered_at is None

    outcome = await db.jobs.resume_unfinished()
    assert [j.id for j in outcome.undelivered] == [job.id]
    assert outcome.resumed == () and outcome.abandoned == ()

    delivered = await db.jobs.mark_delivered(job.id)
    assert delivered.delivered_at is not None
    assert (await db.jobs.resume_unfinished()).undelivered == ()


async def test_a_running_job_with_stored_images_is_done_not_requeued(db: Database) -> None:
    """What an older version left behind: images recorded, the job still 'running'."""
    job = await db.create_job(job_spec(), FREE)
    await db.jobs.mark_running(job.id)
    new = await db.images.store(make_png(7), index=0, seed=7)
    await db.images.add(job.id, [new])

    outcome = await db.jobs.resume_unfinished()
    assert outcome.resumed == ()
    [shown] = outcome.undelivered
    assert shown.id == job.id and shown.status is JobStatus.DONE and shown.attempts == 1
    assert (await db.quotas.usage(100, 1)).used == 1  # done: the images stay spent


async def test_failed_and_cancelled_jobs_are_shown_again_but_abandoned_ones_once(
    db: Database,
) -> None:
    failed = await db.create_job(job_spec(), FREE)
    await db.jobs.mark_failed(failed.id, "out of memory")
    cancelled = await db.create_job(job_spec(), FREE)
    await db.jobs.mark_cancelled(cancelled.id)
    stuck = await db.create_job(job_spec(), FREE)

    outcome = await db.jobs.resume_unfinished(max_attempts=1)
    assert [j.id for j in outcome.abandoned] == [stuck.id]
    # The abandoned job is told by its own path; it is not listed twice.
    assert {j.id for j in outcome.undelivered} == {failed.id, cancelled.id}


async def test_old_undelivered_jobs_are_not_shown_again(db: Database, clock: ManualClock) -> None:
    job = await db.create_job(job_spec(), FREE)
    await db.jobs.mark_failed(job.id, "boom")
    clock.advance(days=2)
    assert (await db.jobs.resume_unfinished()).undelivered == ()
    assert (await db.jobs.get(job.id)).delivered_at is not None


async def test_migration_marks_jobs_finished_before_it_as_delivered(
    tmp_path: Path, store: LocalImageStore, clock: ManualClock
) -> None:
    path = tmp_path / "old.sqlite3"
    # The schema before the delivery column, with a job of each kind, as an older release left it.
    version = next(m.version for m in MIGRATIONS if "delivered_at" in " ".join(m.statements))
    await migrate(path, target=version - 1)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO users (id, created_at) VALUES (1, '2025-01-01T00:00:00Z')")
        for job_id, status, finished_at in (
            ("finished0001", "failed", "'2025-01-01T00:01:00Z'"),
            ("queued000001", "queued", "NULL"),
        ):
            conn.execute(
                "INSERT INTO jobs (id, user_id, kind, request, prompt, image_count, status, "
                f"created_at, finished_at) VALUES ('{job_id}', 1, 'txt2img', '{{}}', 'p', 1, "
                f"'{status}', '2025-01-01T00:00:00Z', {finished_at})"
            )
    async with Database.open(path, images=store, clock=clock) as db:
        assert (await db.jobs.get("finished0001")).delivered_at is not None
        assert (await db.jobs.get("queued000001")).delivered_at is None
