"""``Database``: the one object the bot opens. It owns the connections and the repositories.

Connections: one writer, one reader, both in WAL mode. Every write is a ``BEGIN IMMEDIATE``
transaction on the writer, serialised in this process by an asyncio lock and across
processes (the bot, ``diffusion-chat`` commands) by SQLite's own lock and the busy timeout.
Readers never block the writer and always see the last commit.

Durability: ``synchronous=FULL`` by default. In WAL mode ``NORMAL`` already survives a
*process* crash (SIGKILL, segfault, OOM-kill) with every commit intact, because a commit is
in the WAL file, in the kernel's page cache, before ``COMMIT`` returns; the crash test
proves that. What ``NORMAL`` can lose is the last commits before a *power* failure or kernel
panic, because it fsyncs only at checkpoints. Users were told "accepted" after the commit,
so we pay one WAL fsync per commit (a few milliseconds; the bot commits a handful of times
per job) and keep that promise through power loss too. Pass ``synchronous="NORMAL"`` where
that trade is wrong.

PostgreSQL (``Database.open("postgresql://...")``, the ``DATABASE_URL`` setting): the same
repositories on a pool of connections, for several front processes; see ``postgres.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import sqlite3
from collections.abc import Awaitable, Callable, Generator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import aiosqlite

from ._base import Context
from .apikeys import ApiKeyRepository, IdempotencyRepository
from .clock import Clock, system_clock, to_db
from .custom_models import CustomModelRepository
from .dialect import is_postgres_url
from .errors import (
    DatabaseDamaged,
    EmptyDatabaseBesideImages,
    InvalidInput,
    InvalidTransition,
    NotOurDatabase,
    SchemaOutdated,
    StorageError,
)
from .favourites import FavouriteRepository, recount_stars
from .files import ImageStore, LocalImageStore
from .guilds import GuildRepository, UserRepository
from .images import ImageRepository, store_file_and_thumbnail
from .jobs import JobRepository
from .library import VIEW_LIFETIME, LibraryRepository
from .migrations import (
    LATEST_VERSION,
    apply_migrations,
    backup_before_migration,
    check_sqlite_version,
    read_version,
)
from .prompts import PromptHistoryRepository, fold
from .quotas import QuotaRepository
from .records import (
    DEFAULT_POLICY,
    CleanupReport,
    CompletedJob,
    Flag,
    ForgetReport,
    GeneratedImage,
    Job,
    NewImage,
    NewJob,
    QuotaPolicy,
)
from .result_cache import ResultCacheRepository
from .safety import SafetyRepository
from .usage import UsageRepository

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]
DATABASE_FILE = "diffusion-chat.sqlite3"
IMAGES_DIR = "images"
_CLEANUP_BATCH = 500
_FILE_BATCH = 50


async def _switch_to_wal(conn: aiosqlite.Connection, busy_timeout: float) -> str:
    """``PRAGMA journal_mode = WAL``, retried: while another connection is opening a new
    database, the switch fails at once with "database is locked" (SQLite does not call the
    busy handler for it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + busy_timeout
    delay = 0.005
    while True:
        try:
            rows = list(await conn.execute_fetchall("PRAGMA journal_mode = WAL"))
            return str(rows[0][0]).lower()
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or loop.time() + delay > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)


async def _connect(
    path: str,
    *,
    busy_timeout: float,
    synchronous: Synchronous,
    check: bool = False,
    images: ImageStore | None = None,
) -> tuple[aiosqlite.Connection, int]:
    """Open a configured connection; returns it and the schema version.

    The file is checked (ours, not newer than this code; with ``check``, also intact and not
    emptied beside ``images``' files) before anything is written to it, not even the switch
    to WAL mode.
    """
    if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
    conn = await aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout)
    try:
        conn.row_factory = sqlite3.Row
        await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000):d}")
        version = await read_version(conn, path)
        if check:
            await _check_before_use(conn, path, version, images)
        mode = await _switch_to_wal(conn, busy_timeout)
        if mode != "wal":
            raise StorageError(
                f"could not switch {path} to WAL mode (it is in {mode!r} mode); is "
                f"it on a network file system, or open in another program?"
            )
        await conn.execute(f"PRAGMA synchronous = {synchronous}")
        await conn.execute("PRAGMA foreign_keys = ON")
        await conn.execute("PRAGMA trusted_schema = OFF")
    except sqlite3.DatabaseError as error:
        await conn.close()
        if "not a database" in str(error):
            raise NotOurDatabase(path, "it is not an SQLite database") from error
        if "malformed" in str(error):
            raise DatabaseDamaged(path, str(error)) from error
        raise
    except BaseException:
        await conn.close()
        raise
    return conn, version


async def _check_before_use(
    conn: aiosqlite.Connection, path: str, version: int, images: ImageStore | None
) -> None:
    """Refuse a damaged database, and an empty one beside stored images.

    SQLite opens a file cut short without complaint and treats a zero-length file as a new
    database, so both would start "fine" with records lost or forgotten.
    """
    if version == 0:
        if images is not None and await _holds_any(images):
            raise EmptyDatabaseBesideImages(path)
        return
    try:
        rows = list(await conn.execute_fetchall("PRAGMA quick_check(3)"))
    except sqlite3.DatabaseError as error:
        raise DatabaseDamaged(path, str(error)) from error
    problems = [str(row[0]) for row in rows if str(row[0]) != "ok"]
    if problems:
        raise DatabaseDamaged(path, "; ".join(problems))


async def _holds_any(images: ImageStore) -> bool:
    async for _ in images.scan():
        return True
    return False


async def migrate(
    path: str | os.PathLike[str],
    *,
    images: ImageStore | None = None,
    target: int = LATEST_VERSION,
    backup: bool = True,
    busy_timeout: float = 30.0,
) -> tuple[int, int]:
    """Apply pending migrations to the database at ``path`` (created if missing), or at a
    PostgreSQL URL (``postgresql://...``; no backup is made there: use ``pg_dump``).

    Returns ``(from_version, to_version)``; equal when there was nothing to do. Before
    changing an existing database it is copied to ``<path>.v<from_version>.bak``.
    Raises ``SchemaTooNew`` for a database newer than this code (a downgrade is refused),
    and the same errors as ``Database.open`` for a damaged one or an empty one beside the
    ``images`` store's files. This is what ``diffusion-chat migrate`` runs.
    """
    name = os.fspath(path)
    if is_postgres_url(name):
        from .postgres import apply_pg_migrations, create_pool, redact_url

        pool = await create_pool(name, min_size=1, max_size=1)
        try:
            return await apply_pg_migrations(pool, redact_url(name), target=target)
        finally:
            await pool.close()
    check_sqlite_version()
    Path(name).parent.mkdir(parents=True, exist_ok=True)
    conn, current = await _connect(
        name, busy_timeout=busy_timeout, synchronous="FULL", check=True, images=images
    )
    try:
        if backup and 0 < current < target:
            await backup_before_migration(conn, name, current)
        return await apply_migrations(conn, name, target=target)
    finally:
        await conn.close()


class _Opening:
    """What ``Database.open`` returns: ``await`` it, or use it with ``async with``."""

    def __init__(self, factory: Callable[[], Awaitable[Database]]) -> None:
        self._factory = factory
        self._db: Database | None = None

    def __await__(self) -> Generator[Any, None, Database]:
        return self._factory().__await__()

    async def __aenter__(self) -> Database:
        self._db = await self._factory()
        return self._db

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._db is not None:
            await self._db.close()


class Database:
    """The bot's storage. Open with ``await Database.open(path, images=...)``.

    Repositories: ``jobs``, ``images``, ``favourites``, ``history`` (prompts), ``quotas``,
    ``guilds``, ``users``, ``api_keys``, ``library``, ``usage``, ``custom_models``.
    Cross-cutting operations (jobs with their files, retention) are methods here.
    """

    def __init__(self, ctx: Context, schema_version: int) -> None:
        self._ctx = ctx
        self.path = ctx.path
        self.schema_version = schema_version
        self.jobs = JobRepository(ctx)
        self.images = ImageRepository(ctx)
        self.favourites = FavouriteRepository(ctx)
        self.history = PromptHistoryRepository(ctx)
        self.quotas = QuotaRepository(ctx)
        self.guilds = GuildRepository(ctx)
        self.users = UserRepository(ctx)
        self.api_keys = ApiKeyRepository(ctx)
        self.idempotency = IdempotencyRepository(ctx)
        self.library = LibraryRepository(ctx)
        self.usage = UsageRepository(ctx)
        self.safety = SafetyRepository(ctx)
        self.custom_models = CustomModelRepository(ctx)
        self.result_cache = ResultCacheRepository(ctx)
        self._closed = False

    def __repr__(self) -> str:
        return f"Database({self.path!r}, schema_version={self.schema_version})"

    # -- opening and closing

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        images: ImageStore | None = None,
        clock: Clock | None = None,
        default_policy: QuotaPolicy = DEFAULT_POLICY,
        synchronous: Synchronous = "FULL",
        busy_timeout: float = 10.0,
        migrate: bool = True,
        backup_before_migrate: bool = True,
        pool_size: int = 10,
    ) -> _Opening:
        """Open (creating if needed) and migrate the database at ``path``: an SQLite file,
        or a PostgreSQL URL (``postgresql://user:password@host/db``) for several front
        processes sharing one database; ``pool_size`` is then the most connections it opens
        (``synchronous``, ``busy_timeout`` and ``backup_before_migrate`` are SQLite's).

        ``images``: the image store (needed by ``images.store``, ``complete_job`` and the
        file half of ``cleanup``). ``clock``: injectable time (aware datetimes).
        ``default_policy``: the built-in quota policy. ``migrate=False`` refuses an
        outdated database with ``SchemaOutdated`` instead of upgrading it. A database newer
        than this code raises ``SchemaTooNew``; one that fails SQLite's quick check raises
        ``DatabaseDamaged``; an empty (or missing) one while ``images`` holds files raises
        ``EmptyDatabaseBesideImages``.
        """

        async def factory() -> Database:
            if is_postgres_url(os.fspath(path)):
                return await cls._open_postgres(
                    os.fspath(path),
                    images=images,
                    clock=clock or system_clock,
                    default_policy=default_policy,
                    migrate=migrate,
                    pool_size=pool_size,
                )
            return await cls._open(
                os.fspath(path),
                images=images,
                clock=clock or system_clock,
                default_policy=default_policy,
                synchronous=synchronous,
                busy_timeout=busy_timeout,
                migrate=migrate,
                backup_before_migrate=backup_before_migrate,
            )

        return _Opening(factory)

    @classmethod
    def open_data_dir(cls, data_dir: str | os.PathLike[str], **options: Any) -> _Opening:
        """``DATA_DIR/diffusion-chat.sqlite3`` with a ``LocalImageStore`` on ``DATA_DIR/images``."""
        root = Path(data_dir)
        options.setdefault("images", LocalImageStore(root / IMAGES_DIR))
        return cls.open(root / DATABASE_FILE, **options)

    @classmethod
    async def _open(
        cls,
        path: str,
        *,
        images: ImageStore | None,
        clock: Clock,
        default_policy: QuotaPolicy,
        synchronous: Synchronous,
        busy_timeout: float,
        migrate: bool,
        backup_before_migrate: bool,
    ) -> Database:
        check_sqlite_version()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        writer, version = await _connect(
            path, busy_timeout=busy_timeout, synchronous=synchronous, check=True, images=images
        )
        reader: aiosqlite.Connection | None = None
        try:
            if version < LATEST_VERSION:
                if not migrate:
                    raise SchemaOutdated(path, version, LATEST_VERSION)
                if backup_before_migrate and version > 0:
                    await backup_before_migration(writer, path, version)
                _, version = await apply_migrations(writer, path)
            reader, _ = await _connect(path, busy_timeout=busy_timeout, synchronous=synchronous)
            await reader.execute("PRAGMA query_only = ON")
            await reader.create_function("dc_fold", 1, fold, deterministic=True)
        except BaseException:
            await writer.close()
            if reader is not None:
                await reader.close()
            raise
        ctx = Context(
            path=path,
            writer=writer,
            reader=reader,
            clock=clock,
            files=images,
            default_policy=default_policy,
            write_lock=asyncio.Lock(),
            read_lock=asyncio.Lock(),
        )
        return cls(ctx, version)

    @classmethod
    async def _open_postgres(
        cls,
        url: str,
        *,
        images: ImageStore | None,
        clock: Clock,
        default_policy: QuotaPolicy,
        migrate: bool,
        pool_size: int,
    ) -> Database:
        # SQLite's file checks (quick_check, WAL, a backup beside the file, an empty file
        # beside images) have no PostgreSQL counterpart: the server keeps its own data
        # intact and durable, and backups are pg_dump's job.
        from .postgres import PgServer, apply_pg_migrations, create_pool, pg_version, redact_url

        where = redact_url(url)
        pool = await create_pool(url, min_size=1, max_size=pool_size)
        try:
            version = await pg_version(pool, where)
            if version < LATEST_VERSION:
                if not migrate:
                    raise SchemaOutdated(where, version, LATEST_VERSION)
                _, version = await apply_pg_migrations(pool, where)
        except BaseException:
            await pool.close()
            raise
        ctx = Context(
            path=where,
            writer=None,
            reader=None,
            clock=clock,
            files=images,
            default_policy=default_policy,
            write_lock=asyncio.Lock(),
            read_lock=asyncio.Lock(),
            server=PgServer(pool),
        )
        return cls(ctx, version)

    async def close(self) -> None:
        """Close the connections (idempotent). Pending transactions finish first."""
        if self._closed:
            return
        self._closed = True
        if self._ctx.server is not None:
            await self._ctx.server.close()
            return
        assert self._ctx.writer is not None and self._ctx.reader is not None
        async with self._ctx.write_lock:
            with contextlib.suppress(sqlite3.Error):
                await self._ctx.writer.execute("PRAGMA optimize")
            await self._ctx.writer.close()
        async with self._ctx.read_lock:
            await self._ctx.reader.close()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def files(self) -> ImageStore | None:
        """The image store this database was opened with."""
        return self._ctx.files

    def now(self) -> dt.datetime:
        """The injected clock's time."""
        return self._ctx.now()

    # -- jobs with quotas and files

    async def create_job(
        self, job: NewJob, policy: QuotaPolicy, *, remember_prompt: bool = False
    ) -> Job:
        """``jobs.create``: record the job and spend its images atomically, or raise
        ``QuotaExceeded``."""
        return await self.jobs.create(job, policy, remember_prompt=remember_prompt)

    async def complete_job(
        self,
        job_id: str,
        outputs: Sequence[GeneratedImage],
        *,
        timings: dict[str, Any] | None = None,
        generation_seconds: float | None = None,
        flags: Sequence[Flag] = (),
    ) -> CompletedJob:
        """Store each image (file + WebP thumbnail) and mark the job done with their
        records, in one transaction. Files are written (and fsynced) before the commit, so
        a recorded image always has its file. Raises ``InvalidTransition`` if the job was
        cancelled meanwhile (its files are then swept by ``cleanup`` later).

        ``flags``: the image check's verdicts. Each goes to the audit log; a blocked image
        is kept there instead of among the job's images, and given back to the quota."""
        files = self.images.files
        job = await self.jobs.get(job_id)
        if job.finished:
            raise InvalidTransition(job_id, job.status.value, "done")

        async def store(output: GeneratedImage) -> tuple[NewImage, bytes, bytes]:
            new, thumbnail = await store_file_and_thumbnail(
                files, output.data, index=output.index, seed=output.seed
            )
            return new, output.data, thumbnail

        stored = await asyncio.gather(*(store(output) for output in outputs))

        async def ensure_files() -> None:
            # Inside the write transaction: ``cleanup`` deletes files only inside one too,
            # so a file it removed between our put and this commit is noticed and rewritten.
            for new, data, thumbnail in stored:
                if not await files.exists(new.file_key):
                    await files.put(data)
                if new.thumbnail_key and not await files.exists(new.thumbnail_key):
                    await files.put(thumbnail, ext="webp")

        return await self.jobs._mark_done(
            job_id, [new for new, _, _ in stored], timings, generation_seconds, ensure_files, flags
        )

    # -- retention

    async def cleanup(
        self,
        older_than_days: float,
        *,
        file_grace: dt.timedelta = dt.timedelta(hours=1),
        sweep_orphans: bool = True,
    ) -> CleanupReport:
        """Delete images older than ``older_than_days`` that nobody favourited, and their
        files unless another image record still uses them (content-addressed files are
        shared by identical images). Favourited images, their files and their thumbnails stay.
        A server with its own retention (``/settings retention``) has its images kept that
        many days instead, longer or shorter.

        Also: forgets expired interaction tokens of finished jobs and expired library views;
        with ``sweep_orphans`` deletes stored files that no record points at (a crash between
        storing a file and recording it leaves those); removes temporary files a crash left
        mid-write. Files modified within ``file_grace`` are never deleted: a job may be about
        to record them. Job records stay (``/history`` still lists them, without images).
        """
        if older_than_days < 0:
            raise ValueError("older_than_days must be 0 or more")
        ctx = self._ctx
        now = ctx.now()

        def cutoff(days: float) -> str:
            return to_db(now - dt.timedelta(days=days))

        async with ctx.read() as tx:
            own_retention = {
                row[0]: row[1]
                for row in await tx.all(
                    "SELECT id, retention_days FROM guilds WHERE retention_days IS NOT NULL"
                )
            }
        candidates: dict[str, None] = {}
        rules = [
            (
                "(jobs.guild_id IS NULL OR jobs.guild_id NOT IN "
                f"({', '.join('?' * len(own_retention))}))",
                [*own_retention],
                cutoff(older_than_days),
            )
        ]
        rules += [
            ("jobs.guild_id = ?", [guild], cutoff(days)) for guild, days in own_retention.items()
        ]
        images_deleted = 0
        for condition, params, before in rules:
            images_deleted += await self._delete_old_images(condition, params, before, candidates)
        async with ctx.write() as tx:
            tokens_cleared = await tx.run(
                """UPDATE jobs SET interaction_token = NULL
                   WHERE interaction_token IS NOT NULL AND token_expires_at < ?
                     AND status IN ('done', 'failed', 'cancelled')""",
                (to_db(now),),
            )
            await tx.run(
                "DELETE FROM library_views WHERE created_at < ?", (to_db(now - VIEW_LIFETIME),)
            )
        report = CleanupReport(images_deleted=images_deleted, tokens_cleared=tokens_cleared)
        files = ctx.files
        if files is None:
            return report
        fresh_after = now - file_grace
        deleted, freed, kept = await self._delete_unreferenced(list(candidates), fresh_after)
        orphans = orphan_bytes = 0
        if sweep_orphans:
            old_keys = [
                item.key
                async for item in files.scan()
                if item.modified_at <= fresh_after and item.key not in candidates
            ]
            orphans, orphan_bytes, _ = await self._delete_unreferenced(old_keys, fresh_after)
        temp = 0
        if isinstance(files, LocalImageStore):
            temp = await files.remove_stale_temp_files(file_grace)
        return CleanupReport(
            images_deleted=images_deleted,
            files_deleted=deleted + orphans,
            bytes_freed=freed + orphan_bytes,
            files_kept_recent=kept,
            orphan_files_deleted=orphans,
            temp_files_deleted=temp,
            tokens_cleared=tokens_cleared,
        )

    async def _delete_old_images(
        self, condition: str, params: list[Any], before: str, candidates: dict[str, None]
    ) -> int:
        """Delete (in batches) unfavourited images created before ``before`` whose job meets
        ``condition``; their file keys are added to ``candidates``. Returns how many."""
        deleted = 0
        while True:
            async with self._ctx.write() as tx:
                rows = await tx.all(
                    f"""SELECT images.id, images.file_key, images.thumbnail_key FROM images
                        JOIN jobs ON jobs.id = images.job_id
                        WHERE images.created_at < ? AND {condition}
                          AND NOT EXISTS (SELECT 1 FROM favourites WHERE image_id = images.id)
                        ORDER BY images.created_at LIMIT ?""",
                    (before, *params, _CLEANUP_BATCH),
                )
                if not rows:
                    return deleted
                ids = [row[0] for row in rows]
                await tx.run(f"DELETE FROM images WHERE id IN ({', '.join('?' * len(ids))})", ids)
            deleted += len(rows)
            for row in rows:
                candidates[row[1]] = None
                if row[2]:
                    candidates[row[2]] = None

    async def forget_user(self, user_id: int) -> ForgetReport:
        """Delete everything of this user's, in every server and DM: jobs, their images and
        files (and uploads), favourites, prompt history, API keys. Refused (``InvalidInput``)
        while one of their jobs is unfinished. Kept: moderators' quota settings about them,
        and today's image count (without the jobs it names), so forgetting is no way round a
        limit. Other people's upscales of their public images stay, without the link back."""
        async with self._ctx.write() as tx:
            unfinished = await tx.scalar(
                "SELECT count(*) FROM jobs WHERE user_id = ? AND status IN ('queued', 'running')",
                (user_id,),
            )
            if unfinished:
                raise InvalidInput(
                    f"You have {unfinished} unfinished job(s). Cancel them or let them finish, "
                    "then ask again."
                )
            jobs = await tx.all(
                "SELECT id, request, share_channel_id, share_message_id FROM jobs"
                " WHERE user_id = ?",
                (user_id,),
            )
            shared_posts = tuple(
                (row["share_channel_id"], row["share_message_id"])
                for row in jobs
                if row["share_channel_id"] and row["share_message_id"]
            )
            ids = [row["id"] for row in jobs]
            keys: set[str] = set()
            for row in await tx.all(
                "SELECT file_key, thumbnail_key FROM images JOIN jobs ON jobs.id = images.job_id"
                " WHERE jobs.user_id = ?",
                (user_id,),
            ):
                keys.update(key for key in (row["file_key"], row["thumbnail_key"]) if key)
            for row in jobs:
                stored = json.loads(row["request"])
                keys.update(
                    stored[name]
                    for name in ("init_image_key", "mask_image_key")
                    if isinstance(stored.get(name), str)
                )
            image_count = await tx.scalar(
                "SELECT count(*) FROM images JOIN jobs ON jobs.id = images.job_id"
                " WHERE jobs.user_id = ?",
                (user_id,),
            )
            await tx.run(
                "UPDATE jobs SET parent_job_id = NULL, parent_image_index = NULL"
                " WHERE parent_job_id IN (SELECT id FROM jobs WHERE user_id = ?)",
                (user_id,),
            )
            await tx.run("UPDATE usage_ledger SET job_id = NULL WHERE user_id = ?", (user_id,))
            starred = [
                row[0]
                for row in await tx.all(
                    "SELECT image_id FROM favourites WHERE user_id = ?", (user_id,)
                )
            ]
            favourites = await tx.run("DELETE FROM favourites WHERE user_id = ?", (user_id,))
            await recount_stars(tx, starred)
            prompts = await tx.run("DELETE FROM prompt_history WHERE user_id = ?", (user_id,))
            await tx.run("DELETE FROM idempotency_keys WHERE user_id = ?", (user_id,))
            api_keys = await tx.run("DELETE FROM api_keys WHERE user_id = ?", (user_id,))
            await tx.run("DELETE FROM library_views WHERE user_id = ?", (user_id,))
            await tx.run("DELETE FROM feedback WHERE user_id = ?", (user_id,))
            await tx.run("DELETE FROM daily_stats")  # recounted without them when next read
            unindex = tx.sql.unindex_user_prompts()
            if unindex is not None:
                await tx.run(unindex, (user_id,))
            await tx.run("DELETE FROM jobs WHERE user_id = ?", (user_id,))  # images cascade
            await tx.run("DELETE FROM users WHERE id = ?", (user_id,))
            # An upload another job still names (the same picture, content-addressed) stays.
            keys = {
                key
                for key in keys
                if not await tx.scalar(
                    "SELECT 1 FROM jobs WHERE instr(request, ?) > 0 LIMIT 1", (key,)
                )
            }
        files_deleted = 0
        if self._ctx.files is not None and keys:
            everything = dt.datetime.max.replace(tzinfo=dt.UTC)  # however recently written
            files_deleted, _, _ = await self._delete_unreferenced(sorted(keys), everything)
        return ForgetReport(
            jobs=len(ids),
            images=int(image_count),
            favourites=favourites,
            prompts=prompts,
            api_keys=api_keys,
            files_deleted=files_deleted,
            shared_posts=shared_posts,
        )

    async def _delete_unreferenced(
        self, keys: list[str], fresh_after: dt.datetime
    ) -> tuple[int, int, int]:
        """Delete the files among ``keys`` that no image record uses and that were not
        modified after ``fresh_after``. Returns (files deleted, bytes freed, kept as fresh)."""
        files = self._ctx.files
        assert files is not None
        deleted = freed = kept = 0
        for start in range(0, len(keys), _FILE_BATCH):
            async with self._ctx.write() as tx:
                for key in keys[start : start + _FILE_BATCH]:
                    if await tx.scalar(
                        "SELECT 1 FROM images WHERE file_key = ?1 "
                        "UNION ALL SELECT 1 FROM images WHERE thumbnail_key = ?1 "
                        # A blocked image waits in the audit log for a moderator.
                        "UNION ALL SELECT 1 FROM safety_log WHERE file_key = ?1 "
                        "UNION ALL SELECT 1 FROM safety_log WHERE thumbnail_key = ?1 LIMIT 1",
                        (key,),
                    ):
                        continue
                    info = await files.stat(key)
                    if info is None:
                        continue
                    if info.modified_at > fresh_after:
                        kept += 1
                        continue
                    if await files.delete(key):
                        deleted += 1
                        freed += info.size
        return deleted, freed, kept

    # -- maintenance

    async def integrity_check(self) -> list[str]:
        """Problems found by ``PRAGMA integrity_check`` and ``foreign_key_check``; ``[]``
        when the database is sound. (PostgreSQL checks its foreign keys at every write and
        its pages itself: nothing to report there.)"""
        if self._ctx.server is not None:
            return []
        async with self._ctx.read() as tx:
            rows = await tx.all("PRAGMA integrity_check")
            problems = [row[0] for row in rows if row[0] != "ok"]
            for row in await tx.all("PRAGMA foreign_key_check"):
                problems.append(f"foreign key: {row[0]} row {row[1]} -> {row[2]}")
        return problems

    async def backup(self, destination: str | os.PathLike[str]) -> Path:
        """A consistent copy of the database (SQLite's online backup), e.g. before upgrades."""
        if self._ctx.reader is None:
            raise StorageError("a PostgreSQL database is backed up with pg_dump")
        dest = Path(destination)
        dest.parent.mkdir(parents=True, exist_ok=True)
        async with self._ctx.read_lock, aiosqlite.connect(dest) as target:
            await self._ctx.reader.backup(target)
        return dest
