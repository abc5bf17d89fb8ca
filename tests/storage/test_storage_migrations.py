"""Schema migrations: from empty, from every earlier version, refusing downgrades."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import aiosqlite
import pytest
from storage_helpers import START, job_spec

from core.storage import (
    LATEST_VERSION,
    MIGRATIONS,
    Database,
    LocalImageStore,
    ManualClock,
    NotOurDatabase,
    Priority,
    QuotaPolicy,
    SchemaOutdated,
    SchemaTooNew,
    migrate,
)
from core.storage.migrations import APPLICATION_ID, apply_migrations, backup_path
from core.storage.records import LibraryScope

STAMP = "2025-03-10T11:00:00.000000+00:00"


def schema_of(path: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(path) as conn:
        return sorted(
            conn.execute(
                "SELECT type, name, sql FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'"
            ).fetchall()
        )


def pragma(path: Path, name: str) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]


async def build_at_version(path: Path, version: int) -> None:
    """A database as an older release left it, with data typical of that release."""
    path.parent.mkdir(parents=True, exist_ok=True)
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        await apply_migrations(conn, str(path), target=version)
        if version >= 1:
            statements = [
                (
                    "INSERT INTO guilds (id, created_at, updated_at) VALUES (100, ?, ?)",
                    (STAMP, STAMP),
                ),
                ("INSERT INTO users (id, created_at) VALUES (1, ?)", (STAMP,)),
                (
                    "INSERT INTO jobs (id, user_id, guild_id, channel_id, kind, request, prompt, "
                    "image_count, status, created_at, started_at, finished_at, generation_seconds) "
                    "VALUES ('oldjob000001', 1, 100, 200, 'txt2img', '{\"prompt\": \"old\"}', "
                    "'old prompt', 2, 'done', ?, ?, ?, 3.5)",
                    (STAMP, STAMP, STAMP),
                ),
                (
                    "INSERT INTO jobs (id, user_id, guild_id, kind, request, prompt, image_count, "
                    "status, created_at) VALUES ('oldjob000002', 1, 100, 'txt2img', '{}', 'queued "
                    "one', 1, 'queued', ?)",
                    (STAMP,),
                ),
                (
                    "INSERT INTO images (job_id, idx, seed, width, height, content_hash, file_key, "
                    "thumbnail_key, size_bytes, created_at) VALUES ('oldjob000001', 0, 7, 512, 512,"
                    " ?, ?, NULL, 123, ?)",
                    ("a" * 64, f"aa/aa/{'a' * 64}.png", STAMP),
                ),
                (
                    "INSERT INTO favourites (user_id, image_id, created_at) VALUES (1, 1, ?)",
                    (STAMP,),
                ),
                (
                    "INSERT INTO prompt_history (user_id, guild_key, prompt, created_at) "
                    "VALUES (1, 100, 'old prompt', ?)",
                    (STAMP,),
                ),
                (
                    "INSERT INTO quota_policies (guild_key, scope, target_id, daily_images, "
                    "concurrent_jobs, updated_at) VALUES (100, 'guild', 100, 10, 1, ?)",
                    (STAMP,),
                ),
                (
                    "INSERT INTO usage_ledger (guild_key, user_id, day, entry, images, job_id, "
                    "created_at) VALUES (100, 1, '2025-03-10', 'spend', 2, 'oldjob000001', ?)",
                    (STAMP,),
                ),
                (
                    "INSERT INTO usage_ledger (guild_key, user_id, day, entry, images, job_id, "
                    "created_at) VALUES (100, 1, '2025-03-10', 'spend', 1, 'oldjob000002', ?)",
                    (STAMP,),
                ),
            ]
            for sql, params in statements:
                await conn.execute(sql, params)


@pytest.mark.asyncio
async def test_migrate_is_idempotent(tmp_path: Path) -> None:
    assert await migrate(tmp_path / "a.sqlite3") == (0, LATEST_VERSION)
    assert await migrate(tmp_path / "a.sqlite3") == (LATEST_VERSION, LATEST_VERSION)


@pytest.mark.asyncio
async def test_migrate_from_empty(tmp_path: Path) -> None:
    path = tmp_path / "new" / "db.sqlite3"
    assert await migrate(path) == (0, LATEST_VERSION)
    assert pragma(path, "user_version") == LATEST_VERSION
    assert pragma(path, "application_id") == APPLICATION_ID
    assert pragma(path, "journal_mode") == "wal"
    tables = {name for kind, name, _ in schema_of(path) if kind == "table"}
    assert {
        "guilds",
        "users",
        "jobs",
        "images",
        "favourites",
        "prompt_history",
        "quota_policies",
        "usage_ledger",
        "banned_words",
    } <= tables
    assert not backup_path(path, 0).exists()  # nothing to back up


@pytest.mark.asyncio
@pytest.mark.parametrize("version", range(LATEST_VERSION))
async def test_migrate_from_each_earlier_version(tmp_path: Path, version: int) -> None:
    path = tmp_path / "db.sqlite3"
    await build_at_version(path, version)
    fresh = tmp_path / "fresh.sqlite3"
    await migrate(fresh)

    assert await migrate(path) == (version, LATEST_VERSION)
    assert schema_of(path) == schema_of(fresh)
    assert pragma(path, "user_version") == LATEST_VERSION
    if version > 0:
        backup = backup_path(path, version)
        assert backup.exists() and pragma(backup, "user_version") == version

    clock = ManualClock(START)
    async with Database.open(path, images=LocalImageStore(tmp_path / "img"), clock=clock) as db:
        assert await db.integrity_check() == []
        if version == 0:
            return
        # v1 data is intact and readable through the current API.
        assert await db.guilds.get(100) is not None
        old = await db.jobs.get_with_images("oldjob000001")
        assert old.job.prompt == "old prompt" and old.job.generation_seconds == 3.5
        assert [image.seed for image in old.images] == [7]
        favourites = await db.favourites.list(1)
        assert favourites.total == 1 and favourites.items[0].job.id == "oldjob000001"
        assert await db.history.recent(1) == ["old prompt"]
        usage = await db.quotas.usage(100, 1)
        assert (usage.used, usage.daily_limit, usage.active_jobs) == (3, 10, 1)
        assert usage.policy.priority is Priority.NORMAL  # v3: old policies keep normal priority
        assert [job.id for job in await db.jobs.unfinished()] == ["oldjob000002"]
        # v8: stars counted on the job (from v8 on, the code that stars keeps the count), and
        # the old result is in its server's gallery.
        assert old.job.favourite_count == (1 if version < 8 else 0)
        gallery = await db.library.page(LibraryScope.GALLERY, 1, guild_id=100)
        assert [entry.job.id for entry in gallery.items] == ["oldjob000001"]
        # v2 features work on the upgraded file.
        assert await db.guilds.add_banned_words(100, ["Bad Word"]) == ["bad word"]
        job = await db.create_job(job_spec(guild_id=100), QuotaPolicy(None, None))
        assert (await db.jobs.get(job.id)).status == "queued"
    # v5: the per-server settings that nothing read are gone (v12 brings default_model back,
    # read this time, with the server's chosen models).
    columns = {
        name
        for (name,) in sqlite3.connect(path).execute("SELECT name FROM pragma_table_info('guilds')")
    }
    assert not columns & {"preview_every", "private_allowed"}
    assert {"default_model", "disabled_models"} <= columns


@pytest.mark.asyncio
async def test_open_applies_migrations_at_start_up(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    await build_at_version(path, 1)
    async with Database.open(path) as db:
        assert db.schema_version == LATEST_VERSION
    assert pragma(path, "user_version") == LATEST_VERSION


@pytest.mark.asyncio
async def test_open_without_migrating_refuses_an_old_schema(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    await build_at_version(path, 1)
    with pytest.raises(SchemaOutdated, match="diffusion-chat migrate"):
        await Database.open(path, migrate=False)
    assert pragma(path, "user_version") == 1


@pytest.mark.asyncio
async def test_downgrade_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    await migrate(path)
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {LATEST_VERSION + 3}")
    before = path.read_bytes()
    with pytest.raises(SchemaTooNew) as caught:
        await Database.open(path)
    assert caught.value.found == LATEST_VERSION + 3
    assert caught.value.supported == LATEST_VERSION
    assert "newer" in str(caught.value) and "downgrade" in str(caught.value)
    with pytest.raises(SchemaTooNew):
        await migrate(path)
    assert pragma(path, "user_version") == LATEST_VERSION + 3
    assert path.read_bytes() == before  # untouched


@pytest.mark.asyncio
async def test_migrating_to_an_older_target_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    await migrate(path)
    with pytest.raises(SchemaTooNew):
        await migrate(path, target=1)
    assert pragma(path, "user_version") == LATEST_VERSION


@pytest.mark.asyncio
async def test_a_foreign_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
    with pytest.raises(NotOurDatabase):
        await Database.open(path)
    assert pragma(path, "journal_mode") == "delete"  # not even switched to WAL
    other = tmp_path / "app.sqlite3"
    with sqlite3.connect(other) as conn:
        conn.execute("PRAGMA application_id = 1234")
    with pytest.raises(NotOurDatabase):
        await migrate(other)
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(NotOurDatabase):
        await Database.open(junk)


@pytest.mark.asyncio
async def test_connection_settings(db: Database, db_path: Path) -> None:
    async def value(conn: aiosqlite.Connection, name: str) -> object:
        rows = list(await conn.execute_fetchall(f"PRAGMA {name}"))
        return rows[0][0]

    ctx = db._ctx
    for conn in (ctx.writer, ctx.reader):
        assert await value(conn, "journal_mode") == "wal"
        assert await value(conn, "foreign_keys") == 1
        assert await value(conn, "busy_timeout") == 10_000
        assert await value(conn, "synchronous") == 2  # FULL
    assert await value(ctx.reader, "query_only") == 1


@pytest.mark.asyncio
async def test_concurrent_start_ups_migrate_once(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    databases = await asyncio.gather(*(Database.open(path) for _ in range(4)))
    try:
        assert {db.schema_version for db in databases} == {LATEST_VERSION}
    finally:
        for db in databases:
            await db.close()
    assert pragma(path, "user_version") == LATEST_VERSION


def test_migrations_are_numbered_in_order() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, LATEST_VERSION + 1))
    assert LATEST_VERSION >= 2
    for migration in MIGRATIONS:
        for statement in migration.statements:
            assert sqlite3.complete_statement(statement + ";"), statement
            assert "BEGIN" not in statement.upper().split()[0]
