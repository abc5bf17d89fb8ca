"""PostgreSQL behind the same repositories, for several front processes (``DATABASE_URL``).

Design: the repositories are not written twice. They write SQL in SQLite's spelling through
``Tx``; on PostgreSQL ``PgTx`` runs it on an asyncpg connection after ``dialect.to_postgres``
(``?``/``:name`` -> ``$n``, a few renamed functions), and the rare real differences are
named in ``dialect.py``. asyncpg's ``Record`` indexes by position and by name like
``sqlite3.Row``, so row conversion is shared too. One repository API, one set of tests run
against both databases: the two cannot drift apart unnoticed.

Concurrency: every transaction takes its own pooled connection (READ COMMITTED), so several
processes write at once. Nothing relies on the in-process lock for correctness: a quota spend
(check the ledger, then insert the spend) holds a transaction-scoped advisory lock on the
user (``Tx.lock``), which serialises exactly the spends that could overtake each other, in
every process; one-per-job rules (a spend, a refund) are unique indexes, as on SQLite.

Schema: the same numbered migrations. Each migration's PostgreSQL form is derived from the
SQLite statements (``postgres_form``: INTEGER -> BIGINT, since Discord ids need 64 bits;
REAL -> DOUBLE PRECISION; ``INTEGER PRIMARY KEY`` -> an identity column; STRICT dropped) or
written beside it where SQLite's statement has no PostgreSQL equivalent (``Migration.postgres``:
the FTS5 table, JSON functions). ``schema_version`` holds the number applied, as SQLite's
``user_version`` does; each migration commits with its version bump, under an advisory lock,
so two processes starting at once apply it once. Timestamps stay ISO 8601 text (``clock.py``),
which sorts and compares the same in both.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TypeAlias

import asyncpg

from ._base import Params, Row, Tx
from .dialect import POSTGRES, Dialect, bind, redact_url, to_postgres
from .errors import DatabaseUnreachable, InvalidText, NotOurDatabase, SchemaTooNew
from .migrations import APPLICATION_ID, LATEST_VERSION, MIGRATIONS, Migration

PgPool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"


def _accented() -> tuple[str, str]:
    """Latin letters with diacritics and their plain letters, for ``dc_unaccent``."""
    accented, plain = [], []
    for code in range(0xC0, 0x250):
        base = unicodedata.normalize("NFD", chr(code))[0]
        if base != chr(code) and base.isascii() and base.isalpha():
            accented.append(chr(code))
            plain.append(base)
    return "".join(accented), "".join(plain)


_ACCENTED, _PLAIN = _accented()

# SQLite functions the shared SQL uses, for PostgreSQL (see ``dialect.RENAMED_FUNCTIONS``).
COMPAT_FUNCTIONS: tuple[str, ...] = (
    # SQLite's json_valid: 1 for well-formed JSON text, 0 otherwise, NULL for NULL.
    """CREATE OR REPLACE FUNCTION dc_json_valid(doc text) RETURNS boolean
       LANGUAGE plpgsql IMMUTABLE AS $$
       BEGIN
           IF doc IS NULL THEN RETURN NULL; END IF;
           PERFORM CAST(doc AS jsonb);
           RETURN true;
       EXCEPTION WHEN others THEN
           RETURN false;
       END $$""",
    # SQLite's json_extract for the '$.a.b' paths the code uses, as text.
    """CREATE OR REPLACE FUNCTION dc_json_extract(doc text, path text) RETURNS text
       LANGUAGE sql IMMUTABLE AS
       $$ SELECT CAST(doc AS jsonb) #>> string_to_array(substr(path, 3), '.') $$""",
    # prompts.fold (str.casefold) in SQL: lower() follows the database's LC_CTYPE; with a
    # UTF-8 locale it folds every script's case, as casefold does; casefold's one common
    # expansion, "ß" -> "ss", is added.
    """CREATE OR REPLACE FUNCTION dc_fold(t text) RETURNS text
       LANGUAGE sql IMMUTABLE AS $$ SELECT replace(lower(t), 'ß', 'ss') $$""",
    # Prompt search is accent-blind, as SQLite's FTS5 index (remove_diacritics) is; the
    # unaccent extension is not immutable (so not indexable) and not always installed.
    f"""CREATE OR REPLACE FUNCTION dc_unaccent(t text) RETURNS text
       LANGUAGE sql IMMUTABLE AS $$ SELECT translate(lower(t), '{_ACCENTED}', '{_PLAIN}') $$""",
)

_VERSION_TABLE = (
    "CREATE TABLE schema_version (application_id BIGINT NOT NULL, version INTEGER NOT NULL)"
)


class PgTx(Tx):
    __slots__ = ("_conn",)
    sql = POSTGRES

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def all(self, sql: str, params: Params = ()) -> list[Row]:
        query, keys = to_postgres(sql)
        return list(await self._conn.fetch(query, *bind(keys, params)))

    async def run(self, sql: str, params: Params = ()) -> int:
        query, keys = to_postgres(sql)
        status = await self._conn.execute(query, *bind(keys, params))
        last = status.rsplit(" ", 1)[-1]  # "INSERT 0 1", "UPDATE 3", "DELETE 0"
        return int(last) if last.isdigit() else 0

    async def run_many(self, sql: str, params: Sequence[Params]) -> None:
        query, keys = to_postgres(sql)
        await self._conn.executemany(query, [bind(keys, each) for each in params])

    async def lock(self, key: int) -> None:
        # Released by COMMIT or ROLLBACK, or when a killed process's connection drops.
        await self._conn.execute("SELECT pg_advisory_xact_lock($1)", key)


def _unstorable(error: BaseException) -> bool:
    """Text PostgreSQL cannot hold: an unpaired surrogate (not UTF-8) or a NUL character."""
    if isinstance(error, UnicodeEncodeError):
        return True
    if isinstance(error, asyncpg.DataError) and isinstance(error.__cause__, UnicodeEncodeError):
        return True
    return isinstance(error, asyncpg.CharacterNotInRepertoireError)


@asynccontextmanager
async def pg_transaction(
    pool: PgPool, *, read_only: bool = False, snapshot: bool = False
) -> AsyncIterator[Tx]:
    """One transaction on a pooled connection: committed if the block succeeds, rolled back
    if it raises. ``snapshot``: REPEATABLE READ, so several reads see one state."""
    try:
        async with pool.acquire() as conn:
            isolation = "repeatable_read" if snapshot else "read_committed"
            async with conn.transaction(isolation=isolation, readonly=read_only):
                yield PgTx(conn)
    except Exception as error:
        if _unstorable(error):
            raise InvalidText(
                "That text contains characters that cannot be stored "
                "(unpaired surrogates or NUL). Please retype it."
            ) from error
        raise


class PgServer:
    """A ``Context``'s transactions on a pool of connections (``_base.Server``)."""

    dialect: Dialect = POSTGRES

    def __init__(self, pool: PgPool) -> None:
        self.pool = pool

    def write(self) -> AbstractAsyncContextManager[Tx]:
        return pg_transaction(self.pool)

    def read(self, *, snapshot: bool) -> AbstractAsyncContextManager[Tx]:
        return pg_transaction(self.pool, read_only=True, snapshot=snapshot)

    async def close(self) -> None:
        await self.pool.close()


def _number(text: str) -> int | float:
    """numeric (what sum() of integers gives) as int or float, as SQLite gives them; the
    schema has no numeric column, so no Decimal precision is lost."""
    try:
        return int(text)
    except ValueError:
        return float(text)


async def _setup_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "numeric", encoder=str, decoder=_number, schema="pg_catalog", format="text"
    )


async def create_pool(url: str, *, min_size: int = 1, max_size: int = 10) -> PgPool:
    try:
        pool = await asyncpg.create_pool(
            url, min_size=min_size, max_size=max_size, init=_setup_connection
        )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        # asyncpg's messages do not hold the password; the URL we add must not either.
        raise DatabaseUnreachable(f"cannot connect to {redact_url(url)}: {error}") from None
    assert pool is not None
    return pool


# -- migrations ---------------------------------------------------------------------------


def pg_ddl(statement: str) -> str:
    """A SQLite schema statement in PostgreSQL's types (see the module's docstring)."""
    statement = re.sub(
        r"\bINTEGER PRIMARY KEY\b", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", statement
    )
    statement = re.sub(r"\bINTEGER\b", "BIGINT", statement)
    statement = re.sub(r"\bREAL\b", "DOUBLE PRECISION", statement)
    statement = re.sub(r"\)\s*STRICT(\s*,\s*WITHOUT ROWID)?\s*$", ")", statement)
    return to_postgres(statement)[0]  # json_extract in a data migration, and the like


def postgres_form(migration: Migration) -> tuple[str, ...]:
    statements = migration.postgres
    if statements is None:
        statements = migration.statements
    statements = tuple(pg_ddl(statement) for statement in statements)
    if migration.version == 1:
        statements = COMPAT_FUNCTIONS + statements
    return statements


async def read_pg_version(conn: asyncpg.Connection, where: str) -> int:
    """The schema version, after checking the database (its current schema) is ours."""
    if not await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL"):
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()"
        )
        if tables:
            raise NotOurDatabase(where, "it already holds tables that Diffusion Chat did not make")
        return 0
    row = await conn.fetchrow("SELECT application_id, version FROM schema_version")
    if row is None or row["application_id"] != APPLICATION_ID:
        raise NotOurDatabase(where, "its schema_version table is not Diffusion Chat's")
    version = int(row["version"])
    if version > LATEST_VERSION:
        raise SchemaTooNew(where, version, LATEST_VERSION)
    return version


async def apply_pg_migrations(
    pool: PgPool, where: str, *, target: int = LATEST_VERSION
) -> tuple[int, int]:
    """Bring the schema up to ``target``, one transaction a migration. Returns (from, to)."""
    if not 0 <= target <= LATEST_VERSION:
        raise ValueError(f"target version {target} is not in 0..{LATEST_VERSION}")
    start: int | None = None
    async with pool.acquire() as conn:
        while True:
            async with conn.transaction():
                # Another process may be migrating: wait for it, then read.
                await conn.execute("SELECT pg_advisory_xact_lock($1)", APPLICATION_ID)
                current = await read_pg_version(conn, where)
                if start is None:
                    start = current
                    if start > target:
                        raise SchemaTooNew(where, start, target)
                if current >= target:
                    return start, current
                if current == 0:
                    await conn.execute(_VERSION_TABLE)
                    await conn.execute(
                        "INSERT INTO schema_version (application_id, version) VALUES ($1, 0)",
                        APPLICATION_ID,
                    )
                migration = MIGRATIONS[current]
                for statement in postgres_form(migration):
                    await conn.execute(statement)
                await conn.execute("UPDATE schema_version SET version = $1", migration.version)


async def pg_version(pool: PgPool, where: str) -> int:
    """The schema version, once no migration is running (one may have created some tables
    but not yet committed the version)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", APPLICATION_ID)
        return await read_pg_version(conn, where)
