"""PostgreSQL (DATABASE_URL): the same schema as SQLite's, its migrations, the SQL translation,
and no password in what is shown. (Repository behaviour is tested on both databases by the
modules that use the ``both_backends`` fixture.)"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from conftest import drop_pg_database, new_pg_database
from pg_support import PgCluster

from core.storage import (
    Database,
    DatabaseUnreachable,
    NotOurDatabase,
    SchemaOutdated,
    SchemaTooNew,
    migrate,
)
from core.storage.dialect import redact_url, to_postgres
from core.storage.migrations import LATEST_VERSION

REPO = Path(__file__).resolve().parents[2]
# Tables only one database has: SQLite's full-text index (PostgreSQL's is an index on jobs)
# and its shadow tables; PostgreSQL's version table (SQLite keeps PRAGMA user_version).
SQLITE_ONLY = ("jobs_fts",)
POSTGRES_ONLY = ("schema_version",)
TYPES = {"INTEGER": "bigint", "TEXT": "text", "REAL": "double precision"}


def sqlite_schema(path: Path) -> tuple[dict[str, dict[str, tuple[str, bool]]], set[str]]:
    """{table: {column: (type, nullable)}} and the explicitly created indexes' names."""
    with sqlite3.connect(path) as conn:
        tables = [
            row[0]
            for row in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")
            if not row[0].startswith(("sqlite_", *SQLITE_ONLY))
        ]
        schema = {
            table: {
                name: (TYPES[kind], not notnull and not pk)
                for _, name, kind, notnull, _, pk in conn.execute(f"PRAGMA table_info({table})")
            }
            for table in tables
        }
        indexes = {
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'index' AND sql IS NOT NULL"
            )
        }
    return schema, indexes


async def postgres_schema(url: str) -> tuple[dict[str, dict[str, tuple[str, bool]]], set[str]]:
    conn = await asyncpg.connect(url)
    try:
        schema: dict[str, dict[str, tuple[str, bool]]] = {}
        for row in await conn.fetch(
            "SELECT table_name, column_name, data_type, is_nullable"
            " FROM information_schema.columns WHERE table_schema = current_schema()"
        ):
            if row["table_name"] not in POSTGRES_ONLY:
                schema.setdefault(row["table_name"], {})[row["column_name"]] = (
                    row["data_type"],
                    row["is_nullable"] == "YES",
                )
        indexes = {
            row[0]
            for row in await conn.fetch(
                "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
                # Not those of PRIMARY KEY and UNIQUE constraints (SQLite's autoindexes).
                " AND indexname NOT IN (SELECT conname FROM pg_constraint)"
            )
        }
    finally:
        await conn.close()
    return schema, indexes


@pytest.fixture
def empty_pg(pg_cluster: PgCluster) -> Iterator[str]:
    url = new_pg_database(pg_cluster, migrated=False)
    yield url
    drop_pg_database(pg_cluster, url)


@pytest.mark.asyncio
async def test_the_final_schema_is_the_same_on_both(db_path: Path, empty_pg: str) -> None:
    """Every migration's PostgreSQL form leads to SQLite's tables, columns, types,
    nullability and indexes: the two cannot drift apart."""
    assert await migrate(db_path) == (0, LATEST_VERSION)
    assert await migrate(empty_pg) == (0, LATEST_VERSION)
    lite_tables, lite_indexes = sqlite_schema(db_path)
    pg_tables, pg_indexes = await postgres_schema(empty_pg)
    assert pg_tables == lite_tables
    # PostgreSQL's prompt search is an index (SQLite's is the jobs_fts table).
    assert pg_indexes == lite_indexes | {"jobs_prompt_search"}


@pytest.mark.asyncio
async def test_migrations_step_by_step_and_twice(empty_pg: str) -> None:
    assert await migrate(empty_pg, target=5) == (0, 5)
    with pytest.raises(SchemaOutdated):
        await Database.open(empty_pg, migrate=False)
    async with Database.open(empty_pg) as db:  # the rest, from version 5
        assert db.schema_version == LATEST_VERSION
    assert await migrate(empty_pg) == (LATEST_VERSION, LATEST_VERSION)
    conn = await asyncpg.connect(empty_pg)
    try:
        assert await conn.fetchval("SELECT version FROM schema_version") == LATEST_VERSION
    finally:
        await conn.close()


@pytest.mark.asyncio
async def test_two_processes_migrating_at_once_apply_each_migration_once(empty_pg: str) -> None:
    results = await asyncio.gather(*(migrate(empty_pg) for _ in range(3)))
    # Each finds the version left by whoever migrated before it; all end at the latest.
    assert {after for _, after in results} == {LATEST_VERSION}
    assert sorted(before for before, _ in results)[0] == 0
    async with Database.open(empty_pg) as db:
        assert db.schema_version == LATEST_VERSION


@pytest.mark.asyncio
async def test_someone_elses_or_a_newer_database_is_refused(empty_pg: str) -> None:
    conn = await asyncpg.connect(empty_pg)
    try:
        await conn.execute("CREATE TABLE invoices (id bigint)")
        with pytest.raises(NotOurDatabase):
            await Database.open(empty_pg)
        await conn.execute("DROP TABLE invoices")
        await migrate(empty_pg)
        await conn.execute("UPDATE schema_version SET version = $1", LATEST_VERSION + 1)
        with pytest.raises(SchemaTooNew):
            await Database.open(empty_pg)
    finally:
        await conn.close()


@pytest.mark.asyncio
async def test_an_unreachable_server_is_named_without_its_password(pg_cluster: PgCluster) -> None:
    url = f"postgresql://postgres:hunter2@127.0.0.1:{pg_cluster.port}/no_such_database"
    with pytest.raises(DatabaseUnreachable) as caught:
        await Database.open(url)
    assert "hunter2" not in str(caught.value)
    assert "postgres:***@127.0.0.1" in str(caught.value)


def test_migrate_command_with_database_url(empty_pg: str, tmp_path: Path) -> None:
    url = empty_pg.replace("postgres@", "postgres:hunter2@")  # trust login: any password
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "DATABASE_URL": url}
    env["DATA_DIR"] = str(tmp_path / "data")

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bot.cli", "migrate"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    first, second = run(), run()
    assert first.returncode == 0, first.stderr
    assert f"from schema version 0 to {LATEST_VERSION}" in first.stdout
    assert f"up to date (schema version {LATEST_VERSION})" in second.stdout
    for result in (first, second):
        assert "hunter2" not in result.stdout + result.stderr
    assert not (tmp_path / "data" / "diffusion-chat.sqlite3").exists()


def test_translation_keeps_literals_and_comments() -> None:
    sql, keys = to_postgres(
        "SELECT '?', 'it''s :x', \"q?\" FROM t -- a comment's ? and :y\n"
        "WHERE a = ? AND b = :name AND c = ?2 AND d::text = :name AND e IS ? AND f IN ()"
    )
    assert sql == (
        "SELECT '?', 'it''s :x', \"q?\" FROM t -- a comment's ? and :y\n"
        "WHERE a = $1 AND b = $2 AND c = $3 AND d::text = $2 AND e IS NOT DISTINCT FROM $4"
        " AND f = ANY ('{}')"
    )
    assert keys == (0, "name", 1, 2)  # SQLite's numbering: a "?" after "?2" is the third
    assert to_postgres("x NOT IN ( )")[0] == "x <> ALL ('{}')"
    assert to_postgres("SELECT instr(a, ?)")[0] == "SELECT strpos(a, $1)"


def test_redact_url() -> None:
    assert redact_url("postgresql://bot:s3cret@db:5432/chat") == "postgresql://bot:***@db:5432/chat"
    assert redact_url("postgresql://db/chat") == "postgresql://db/chat"
