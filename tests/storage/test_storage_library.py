"""The library: pages of history, favourites and a server's gallery, filtered and sorted;
saved views; sharing and moderators' removals; per-server image retention."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from storage_helpers import (
    both_backends,  # noqa: F401  (the fixture "backend": SQLite, PostgreSQL)
    job_spec,
    make_png,
)

from core.storage import (
    Database,
    GeneratedImage,
    InvalidInput,
    JobStatus,
    ManualClock,
    QuotaPolicy,
)
from core.storage.records import LibraryQuery, LibraryScope, LibrarySort

pytestmark = pytest.mark.asyncio
FREE = QuotaPolicy.unlimited()
ME, OTHER, SERVER, ELSEWHERE = 1, 2, 100, 300


async def finished(
    db: Database,
    prompt: str,
    *,
    user_id: int = ME,
    guild_id: int | None = SERVER,
    private: bool = False,
    kind: str = "txt2img",
    model: str = "tiny",
    images: int = 1,
) -> list[int]:
    request = json.dumps({"prompt": prompt, "model": model, "count": images})
    job = await db.create_job(
        job_spec(
            user_id=user_id,
            guild_id=guild_id,
            prompt=prompt,
            request=request,
            private=private,
            kind=kind,
            image_count=images,
        ),
        FREE,
    )
    done = await db.complete_job(
        job.id,
        [GeneratedImage(i, i, make_png(hash((prompt, i)) % 1000)) for i in range(images)],
    )
    return [image.id for image in done.images]


async def prompts(db: Database, scope: LibraryScope, **options: object) -> list[str]:
    query = options.pop("query", None)
    page = await db.library.page(scope, ME, query, **options)  # type: ignore[arg-type]
    return [entry.job.prompt for entry in page.items]


async def test_filters_narrow_history_and_sorts_order_it(db: Database, clock: ManualClock) -> None:
    start = clock.now
    await finished(db, "red fox in snow", model="tiny")
    clock.advance(days=2)
    await finished(db, "red castle", model="sdxl", kind="upscale")
    clock.advance(days=2)
    failed = await db.create_job(job_spec(prompt="red failure", guild_id=None), FREE)
    await db.jobs.mark_failed(failed.id, "boom")
    await finished(db, "someone else's red fox", user_id=OTHER)

    history = LibraryScope.HISTORY
    assert await prompts(db, history) == ["red failure", "red castle", "red fox in snow"]
    assert await prompts(db, history, query=LibraryQuery(text="red f")) == [
        "red failure",
        "red fox in snow",
    ]
    assert await prompts(db, history, query=LibraryQuery(model="sdxl")) == ["red castle"]
    assert await prompts(db, history, query=LibraryQuery(operation="upscale")) == ["red castle"]
    assert await prompts(db, history, query=LibraryQuery(status=JobStatus.FAILED)) == [
        "red failure"
    ]
    window = LibraryQuery(since=start + dt.timedelta(days=1), until=start + dt.timedelta(days=3))
    assert await prompts(db, history, query=window) == ["red castle"]
    assert await prompts(db, history, query=LibraryQuery(sort=LibrarySort.OLDEST)) == [
        "red fox in snow",
        "red castle",
        "red failure",
    ]
    with pytest.raises(InvalidInput):
        LibraryQuery(since=start, until=start)


async def test_favourites_list_only_the_viewers_starred_images_newest_star_first(
    db: Database, clock: ManualClock
) -> None:
    first, second = await finished(db, "twin moons", images=2)
    [theirs] = await finished(db, "their public lake", user_id=OTHER)
    await finished(db, "never starred")
    await db.favourites.toggle(ME, second)
    clock.advance(minutes=1)
    await db.favourites.toggle(ME, theirs)
    await db.favourites.toggle(OTHER, first)  # someone else's star is not mine

    page = await db.library.page(LibraryScope.FAVOURITES, ME)
    assert [entry.job.prompt for entry in page.items] == ["their public lake", "twin moons"]
    assert [image.id for image in page.items[1].images] == [second]  # not the unstarred one
    assert page.items[1].favourite_count == 2  # both stars on the job, whoever gave them
    starred_history = LibraryQuery(favourites_only=True)
    assert await prompts(db, LibraryScope.HISTORY, query=starred_history) == ["twin moons"]


async def test_gallery_is_one_servers_public_results_and_moderators_can_remove(
    db: Database, clock: ManualClock
) -> None:
    await finished(db, "public one")
    clock.advance(minutes=1)
    [popular] = await finished(db, "public popular", user_id=OTHER)
    await finished(db, "private one", private=True)
    await finished(db, "in a dm", guild_id=None)
    await finished(db, "other server", guild_id=ELSEWHERE)
    queued = await db.create_job(job_spec(prompt="still queued"), FREE)
    await db.favourites.toggle(ME, popular)
    await db.favourites.toggle(OTHER, popular)

    gallery = LibraryScope.GALLERY
    assert await prompts(db, gallery, guild_id=SERVER) == ["public popular", "public one"]
    by_stars = LibraryQuery(sort=LibrarySort.MOST_FAVOURITED)
    clock.advance(minutes=1)
    await finished(db, "newest public")
    assert (await prompts(db, gallery, guild_id=SERVER, query=by_stars))[0] == "public popular"
    assert await prompts(db, gallery, guild_id=ELSEWHERE) == ["other server"]
    with pytest.raises(InvalidInput):
        await db.library.page(gallery, ME)  # a gallery belongs to a server

    entry = (await db.library.page(gallery, ME, guild_id=SERVER)).items[1]
    assert await db.library.remove_from_gallery(entry.job.id, moderator_id=OTHER)
    assert not await db.library.remove_from_gallery(entry.job.id, moderator_id=OTHER)
    assert "public popular" not in await prompts(db, gallery, guild_id=SERVER)
    assert "public popular" in await prompts(db, LibraryScope.FAVOURITES)  # still my star
    assert queued.id not in [
        e.job.id for e in (await db.library.page(gallery, ME, guild_id=SERVER)).items
    ]


async def test_sharing_is_claimed_once_and_makes_a_private_result_public(db: Database) -> None:
    await finished(db, "my secret", private=True)
    job = (await db.library.page(LibraryScope.HISTORY, ME)).items[0].job
    assert job.private and job.shared_at is None

    assert await db.library.claim_share(job.id)
    assert not await db.library.claim_share(job.id)  # a double click posts once
    await db.library.release_share(job.id)  # posting failed: it can be tried again
    assert await db.library.claim_share(job.id)
    await db.library.record_share(job.id, channel_id=555, message_id=777)
    await db.library.release_share(job.id)  # too late to release: it is out
    shared = await db.jobs.get(job.id)
    assert not shared.private and shared.shared_at is not None
    assert (shared.share_channel_id, shared.share_message_id) == (555, 777)
    assert await prompts(db, LibraryScope.GALLERY, guild_id=SERVER) == ["my secret"]


async def test_saved_views_round_trip_and_expire(db: Database, clock: ManualClock) -> None:
    query = LibraryQuery(
        text="카페 fox",
        model="tiny",
        operation="txt2img",
        status=JobStatus.DONE,
        since=clock.now - dt.timedelta(days=7),
        until=clock.now,
        favourites_only=True,
        sort=LibrarySort.MOST_FAVOURITED,
    )
    saved = await db.library.save_view(LibraryScope.GALLERY, ME, SERVER, query)
    loaded = await db.library.view(saved.id)
    assert loaded == saved
    assert await db.library.view("nope") is None
    clock.advance(days=31)
    assert await db.library.view(saved.id) is None
    await db.cleanup(older_than_days=365, sweep_orphans=False)
    async with db._ctx.read() as tx:
        assert await tx.scalar("SELECT count(*) FROM library_views") == 0


async def test_cleanup_honours_each_servers_retention_and_keeps_favourites(
    db: Database, clock: ManualClock
) -> None:
    await db.guilds.update_settings(SERVER, retention_days=3)
    await db.guilds.update_settings(ELSEWHERE, retention_days=60)
    [short] = await finished(db, "short-lived", guild_id=SERVER)
    [starred] = await finished(db, "short-lived but starred", guild_id=SERVER)
    [long] = await finished(db, "long-lived", guild_id=ELSEWHERE)
    [default] = await finished(db, "dm default", guild_id=None)
    await db.favourites.toggle(ME, starred)
    clock.advance(days=10)

    report = await db.cleanup(older_than_days=7, sweep_orphans=False)

    assert report.images_deleted == 2
    assert await db.images.find(short) is None and await db.images.find(default) is None
    assert await db.images.find(starred) is not None and await db.images.find(long) is not None
    with pytest.raises(InvalidInput):
        await db.guilds.update_settings(SERVER, retention_days=0)
    settings = await db.guilds.update_settings(SERVER, retention_days=None)
    assert settings.retention_days is None


async def test_star_counts_follow_every_change_to_favourites(db: Database) -> None:
    first, second = await finished(db, "counted stars", images=2)

    async def stars() -> int:
        job = (await db.library.page(LibraryScope.HISTORY, ME)).items[0].job
        return job.favourite_count

    await db.favourites.toggle(ME, [first, second])
    await db.favourites.add(OTHER, [first])
    assert await stars() == 3
    await db.favourites.toggle(ME, [first, second])  # all mine were stars: all go
    assert await stars() == 1
    await db.favourites.add(ME, [second])
    await db.favourites.remove(OTHER, [first])
    assert await stars() == 1
    await db.forget_user(ME)  # my stars on others' images go too
    [theirs] = await finished(db, "their picture", user_id=OTHER)
    await db.favourites.add(ME, [theirs])
    await db.favourites.add(OTHER, [theirs])
    await db.forget_user(ME)
    page = await db.library.page(LibraryScope.HISTORY, OTHER)
    assert page.items[0].job.favourite_count == 1
