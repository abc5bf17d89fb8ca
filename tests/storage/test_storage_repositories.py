"""Guilds and banned words, users, favourites, prompt history."""

from __future__ import annotations

import asyncio
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
    GuildSettings,
    ImageNotFound,
    InvalidInput,
    ManualClock,
    QuotaPolicy,
)

FREE = QuotaPolicy.unlimited()


@pytest.mark.asyncio
async def test_guild_settings(db: Database, clock: ManualClock) -> None:
    assert await db.guilds.settings(100) == GuildSettings()
    assert await db.guilds.settings(None) == GuildSettings()
    assert await db.guilds.get(100) is None
    guild = await db.guilds.ensure(100)
    assert guild.settings == GuildSettings() and guild.created_at == clock.now
    clock.advance(minutes=1)
    settings = await db.guilds.update_settings(100, extra={"a": [1, 2]})
    assert settings.extra == {"a": [1, 2]}
    assert await db.guilds.update_settings(100) == settings  # nothing named, nothing changed
    guild = await db.guilds.get(100)
    assert guild is not None and guild.updated_at == clock.now and guild.created_at < clock.now


@pytest.mark.asyncio
async def test_banned_words(db: Database) -> None:
    assert await db.guilds.banned_words(100) == []
    assert await db.guilds.banned_words(None) == []
    words = ["  Gore ", "GORE", "blood   bath", "ß"]
    added = await db.guilds.add_banned_words(100, words, added_by=9)
    assert added == ["gore", "blood bath", "ss"]
    assert await db.guilds.add_banned_words(100, ["gore"]) == []
    assert await db.guilds.banned_words(100) == ["blood bath", "gore", "ss"]
    records = await db.guilds.banned_word_records(100)
    assert {r.added_by for r in records} == {9}
    assert await db.guilds.banned_words(200) == []  # per guild
    assert await db.guilds.remove_banned_words(100, ["GORE", "nothing"]) == ["gore"]
    assert await db.guilds.banned_words(100) == ["blood bath", "ss"]
    for bad in ("", "   ", "x" * 101):
        with pytest.raises(InvalidInput):
            await db.guilds.add_banned_words(100, [bad])
    assert await db.guilds.clear_banned_words(100) == 2
    assert await db.guilds.banned_words(100) == []


@pytest.mark.asyncio
async def test_banned_word_limit_is_atomic(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("core.storage.guilds.MAX_BANNED_WORDS", 3)
    await db.guilds.add_banned_words(100, ["a", "b"])
    with pytest.raises(InvalidInput, match="at most 3"):
        await db.guilds.add_banned_words(100, ["c", "d"])
    assert await db.guilds.banned_words(100) == ["a", "b"]


@pytest.mark.asyncio
async def test_users(db: Database, clock: ManualClock) -> None:
    assert await db.users.get(5) is None
    user = await db.users.ensure(5)
    clock.advance(days=1)
    assert await db.users.ensure(5) == user and user.created_at < clock.now


async def grid(db: Database, user_id: int = 1, seed: int = 0) -> list[int]:
    job = await db.create_job(job_spec(user_id=user_id, image_count=4), FREE)
    done = await db.complete_job(
        job.id, [GeneratedImage(i, seed + i, make_png(seed + i)) for i in range(4)]
    )
    return [image.id for image in done.images]


@pytest.mark.asyncio
async def test_favourites(db: Database, clock: ManualClock) -> None:
    ids = await grid(db)
    assert await db.favourites.toggle(7, ids[1]) is True
    assert await db.favourites.is_favourite(7, ids[1])
    assert await db.favourites.toggle(7, ids[1]) is False
    assert not await db.favourites.is_favourite(7, ids[1])

    # The grid's star: favourite the set, or clear it when all are favourites.
    await db.favourites.toggle(7, ids[0])
    assert await db.favourites.toggle(7, ids) is True
    assert await db.favourites.favourited_among(7, ids) == set(ids)
    assert await db.favourites.toggle(7, ids) is False
    assert await db.favourites.count(7) == 0

    for image_id in ids:
        clock.advance(seconds=1)
        assert await db.favourites.add(7, [image_id]) == 1
    assert await db.favourites.add(7, ids) == 0  # unique per user and image
    await db.favourites.add(8, ids[:1])  # someone else's favourite
    assert await db.favourites.count(7) == 4
    first = await db.favourites.list(7, limit=3)
    assert first.total == 4 and first.has_next and first.page_count == 2
    assert [f.image.id for f in first.items] == ids[::-1][:3]  # newest first
    assert first.items[0].job.prompt == "a cat" and first.items[0].user_id == 7
    second = await db.favourites.list(7, offset=3, limit=3)
    assert [f.image.id for f in second.items] == [ids[0]] and not second.has_next
    assert await db.favourites.remove(7, ids[:2]) == 2
    assert await db.favourites.count(7) == 2
    with pytest.raises(ImageNotFound):
        await db.favourites.toggle(7, 999_999)
    with pytest.raises(ValueError):
        await db.favourites.list(7, limit=0)


@pytest.mark.asyncio
async def test_prompt_history(db: Database, clock: ManualClock) -> None:
    prompts = [
        "a cat in space",
        "A dog on a skateboard",
        "Portrait of a cat, oil painting",
        "a cat in space",  # repeated: listed once, as its latest use
        "Straße at night",
    ]
    for prompt in prompts:
        clock.advance(seconds=1)
        await db.create_job(job_spec(prompt=prompt), FREE, remember_prompt=True)
    await db.create_job(job_spec(prompt="not remembered"), FREE)

    assert await db.history.recent(1) == [
        "Straße at night",
        "a cat in space",
        "Portrait of a cat, oil painting",
        "A dog on a skateboard",
    ]
    # Case-insensitive substring match, prefix matches first.
    assert await db.history.recent(1, "CAT") == [
        "a cat in space",
        "Portrait of a cat, oil painting",
    ]
    assert await db.history.recent(1, "portrait") == ["Portrait of a cat, oil painting"]
    assert await db.history.recent(1, "a ") == [
        "a cat in space",
        "A dog on a skateboard",
        "Portrait of a cat, oil painting",
    ]
    assert await db.history.recent(1, "STRASSE") == ["Straße at night"]  # Unicode folding
    assert await db.history.recent(1, "%") == []  # no wildcard surprises
    assert await db.history.recent(1, limit=2) == ["Straße at night", "a cat in space"]
    assert await db.history.recent(2) == []


@pytest.mark.asyncio
async def test_popular_prompts_respect_privacy(db: Database, clock: ManualClock) -> None:
    for user, prompt, private in [
        (1, "sunset", False),
        (2, "sunset", False),
        (3, "sunset", False),
        (1, "castle", False),
        (2, "castle", False),
        (3, "my secret project", True),
        (3, "my secret project", True),
        (3, "my secret project", True),
        (4, "dm only", False),
    ]:
        clock.advance(seconds=1)
        guild = None if prompt == "dm only" else 100
        await db.create_job(
            job_spec(user_id=user, prompt=prompt, private=private, guild_id=guild),
            FREE,
            remember_prompt=True,
        )
    popular = await db.history.popular(100)
    assert [(use.prompt, use.uses) for use in popular] == [("sunset", 3), ("castle", 2)]
    assert [use.prompt for use in await db.history.popular(100, "CAS")] == ["castle"]
    assert await db.history.popular(None) == []  # DMs are nobody else's business
    assert await db.history.popular(200) == []
    # The author still sees their own private prompts.
    assert "my secret project" in await db.history.recent(3)
    assert await db.history.suggestions(1, 100, "su") == ["sunset"]
    assert await db.history.suggestions(4, 100) == ["dm only", "sunset", "castle"]
    await db.history.record(9, 100, "recorded directly")
    assert await db.history.recent(9) == ["recorded directly"]
    with pytest.raises(InvalidInput):
        await db.history.record(9, 100, "   ")


@pytest.mark.asyncio
async def test_stars_added_at_once_by_several_processes_are_all_counted(
    db: Database, db_location: Path | str, clock: ManualClock
) -> None:
    job = await db.create_job(job_spec(), QuotaPolicy.unlimited())
    await db.jobs.mark_running(job.id)
    done = await db.complete_job(job.id, [GeneratedImage(0, 1, make_png(1))])
    image_id = done.images[0].id
    others = [await Database.open(db_location, clock=clock) for _ in range(3)]
    try:
        await asyncio.gather(
            *(others[n % 3].favourites.add(1000 + n, [image_id]) for n in range(24))
        )
    finally:
        for other in others:
            await other.close()
    assert (await db.jobs.get(job.id)).favourite_count == 24
