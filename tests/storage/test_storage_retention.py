"""Retention: old images go, favourites stay, freed bytes are reported; crash leftovers."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

import pytest
import pytest_asyncio
from storage_helpers import (
    both_backends,  # noqa: F401  (the fixture "backend": SQLite, PostgreSQL)
    job_spec,
    make_png,
)

from core.storage import (
    Database,
    GeneratedImage,
    ImageNotFound,
    ImageStore,
    LocalImageStore,
    ManualClock,
    QuotaPolicy,
)

FREE = QuotaPolicy.unlimited()


@pytest.fixture
def real_clock() -> ManualClock:
    # File modification times are real, so retention tests start from the real time.
    return ManualClock(dt.datetime.now(dt.UTC))


@pytest.fixture
def store(any_store: ImageStore) -> ImageStore:
    """Retention runs the same on local files and in an S3 bucket (this module's tests run
    once with each): it lists the store, reads modification times and deletes."""
    return any_store


@pytest_asyncio.fixture
async def rdb(
    db_location: Path | str, store: ImageStore, real_clock: ManualClock
) -> AsyncIterator[Database]:
    async with Database.open(db_location, images=store, clock=real_clock) as database:
        yield database


async def make_job(db: Database, *pngs: bytes, user_id: int = 1) -> list[int]:
    job = await db.create_job(job_spec(user_id=user_id, image_count=len(pngs)), FREE)
    done = await db.complete_job(
        job.id, [GeneratedImage(i, i, data) for i, data in enumerate(pngs)]
    )
    return [image.id for image in done.images]


async def file_count(store: ImageStore) -> int:
    return len([item async for item in store.scan()])


@pytest.mark.asyncio
async def test_retention_keeps_favourites_and_reports_bytes(
    rdb: Database, store: ImageStore, real_clock: ManualClock
) -> None:
    shared, lonely = make_png(1, (96, 96)), make_png(2, (96, 96))
    favourite_id, lonely_id = await make_job(rdb, shared, lonely)
    [copy_id] = await make_job(rdb, shared, user_id=2)  # same bytes: shares the files
    await rdb.favourites.toggle(5, favourite_id)
    real_clock.advance(days=35)
    [recent_id] = await make_job(rdb, make_png(3))
    real_clock.advance(days=5)
    assert await file_count(store) == 6  # 3 distinct images, 3 thumbnails

    lonely_image = await rdb.images.get(lonely_id)
    lonely_thumb = await store.stat(lonely_image.thumbnail_key or "")
    assert lonely_thumb is not None
    report = await rdb.cleanup(older_than_days=30)

    assert report.images_deleted == 2  # lonely and the unfavourited copy
    assert report.files_deleted == 2  # lonely's file and thumbnail; the shared ones stay
    assert report.bytes_freed == lonely_image.size_bytes + lonely_thumb.size
    assert report.orphan_files_deleted == 0 and report.files_kept_recent == 0
    assert await rdb.images.find(lonely_id) is None
    assert await rdb.images.find(copy_id) is None
    favourite = await rdb.images.get(favourite_id)
    assert await store.get(favourite.file_key) == shared
    assert await store.exists(favourite.thumbnail_key or "")
    assert not await store.exists(lonely_image.file_key)
    assert await rdb.images.find(recent_id) is not None
    page = await rdb.favourites.list(5)
    assert [item.image.id for item in page.items] == [favourite_id]
    # Job records stay; their history entries lose the deleted images.
    history = await rdb.jobs.history(1)
    assert history.total == 2
    assert await file_count(store) == 4

    again = await rdb.cleanup(older_than_days=30)
    assert (again.images_deleted, again.files_deleted, again.bytes_freed) == (0, 0, 0)


@pytest.mark.asyncio
async def test_recent_files_are_kept_and_orphans_swept_later(
    rdb: Database, store: ImageStore, real_clock: ManualClock
) -> None:
    real_clock.advance(days=-40)  # records written "40 days ago", files written now
    await make_job(rdb, make_png(10))
    real_clock.advance(days=40)
    orphan = await store.put(make_png(11))  # a file no record points at (crash leftover)

    report = await rdb.cleanup(older_than_days=30)
    assert report.images_deleted == 1
    assert report.files_deleted == 0 and report.files_kept_recent == 2  # within the grace
    assert await store.exists(orphan)

    real_clock.advance(hours=2)
    report = await rdb.cleanup(older_than_days=30)
    assert report.images_deleted == 0
    assert report.orphan_files_deleted == 3 and report.files_deleted == 3
    assert report.bytes_freed > 0
    assert await file_count(store) == 0


@pytest.mark.asyncio
async def test_sweeping_orphans_never_touches_recorded_files(
    rdb: Database, store: ImageStore, real_clock: ManualClock
) -> None:
    await make_job(rdb, make_png(12))
    real_clock.advance(days=3)
    report = await rdb.cleanup(older_than_days=30)
    assert report.files_deleted == 0
    assert await file_count(store) == 2


@pytest.mark.asyncio
async def test_cleanup_forgets_expired_tokens_of_finished_jobs(
    rdb: Database, real_clock: ManualClock
) -> None:
    expires = real_clock.now + dt.timedelta(minutes=15)
    finished = await rdb.create_job(
        job_spec(interaction_token="secret", token_expires_at=expires), FREE
    )
    await rdb.jobs.mark_done(finished.id)
    waiting = await rdb.create_job(
        job_spec(interaction_token="still-needed", token_expires_at=expires), FREE
    )
    real_clock.advance(hours=1)
    report = await rdb.cleanup(older_than_days=30)
    assert report.tokens_cleared == 1
    assert (await rdb.jobs.get(finished.id)).interaction_token is None
    assert (await rdb.jobs.get(waiting.id)).interaction_token == "still-needed"


@pytest.mark.asyncio
async def test_complete_job_rewrites_a_file_deleted_before_the_commit(
    db_location: Path | str, tmp_path: Path, real_clock: ManualClock
) -> None:
    class RacyStore(LocalImageStore):
        """Loses each file once, right before the commit checks it (as a concurrent
        retention run could)."""

        lost: ClassVar[set[str]] = set()

        async def exists(self, key: str) -> bool:
            if key not in self.lost:
                self.lost.add(key)
                os.unlink(self.path_for(key))
            return await super().exists(key)

    racy = RacyStore(tmp_path / "racy")
    async with Database.open(db_location, images=racy, clock=real_clock) as db:
        [image_id] = await make_job(db, make_png(13))
        image = await db.images.get(image_id)
        assert await racy.get(image.file_key) == make_png(13)
        assert await LocalImageStore(racy.root).exists(image.thumbnail_key or "")


@pytest.mark.asyncio
async def test_favouriting_a_deleted_image_is_refused(
    rdb: Database, real_clock: ManualClock
) -> None:
    [image_id] = await make_job(rdb, make_png(14))
    real_clock.advance(days=31)
    await rdb.cleanup(older_than_days=30)
    with pytest.raises(ImageNotFound):
        await rdb.favourites.toggle(1, image_id)


@pytest.mark.asyncio
async def test_negative_age_is_refused(rdb: Database) -> None:
    with pytest.raises(ValueError):
        await rdb.cleanup(older_than_days=-1)
