"""/forget: everything of one user's goes, from every table and the image store; nobody
else's data does, and the daily count stays (forgetting is no way round a quota)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from storage_helpers import (
    both_backends,  # noqa: F401  (the fixture "backend": SQLite, PostgreSQL)
    job_spec,
    make_png,
)

from core.storage import Database, GeneratedImage, InvalidInput, LocalImageStore, QuotaPolicy

pytestmark = pytest.mark.asyncio
FREE = QuotaPolicy.unlimited()
ME, OTHER = 11, 22


async def finished_job(db: Database, user_id: int, seed: int, **fields: object) -> str:
    job = await db.create_job(job_spec(user_id=user_id, **fields), FREE, remember_prompt=True)
    await db.jobs.mark_running(job.id)
    await db.complete_job(job.id, [GeneratedImage(0, seed, make_png(seed))])
    return job.id


async def rows_mentioning(db: Database, user_id: int) -> dict[str, int]:
    async with db._ctx.read() as tx:  # whichever database: through its own connection
        return {
            table: await tx.scalar(f"SELECT count(*) FROM {table} WHERE {column} = ?", (user_id,))
            for table, column in (
                ("jobs", "user_id"),
                ("favourites", "user_id"),
                ("prompt_history", "user_id"),
                ("api_keys", "user_id"),
                ("idempotency_keys", "user_id"),
                ("users", "id"),
            )
        }


async def test_forget_removes_everything_of_one_user_and_nothing_else(
    db: Database, db_path: Path, store: LocalImageStore, backend: str
) -> None:
    mine = await finished_job(db, ME, 1, prompt="my secret castle")
    private = await finished_job(db, ME, 2, prompt="my private dm", guild_id=None, private=True)
    theirs = await finished_job(db, OTHER, 3, prompt="their forest")
    # Someone upscaled my public image; I favourited theirs, they favourited mine.
    child = await finished_job(db, OTHER, 4, parent_job_id=mine, parent_image_index=0)
    my_image = (await db.images.for_job(mine))[0]
    their_image = (await db.images.for_job(theirs))[0]
    await db.favourites.add(ME, [their_image.id])
    await db.favourites.add(OTHER, [my_image.id])
    await db.api_keys.create("mine", user_id=ME)
    await db.idempotency.claim(ME, "retry-1", "hash")
    files_before = {item.key async for item in store.scan()}
    used_before = (await db.quotas.usage(100, ME)).used

    report = await db.forget_user(ME)

    assert (report.jobs, report.images, report.favourites, report.api_keys) == (2, 2, 1, 1)
    assert report.prompts == 2 and report.files_deleted >= 2
    assert set((await rows_mentioning(db, ME)).values()) == {0}
    files_after = {item.key async for item in store.scan()}
    assert my_image.file_key not in files_after and their_image.file_key in files_after
    assert len(files_before - files_after) == report.files_deleted
    assert await db.jobs.find(private) is None
    kept_child = await db.jobs.get(child)
    assert kept_child.parent_job_id is None  # theirs stays, without the link to mine
    assert (await db.favourites.list(OTHER)).total == 0  # my image is gone from their stars
    assert (await db.jobs.history(OTHER)).total == 2
    assert (await db.quotas.usage(100, ME)).used == used_before  # still counted today
    assert await db.integrity_check() == []
    if backend == "sqlite":  # the search index lost my prompts with my jobs
        with sqlite3.connect(db_path) as conn:  # (PostgreSQL's is an index on the table)
            conn.execute("INSERT INTO jobs_fts(jobs_fts) VALUES ('integrity-check')")
    assert (await db.jobs.history(OTHER, text="forest")).total == 1
    assert (await db.jobs.history(ME, text="castle")).total == 0


async def test_forget_waits_for_unfinished_jobs(db: Database) -> None:
    await db.create_job(job_spec(user_id=ME), FREE)
    with pytest.raises(InvalidInput, match="unfinished"):
        await db.forget_user(ME)
    assert (await db.jobs.history(ME)).total == 1


async def test_a_forgotten_prompt_is_not_found_through_a_reused_row(db: Database) -> None:
    await finished_job(db, ME, 5, prompt="my secret castle")
    await db.forget_user(ME)
    # SQLite gives the next row the freed number: the index must not still hold my words.
    await finished_job(db, OTHER, 6, prompt="a plain field")
    assert (await db.jobs.history(OTHER, text="castle")).total == 0
    assert (await db.jobs.history(OTHER, text="plain")).total == 1
