"""What every repository shares: connections, transactions, row conversion."""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import json
import secrets
import sqlite3
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import aiosqlite

from .clock import Clock, from_db, from_db_opt, require_aware
from .dialect import SQLITE, Dialect
from .errors import DatabaseBusy, InvalidText
from .files import ImageStore
from .migrations import rollback_quietly
from .records import Image, Job, JobStatus, QuotaPolicy

Params = Sequence[Any] | Mapping[str, Any]

JOB_ID_BYTES = 9  # 12 characters of URL-safe base64: A-Z a-z 0-9 - _


def new_job_id() -> str:
    return secrets.token_urlsafe(JOB_ID_BYTES)


def guild_key(guild_id: int | None) -> int:
    """Tables where NULL would break uniqueness use 0 for direct messages."""
    return 0 if guild_id is None else guild_id


def guild_from_key(key: int) -> int | None:
    return None if key == 0 else key


class Row(Protocol):
    """A result row: ``Row`` or ``asyncpg.Record``. Both index by position and by
    column name, and iterate over their values."""

    def __getitem__(self, key: Any, /) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int: ...


class Tx:
    """Statements on one connection, inside a transaction the caller opened.

    SQL is written in SQLite's spelling with ``?`` (or ``:name``) parameters; ``sql`` names
    what differs on this database (``dialect.py``)."""

    __slots__ = ()
    sql: Dialect = SQLITE

    async def all(self, sql: str, params: Params = ()) -> list[Row]:
        raise NotImplementedError

    async def one(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.all(sql, params)
        return rows[0] if rows else None

    async def scalar(self, sql: str, params: Params = ()) -> Any:
        row = await self.one(sql, params)
        return None if row is None else row[0]

    async def run(self, sql: str, params: Params = ()) -> int:
        """Execute a write; return the number of rows it changed."""
        raise NotImplementedError

    async def run_many(self, sql: str, params: Sequence[Params]) -> None:
        raise NotImplementedError

    async def lock(self, key: int) -> None:
        """Hold lock ``key`` until this transaction ends, against other processes' writers
        taking the same key (a check-then-write, like a quota spend, under it is atomic)."""


class SqliteTx(Tx):
    __slots__ = ("_conn",)

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def all(self, sql: str, params: Params = ()) -> list[Row]:
        return list(await self._conn.execute_fetchall(sql, params))

    async def run(self, sql: str, params: Params = ()) -> int:
        cursor = await self._conn.execute(sql, params)
        try:
            return cursor.rowcount
        finally:
            await cursor.close()

    async def run_many(self, sql: str, params: Sequence[Params]) -> None:
        cursor = await self._conn.executemany(sql, params)
        await cursor.close()

    async def lock(self, key: int) -> None:
        """Nothing to do: a write transaction (``BEGIN IMMEDIATE``) holds SQLite's one write
        lock already, against every other writer of the file."""


class Server(Protocol):
    """A database server's transactions (PostgreSQL's, ``postgres.PgServer``), for a
    ``Context`` that does not use SQLite's two connections."""

    dialect: Dialect

    def write(self) -> AbstractAsyncContextManager[Tx]: ...

    def read(self, *, snapshot: bool) -> AbstractAsyncContextManager[Tx]: ...

    async def close(self) -> None: ...


@dataclass(eq=False)
class Context:
    """What the repositories share: the database and the clock.

    SQLite (``server`` None): one writer and one reader connection; writes are serialised in
    this process by ``write_lock`` and across processes by SQLite's file lock. PostgreSQL
    (``server`` set): each transaction takes a connection of a pool, so writes from this and
    other front processes run at once; what must be atomic across them takes a row or
    advisory lock in SQL (``Tx.lock``), never only ``write_lock``, which one process holds."""

    path: str
    writer: aiosqlite.Connection | None
    reader: aiosqlite.Connection | None
    clock: Clock
    files: ImageStore | None
    default_policy: QuotaPolicy
    write_lock: asyncio.Lock
    read_lock: asyncio.Lock
    server: Server | None = None

    def now(self) -> dt.datetime:
        return require_aware(self.clock())

    @property
    def dialect(self) -> Dialect:
        return SQLITE if self.server is None else self.server.dialect

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Tx]:
        """One write transaction (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: READ COMMITTED on
        a pooled connection): committed if the block succeeds, rolled back if it raises (or
        is cancelled)."""
        if self.server is not None:
            async with self.server.write() as tx:
                yield tx
            return
        assert self.writer is not None
        async with self.write_lock:
            try:
                await self.writer.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as error:
                await rollback_quietly(self.writer)
                if "locked" in str(error) or "busy" in str(error):
                    raise DatabaseBusy(f"the database stayed locked: {error}") from error
                raise
            except BaseException:
                await rollback_quietly(self.writer)
                raise
            try:
                yield SqliteTx(self.writer)
            except BaseException as error:
                await rollback_quietly(self.writer)
                if isinstance(error, UnicodeEncodeError):
                    raise InvalidText(
                        "That text contains characters that cannot be stored "
                        "(unpaired surrogates). Please retype it."
                    ) from error
                raise
            try:
                await self.writer.execute("COMMIT")
            except BaseException:
                await rollback_quietly(self.writer)
                raise

    @asynccontextmanager
    async def read(self, *, snapshot: bool = False) -> AsyncIterator[Tx]:
        """Reads on the reader connection. ``snapshot``: several statements see one state."""
        if self.server is not None:
            async with self.server.read(snapshot=snapshot) as tx:
                yield tx
            return
        assert self.reader is not None
        async with self.read_lock:
            try:
                if not snapshot:
                    yield SqliteTx(self.reader)
                    return
                await self.reader.execute("BEGIN")
                try:
                    yield SqliteTx(self.reader)
                finally:
                    await rollback_quietly(self.reader)
            except UnicodeEncodeError as error:
                raise InvalidText(
                    "That text contains characters that cannot be stored "
                    "(unpaired surrogates). Please retype it."
                ) from error


# --- row conversion ---------------------------------------------------------------------

JOB_FIELDS = (
    "id",
    "user_id",
    "guild_id",
    "channel_id",
    "message_id",
    "interaction_token",
    "token_expires_at",
    "kind",
    "request",
    "prompt",
    "image_count",
    "private",
    "parent_job_id",
    "parent_image_index",
    "status",
    "attempts",
    "error",
    "timings",
    "generation_seconds",
    "created_at",
    "started_at",
    "finished_at",
    "delivered_at",
    "source",
    "shared_at",
    "share_channel_id",
    "share_message_id",
    "gallery_removed_at",
    "favourite_count",
    "hidden_at",
)

IMAGE_FIELDS = (
    "id",
    "job_id",
    "idx",
    "seed",
    "width",
    "height",
    "content_hash",
    "file_key",
    "thumbnail_key",
    "size_bytes",
    "created_at",
)


def columns(fields: Sequence[str], table: str, prefix: str = "") -> str:
    """``j.id AS j_id, j.user_id AS j_user_id, ...`` for joins; plain names without prefix."""
    if not prefix:
        return ", ".join(f"{table}.{name}" for name in fields)
    return ", ".join(f"{table}.{name} AS {prefix}{name}" for name in fields)


JOB_COLUMNS = columns(JOB_FIELDS, "jobs")
IMAGE_COLUMNS = columns(IMAGE_FIELDS, "images")


def job_from_row(row: Row, prefix: str = "") -> Job:
    def get(name: str) -> Any:
        return row[prefix + name]

    timings = get("timings")
    return Job(
        id=get("id"),
        user_id=get("user_id"),
        guild_id=get("guild_id"),
        channel_id=get("channel_id"),
        message_id=get("message_id"),
        interaction_token=get("interaction_token"),
        token_expires_at=from_db_opt(get("token_expires_at")),
        kind=get("kind"),
        request=get("request"),
        prompt=get("prompt"),
        image_count=get("image_count"),
        private=bool(get("private")),
        parent_job_id=get("parent_job_id"),
        parent_image_index=get("parent_image_index"),
        status=JobStatus(get("status")),
        attempts=get("attempts"),
        error=get("error"),
        timings=None if timings is None else json.loads(timings),
        generation_seconds=get("generation_seconds"),
        created_at=from_db(get("created_at")),
        started_at=from_db_opt(get("started_at")),
        finished_at=from_db_opt(get("finished_at")),
        delivered_at=from_db_opt(get("delivered_at")),
        source=get("source"),
        shared_at=from_db_opt(get("shared_at")),
        share_channel_id=get("share_channel_id"),
        share_message_id=get("share_message_id"),
        gallery_removed_at=from_db_opt(get("gallery_removed_at")),
        favourite_count=get("favourite_count"),
        hidden_at=from_db_opt(get("hidden_at")),
    )


def image_from_row(row: Row, prefix: str = "") -> Image:
    def get(name: str) -> Any:
        return row[prefix + name]

    return Image(
        id=get("id"),
        job_id=get("job_id"),
        index=get("idx"),
        seed=get("seed"),
        width=get("width"),
        height=get("height"),
        content_hash=get("content_hash"),
        file_key=get("file_key"),
        thumbnail_key=get("thumbnail_key"),
        size_bytes=get("size_bytes"),
        created_at=from_db(get("created_at")),
    )


def placeholders(count: int) -> str:
    return ", ".join("?" * count)


async def ensure_user(tx: Tx, user_id: int, now: str) -> None:
    await tx.run(
        "INSERT INTO users (id, created_at) VALUES (?, ?) ON CONFLICT (id) DO NOTHING",
        (user_id, now),
    )


async def ensure_guild(tx: Tx, guild_id: int | None, now: str) -> None:
    if guild_id is None:
        return
    await tx.run(
        "INSERT INTO guilds (id, created_at, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (id) DO NOTHING",
        (guild_id, now, now),
    )


class _Unset(enum.Enum):
    UNSET = enum.auto()

    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset.UNSET
"""Default of optional update arguments: "leave this field as it is"."""
