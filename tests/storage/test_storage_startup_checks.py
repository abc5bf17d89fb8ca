"""Opening refuses a database that would silently lose records: one cut short or damaged,
and an empty one beside stored images."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from storage_helpers import make_png

from core.storage import (
    LATEST_VERSION,
    Database,
    DatabaseDamaged,
    EmptyDatabaseBesideImages,
    LocalImageStore,
    migrate,
)


async def fill(path: Path, store: LocalImageStore) -> None:
    async with Database.open(path, images=store) as db:
        words = [f"word number {n} {'x' * 60}" for n in range(300)]
        await db.guilds.add_banned_words(1, words, added_by=7)
        await store.put(make_png())


@pytest.mark.asyncio
@pytest.mark.parametrize("keep", [0.5, 0.9])
async def test_a_database_cut_short_is_refused(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "db.sqlite3"
    store = LocalImageStore(tmp_path / "images")
    await fill(path, store)
    size = path.stat().st_size
    with path.open("r+b") as file:
        file.truncate(int(size * keep) // 4096 * 4096)
    cut = path.read_bytes()
    with pytest.raises(DatabaseDamaged, match="damaged"):
        await Database.open(path, images=store)
    with pytest.raises(DatabaseDamaged):
        await migrate(path, images=store)
    assert path.read_bytes() == cut  # nothing written to it, nothing "repaired"


@pytest.mark.asyncio
async def test_a_corrupted_page_is_found_by_the_quick_check(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    store = LocalImageStore(tmp_path / "images")
    await fill(path, store)
    with sqlite3.connect(path) as conn:
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_schema WHERE name = 'banned_words'"
        ).fetchone()
    with path.open("r+b") as file:  # scribble over the table's root page
        file.seek((root - 1) * 4096)
        file.write(b"\xff" * 64)
    with pytest.raises(DatabaseDamaged):
        await Database.open(path, images=store)


@pytest.mark.asyncio
@pytest.mark.parametrize("state", ["zero-length", "missing"])
async def test_an_empty_database_beside_stored_images_is_refused(
    tmp_path: Path, state: str
) -> None:
    path = tmp_path / "db.sqlite3"
    store = LocalImageStore(tmp_path / "images")
    await fill(path, store)
    path.unlink()
    if state == "zero-length":
        path.write_bytes(b"")
    with pytest.raises(EmptyDatabaseBesideImages, match="empty or missing"):
        await Database.open(path, images=store)
    with pytest.raises(EmptyDatabaseBesideImages):
        await migrate(path, images=store)
    assert not path.exists() or path.stat().st_size == 0  # no fresh schema written over it


@pytest.mark.asyncio
async def test_an_empty_database_with_no_images_is_a_first_start(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    path.write_bytes(b"")
    (tmp_path / "images").mkdir()  # the folder alone is not "stored images"
    async with Database.open(path, images=LocalImageStore(tmp_path / "images")) as db:
        assert db.schema_version == LATEST_VERSION


@pytest.mark.asyncio
async def test_a_healthy_database_with_images_opens(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    store = LocalImageStore(tmp_path / "images")
    await fill(path, store)
    async with Database.open(path, images=store) as db:
        assert len(await db.guilds.banned_words(1)) == 300
