"""The schema, as numbered migrations.

``PRAGMA user_version`` holds the number of migrations applied; ``PRAGMA application_id``
marks the file as ours. Each migration runs in its own ``BEGIN IMMEDIATE`` transaction
together with the version bump, so a crash mid-migration leaves the previous version intact,
and two processes starting at once cannot both apply it.

Rules for adding one: append to ``MIGRATIONS``, never edit a released one; one statement per
string; no ``executescript`` (it commits behind our back).

Conventions: STRICT tables; timestamps are UTC ISO 8601 text (see ``clock.py``); Discord ids
are INTEGER; ``guild_key`` columns hold the guild id or 0 for direct messages (0 is never a
snowflake) where a NULL would break uniqueness.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from .errors import NotOurDatabase, SchemaTooNew
from .usage_schema import PG_USAGE_FACTS_SCHEMA, USAGE_FACTS_SCHEMA

APPLICATION_ID = 0x44434854  # "DCHT"
MIN_SQLITE = (3, 37, 0)  # STRICT tables


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]
    # The PostgreSQL form where SQLite's statements have no equivalent; None: derived from
    # them (``postgres.postgres_form``). Same version number, same resulting tables.
    postgres: tuple[str, ...] | None = None


V1_CORE = Migration(
    1,
    "core tables: guilds, users, jobs, images, favourites, prompt history, quotas, ledger",
    (
        """CREATE TABLE guilds (
            id            INTEGER PRIMARY KEY,
            default_model TEXT,
            created_at    TEXT NOT NULL,
            updated_at    TEXT NOT NULL
        ) STRICT""",
        """CREATE TABLE users (
            id         INTEGER PRIMARY KEY,
            created_at TEXT NOT NULL
        ) STRICT""",
        """CREATE TABLE jobs (
            id                 TEXT PRIMARY KEY,
            user_id            INTEGER NOT NULL REFERENCES users(id),
            guild_id           INTEGER REFERENCES guilds(id),
            channel_id         INTEGER,
            message_id         INTEGER,
            interaction_token  TEXT,
            token_expires_at   TEXT,
            kind               TEXT NOT NULL,
            request            TEXT NOT NULL,
            prompt             TEXT NOT NULL,
            image_count        INTEGER NOT NULL CHECK (image_count >= 1),
            private            INTEGER NOT NULL DEFAULT 0 CHECK (private IN (0, 1)),
            parent_job_id      TEXT REFERENCES jobs(id),
            parent_image_index INTEGER,
            status             TEXT NOT NULL DEFAULT 'queued'
                CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
            attempts           INTEGER NOT NULL DEFAULT 1,
            error              TEXT,
            timings            TEXT,
            generation_seconds REAL,
            created_at         TEXT NOT NULL,
            started_at         TEXT,
            finished_at        TEXT
        ) STRICT""",
        "CREATE INDEX jobs_active_user ON jobs(user_id) WHERE status IN ('queued', 'running')",
        "CREATE INDEX jobs_user_created ON jobs(user_id, created_at)",
        "CREATE INDEX jobs_parent ON jobs(parent_job_id) WHERE parent_job_id IS NOT NULL",
        """CREATE TABLE images (
            id            INTEGER PRIMARY KEY,
            job_id        TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            idx           INTEGER NOT NULL CHECK (idx >= 0),
            seed          INTEGER NOT NULL,
            width         INTEGER NOT NULL,
            height        INTEGER NOT NULL,
            content_hash  TEXT NOT NULL,
            file_key      TEXT NOT NULL,
            thumbnail_key TEXT,
            size_bytes    INTEGER NOT NULL,
            created_at    TEXT NOT NULL,
            UNIQUE (job_id, idx)
        ) STRICT""",
        "CREATE INDEX images_created ON images(created_at)",
        "CREATE INDEX images_file_key ON images(file_key)",
        "CREATE INDEX images_thumbnail_key ON images(thumbnail_key)",
        """CREATE TABLE favourites (
            user_id    INTEGER NOT NULL REFERENCES users(id),
            image_id   INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
            created_at TEXT NOT NULL,
            PRIMARY KEY (user_id, image_id)
        ) STRICT, WITHOUT ROWID""",
        "CREATE INDEX favourites_image ON favourites(image_id)",
        """CREATE TABLE prompt_history (
            id         INTEGER PRIMARY KEY,
            user_id    INTEGER NOT NULL REFERENCES users(id),
            guild_key  INTEGER NOT NULL,
            prompt     TEXT NOT NULL,
            private    INTEGER NOT NULL DEFAULT 0 CHECK (private IN (0, 1)),
            created_at TEXT NOT NULL
        ) STRICT""",
        "CREATE INDEX prompt_history_user ON prompt_history(user_id, created_at)",
        """CREATE TABLE quota_policies (
            guild_key       INTEGER NOT NULL,
            scope           TEXT NOT NULL CHECK (scope IN ('guild', 'role', 'user')),
            target_id       INTEGER NOT NULL,
            daily_images    INTEGER CHECK (daily_images >= 0),
            concurrent_jobs INTEGER CHECK (concurrent_jobs >= 0),
            updated_at      TEXT NOT NULL,
            updated_by      INTEGER,
            PRIMARY KEY (guild_key, scope, target_id)
        ) STRICT, WITHOUT ROWID""",
        """CREATE TABLE usage_ledger (
            id         INTEGER PRIMARY KEY,
            guild_key  INTEGER NOT NULL,
            user_id    INTEGER NOT NULL,
            day        TEXT NOT NULL,
            entry      TEXT NOT NULL CHECK (entry IN ('spend', 'refund', 'reset')),
            images     INTEGER NOT NULL CHECK (images >= 0),
            job_id     TEXT REFERENCES jobs(id),
            created_at TEXT NOT NULL,
            created_by INTEGER
        ) STRICT""",
        "CREATE INDEX usage_ledger_user_day ON usage_ledger(guild_key, user_id, day)",
        # One spend and at most one refund per job: refunding twice gives back once.
        "CREATE UNIQUE INDEX usage_ledger_spend ON usage_ledger(job_id) WHERE entry = 'spend'",
        "CREATE UNIQUE INDEX usage_ledger_refund ON usage_ledger(job_id) WHERE entry = 'refund'",
    ),
)

V2_MODERATION = Migration(
    2,
    "banned words, more guild settings, indexes for guild stats and popular prompts",
    (
        """CREATE TABLE banned_words (
            guild_id   INTEGER NOT NULL REFERENCES guilds(id) ON DELETE CASCADE,
            word       TEXT NOT NULL,
            added_by   INTEGER,
            created_at TEXT NOT NULL,
            PRIMARY KEY (guild_id, word)
        ) STRICT, WITHOUT ROWID""",
        "ALTER TABLE guilds ADD COLUMN preview_every INTEGER CHECK (preview_every >= 0)",
        "ALTER TABLE guilds ADD COLUMN private_allowed INTEGER NOT NULL DEFAULT 1",
        "ALTER TABLE guilds ADD COLUMN extra TEXT NOT NULL DEFAULT '{}'",
        "CREATE INDEX jobs_guild_created ON jobs(guild_id, created_at)",
        "CREATE INDEX prompt_history_guild ON prompt_history(guild_key, created_at)",
    ),
)

V3_PRIORITY = Migration(
    3,
    "queue priority (a moderator-set plan) on quota policies",
    (
        "ALTER TABLE quota_policies ADD COLUMN priority INTEGER NOT NULL DEFAULT 0"
        " CHECK (priority BETWEEN -1 AND 1)",
    ),
)

V4_DELIVERY = Migration(
    4,
    "when a finished job's outcome was last shown to its user (a restart re-shows the others)",
    (
        "ALTER TABLE jobs ADD COLUMN delivered_at TEXT",
        # Jobs finished before this column existed were shown already.
        "UPDATE jobs SET delivered_at = finished_at"
        " WHERE status IN ('done', 'failed', 'cancelled')",
        "CREATE INDEX jobs_undelivered ON jobs(created_at)"
        " WHERE delivered_at IS NULL AND status IN ('done', 'failed', 'cancelled')",
    ),
)

V5_UNUSED_GUILD_SETTINGS = Migration(
    5,
    "drop the per-server default model, preview interval and private switch: nothing read them",
    (
        "ALTER TABLE guilds DROP COLUMN default_model",
        "ALTER TABLE guilds DROP COLUMN preview_every",
        "ALTER TABLE guilds DROP COLUMN private_allowed",
    ),
)

V6_API = Migration(
    6,
    "API keys (accounts for the HTTP API), and which front door took each job",
    (
        """CREATE TABLE api_keys (
            id         INTEGER PRIMARY KEY,
            name       TEXT NOT NULL,
            user_id    INTEGER NOT NULL REFERENCES users(id),
            prefix     TEXT NOT NULL,
            hash       TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL,
            revoked_at TEXT
        ) STRICT""",
        "ALTER TABLE jobs ADD COLUMN source TEXT NOT NULL DEFAULT 'discord'",
        # An Idempotency-Key the account sent with the body it came with (hashed), and the
        # job it made; job_id is NULL while that first request is being accepted.
        """CREATE TABLE idempotency_keys (
            user_id    INTEGER NOT NULL,
            key        TEXT NOT NULL,
            body_hash  TEXT NOT NULL,
            job_id     TEXT REFERENCES jobs(id) ON DELETE CASCADE,
            created_at TEXT NOT NULL,
            PRIMARY KEY (user_id, key)
        ) STRICT, WITHOUT ROWID""",
    ),
)

V7_PROMPT_SEARCH = Migration(
    7,
    "full-text index of job prompts (history search), case- and accent-blind",
    (
        # Kept up to date by the code that inserts and deletes jobs, not by triggers: with
        # trusted_schema OFF, SQLite refuses virtual tables inside triggers.
        "CREATE VIRTUAL TABLE jobs_fts USING fts5(prompt, content='jobs',"
        " content_rowid='rowid', tokenize='unicode61 remove_diacritics 2')",
        "INSERT INTO jobs_fts(jobs_fts) VALUES ('rebuild')",
    ),
    # PostgreSQL keeps this index itself (``dialect.PostgresDialect.search_prompts``).
    postgres=(
        "CREATE INDEX jobs_prompt_search ON jobs"
        " USING gin (to_tsvector('simple', dc_unaccent(prompt)))",
    ),
)

V8_LIBRARY = Migration(
    8,
    "the library and the editing loop: per-server gallery channel and image retention, shared,"
    " gallery-removed and hidden results, star counts, saved library views (the filters a"
    " page of /history or /gallery shows), remix mode per user",
    (
        "ALTER TABLE guilds ADD COLUMN gallery_channel_id INTEGER",
        "ALTER TABLE guilds ADD COLUMN retention_days INTEGER"
        " CHECK (retention_days BETWEEN 1 AND 36500)",
        "ALTER TABLE jobs ADD COLUMN shared_at TEXT",
        "ALTER TABLE jobs ADD COLUMN share_channel_id INTEGER",
        "ALTER TABLE jobs ADD COLUMN share_message_id INTEGER",
        "ALTER TABLE jobs ADD COLUMN gallery_removed_at TEXT",
        "ALTER TABLE jobs ADD COLUMN gallery_removed_by INTEGER",
        # Stars on the job's images, kept by the code that adds and removes favourites, so
        # "most favourited" needs no count per job per page.
        "ALTER TABLE jobs ADD COLUMN favourite_count INTEGER NOT NULL DEFAULT 0",
        """UPDATE jobs SET favourite_count = (
               SELECT count(*) FROM favourites JOIN images ON images.id = favourites.image_id
               WHERE images.job_id = jobs.id)
           WHERE id IN (SELECT images.job_id FROM favourites
                        JOIN images ON images.id = favourites.image_id)""",
        # The model a job asked for (its request's), as a column: filtering on it then reads
        # no JSON. Written with the job; NULL means the default model.
        "ALTER TABLE jobs ADD COLUMN model TEXT",
        "UPDATE jobs SET model = json_extract(request, '$.model')",
        # A server's gallery, newest and most favourited, without reading other jobs.
        "CREATE INDEX jobs_gallery ON jobs(guild_id, created_at)"
        " WHERE private = 0 AND status = 'done' AND gallery_removed_at IS NULL",
        "CREATE INDEX jobs_gallery_stars ON jobs(guild_id, favourite_count, created_at)"
        " WHERE private = 0 AND status = 'done' AND gallery_removed_at IS NULL",
        # 🗑 by its owner hides a job from their lists (the record stays until /forget).
        "ALTER TABLE jobs ADD COLUMN hidden_at TEXT",
        # Remix mode: the user edits the prompt before a reroll, variation, zoom or pan.
        "ALTER TABLE users ADD COLUMN remix INTEGER NOT NULL DEFAULT 0 CHECK (remix IN (0, 1))",
        # Page buttons carry a view's id (Discord caps a button id at 100 characters, too
        # few for a search and its filters); the view keeps what the page shows.
        """CREATE TABLE library_views (
            id         TEXT PRIMARY KEY,
            user_id    INTEGER NOT NULL,
            guild_id   INTEGER,
            scope      TEXT NOT NULL,
            query      TEXT NOT NULL,
            created_at TEXT NOT NULL
        ) STRICT""",
        "CREATE INDEX library_views_created ON library_views(created_at)",
    ),
)

V9_USAGE = Migration(
    9,
    "success metrics: 👍/👎 feedback on results, finished days' figures kept, operator keys;"
    " server styles",
    (
        """CREATE TABLE feedback (
            user_id    INTEGER NOT NULL,
            job_id     TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            value      INTEGER NOT NULL CHECK (value IN (-1, 1)),
            created_at TEXT NOT NULL,
            PRIMARY KEY (user_id, job_id)
        ) STRICT, WITHOUT ROWID""",
        "CREATE INDEX feedback_job ON feedback(job_id)",
        """CREATE TABLE daily_stats (
            day         TEXT NOT NULL,
            guild_key   INTEGER NOT NULL,
            stats       TEXT NOT NULL,
            computed_at TEXT NOT NULL,
            PRIMARY KEY (day, guild_key)
        ) STRICT, WITHOUT ROWID""",
        "CREATE INDEX jobs_created ON jobs(created_at)",
        # Styles a server's moderators add (built-in ones live in the code).
        """CREATE TABLE styles (
            guild_id   INTEGER NOT NULL REFERENCES guilds(id) ON DELETE CASCADE,
            name       TEXT NOT NULL,
            template   TEXT NOT NULL,
            negative   TEXT NOT NULL DEFAULT '',
            added_by   INTEGER,
            created_at TEXT NOT NULL,
            PRIMARY KEY (guild_id, name)
        ) STRICT, WITHOUT ROWID""",
        "ALTER TABLE api_keys ADD COLUMN operator INTEGER NOT NULL DEFAULT 0"
        " CHECK (operator IN (0, 1))",
    ),
)

V10_WILDCARDS = Migration(
    10,
    "server wildcards: the value lists that __name__ in a prompt draws from",
    (
        """CREATE TABLE wildcards (
            guild_id   INTEGER NOT NULL REFERENCES guilds(id) ON DELETE CASCADE,
            name       TEXT NOT NULL,
            vals       TEXT NOT NULL,
            added_by   INTEGER,
            created_at TEXT NOT NULL,
            PRIMARY KEY (guild_id, name)
        ) STRICT, WITHOUT ROWID""",
    ),
)

V11_USAGE_FACTS = Migration(
    11,
    "success metrics without JSON: each job's time buckets and advanced settings as columns",
    USAGE_FACTS_SCHEMA,
    postgres=PG_USAGE_FACTS_SCHEMA,
)

V12_SERVER_MODELS = Migration(
    12,
    "server models: a server's default model and the registry models it does not offer",
    (
        "ALTER TABLE guilds ADD COLUMN default_model TEXT",
        "ALTER TABLE guilds ADD COLUMN disabled_models TEXT NOT NULL DEFAULT '[]'",
    ),
)

V13_CONVERSATIONS = Migration(
    13,
    "conversations: a result found by its Discord message, for replies that refine it",
    ("CREATE INDEX jobs_message ON jobs(message_id) WHERE message_id IS NOT NULL",),
)

V14_SAFETY = Migration(
    14,
    "the image check: what a server does with flagged images, and the moderators' audit log"
    " (a held-back image is kept there, not among the job's images, until it is released)",
    (
        """CREATE TABLE safety_policies (
            guild_id   INTEGER NOT NULL,
            channel_id INTEGER NOT NULL,  -- 0: the server's own setting
            action     TEXT NOT NULL CHECK (action IN ('blur', 'block')),
            updated_by INTEGER,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (guild_id, channel_id)
        ) STRICT""",
        """CREATE TABLE safety_log (
            id            INTEGER PRIMARY KEY,
            job_id        TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            idx           INTEGER NOT NULL CHECK (idx >= 0),
            guild_id      INTEGER,
            channel_id    INTEGER,
            user_id       INTEGER NOT NULL,
            prompt        TEXT NOT NULL,
            score         REAL NOT NULL,
            action        TEXT NOT NULL CHECK (action IN ('blurred', 'blocked')),
            seed          INTEGER NOT NULL,
            width         INTEGER NOT NULL,
            height        INTEGER NOT NULL,
            content_hash  TEXT NOT NULL,
            file_key      TEXT,  -- a blocked image's file, kept for release; NULL when blurred
            thumbnail_key TEXT,
            size_bytes    INTEGER NOT NULL,
            created_at    TEXT NOT NULL,
            released_by   INTEGER,
            released_at   TEXT,
            UNIQUE (job_id, idx)
        ) STRICT""",
        "CREATE INDEX safety_log_guild ON safety_log(guild_id, id)",
        "CREATE INDEX safety_log_file_key ON safety_log(file_key) WHERE file_key IS NOT NULL",
    ),
)

# Models the bot's owners add at run time (/model add); the TOML registry still lists the rest.
# Self-contained: nothing else refers to this table, so it can be renumbered freely.
V15_CUSTOM_MODELS = Migration(
    15,
    "custom models: models the bot's owners add at run time, beside the TOML registry",
    (
        """CREATE TABLE custom_models (
            name       TEXT PRIMARY KEY,
            source     TEXT NOT NULL,
            kind       TEXT NOT NULL CHECK (kind IN ('hub', 'single_file')),
            family     TEXT NOT NULL,
            config     TEXT,
            file_path  TEXT,
            sha256     TEXT CHECK (sha256 IS NULL OR length(sha256) = 64),
            size_bytes INTEGER CHECK (size_bytes IS NULL OR size_bytes >= 0),
            added_by   INTEGER NOT NULL,
            added_at   TEXT NOT NULL
        ) STRICT, WITHOUT ROWID""",
    ),
)

V16_RESULT_CACHE = Migration(
    16,
    "stored results of seeded requests, shared by every front process on this database",
    (
        """CREATE TABLE result_cache (
            key        TEXT PRIMARY KEY CHECK (length(key) = 64),
            job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            scores     TEXT NOT NULL,
            created_at TEXT NOT NULL
        ) STRICT, WITHOUT ROWID""",
        "CREATE INDEX result_cache_job ON result_cache (job_id)",
    ),
)

MIGRATIONS: tuple[Migration, ...] = (
    V1_CORE,
    V2_MODERATION,
    V3_PRIORITY,
    V4_DELIVERY,
    V5_UNUSED_GUILD_SETTINGS,
    V6_API,
    V7_PROMPT_SEARCH,
    V8_LIBRARY,
    V9_USAGE,
    V10_WILDCARDS,
    V11_USAGE_FACTS,
    V12_SERVER_MODELS,
    V13_CONVERSATIONS,
    V14_SAFETY,
    V15_CUSTOM_MODELS,
    V16_RESULT_CACHE,
)
LATEST_VERSION = len(MIGRATIONS)

assert all(m.version == i + 1 for i, m in enumerate(MIGRATIONS)), "migrations out of order"


def check_sqlite_version() -> None:
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise RuntimeError(
            f"SQLite {sqlite3.sqlite_version} is too old; Diffusion Chat needs "
            f"{'.'.join(map(str, MIN_SQLITE))} or newer (use a newer Python build)."
        )


async def read_version(conn: aiosqlite.Connection, path: str) -> int:
    """The schema version of an open database, after checking the file is ours."""
    # One statement, so one consistent snapshot even while another process migrates.
    rows = list(
        await conn.execute_fetchall(
            "SELECT (SELECT user_version FROM pragma_user_version()),"
            " (SELECT application_id FROM pragma_application_id()),"
            " (SELECT count(*) FROM sqlite_schema WHERE type = 'table')"
        )
    )
    version, app_id, tables = (int(value) for value in rows[0])
    if app_id not in (0, APPLICATION_ID):
        raise NotOurDatabase(path, f"application_id is {app_id:#x}")
    if app_id == 0 and (version != 0 or tables):
        raise NotOurDatabase(path, "it already holds tables that Diffusion Chat did not make")
    if version > LATEST_VERSION:
        raise SchemaTooNew(path, version, LATEST_VERSION)
    return version


async def apply_migrations(
    conn: aiosqlite.Connection, path: str, *, target: int = LATEST_VERSION
) -> tuple[int, int]:
    """Bring an open connection's schema up to ``target``. Returns (from, to).

    The connection must be in autocommit mode (``isolation_level=None``).
    """
    if not 0 <= target <= LATEST_VERSION:
        raise ValueError(f"target version {target} is not in 0..{LATEST_VERSION}")
    start = await read_version(conn, path)
    if start > target:
        raise SchemaTooNew(path, start, target)
    while True:
        await conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-read under the write lock: another process may have migrated meanwhile.
            current = await read_version(conn, path)
            if current >= target:
                await conn.execute("COMMIT")
                return start, current
            migration = MIGRATIONS[current]
            for statement in migration.statements:
                await conn.execute(statement)
            await conn.execute(f"PRAGMA user_version = {migration.version:d}")
            await conn.execute(f"PRAGMA application_id = {APPLICATION_ID:d}")
            await conn.execute("COMMIT")
        except BaseException:
            await rollback_quietly(conn)
            raise


async def rollback_quietly(conn: aiosqlite.Connection) -> None:
    """Roll back whatever transaction is open, if any.

    Always queued (never decided by ``conn.in_transaction``): after a cancellation the
    ``BEGIN`` may still be waiting in the connection's thread, and the rollback must run
    after it, or the write lock would stay held.
    """
    try:
        await conn.execute("ROLLBACK")
    except sqlite3.OperationalError as error:
        if "no transaction is active" not in str(error):
            raise


def backup_path(path: str | os.PathLike[str], version: int) -> Path:
    return Path(f"{os.fspath(path)}.v{version}.bak")


async def backup_before_migration(conn: aiosqlite.Connection, path: str, version: int) -> Path:
    """Copy the database (consistently, through SQLite's backup API) before migrating it."""
    dest = backup_path(path, version)
    async with aiosqlite.connect(dest) as target:
        await conn.backup(target)
    return dest
