"""The shared result cache's records: a key answers with its newest finished, visible job and
the image check's scores, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import pytest
from storage_helpers import (
    both_backends,  # noqa: F401  (the fixture "backend": SQLite, PostgreSQL)
    job_spec,
    make_png,
)

from core.storage import Database, GeneratedImage
from core.storage.errors import InvalidInput
from core.storage.records import QuotaPolicy

pytestmark = pytest.mark.asyncio
KEY = "5e" * 32


async def finished_job(db: Database, seed: int) -> str:
    job = await db.create_job(
        job_spec(image_count=1), QuotaPolicy(daily_images=10, concurrent_jobs=5)
    )
    await db.jobs.mark_running(job.id)
    await db.complete_job(job.id, [GeneratedImage(0, seed, make_png(seed))])
    return job.id


async def test_a_key_answers_with_its_newest_visible_finished_job(db: Database) -> None:
    assert await db.result_cache.find(KEY) is None
    first = await finished_job(db, 1)
    await db.result_cache.remember(KEY, first, [0.25])
    found = await db.result_cache.find(KEY)
    assert found is not None and found.job_id == first and found.scores == (0.25,)

    second = await finished_job(db, 2)
    await db.result_cache.remember(KEY, second, [None])
    found = await db.result_cache.find(KEY)
    assert found is not None and found.job_id == second and found.scores == (None,)

    await db.library.hide(second)  # its owner deleted it: not handed out
    assert await db.result_cache.find(KEY) is None


async def test_an_unfinished_job_answers_nothing_and_keys_are_digests(db: Database) -> None:
    job = await db.create_job(
        job_spec(image_count=1), QuotaPolicy(daily_images=10, concurrent_jobs=5)
    )
    await db.result_cache.remember(KEY, job.id, [None])
    assert await db.result_cache.find(KEY) is None
    with pytest.raises(InvalidInput):
        await db.result_cache.remember("not a digest", job.id, [None])
