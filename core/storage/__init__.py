"""Durable storage for the bot: jobs, images, favourites, prompt history, quotas.

The only package with SQL in it. Callers use ``Database`` and its repositories, and get
frozen records back, so a PostgreSQL backend (and an S3 ``ImageStore``) can be added behind
the same API. Typical use::

    async with Database.open_data_dir(settings.data_dir) as db:
        policy = await db.quotas.effective_policy(guild_id, user_id, role_ids)
        job = await db.create_job(NewJob(user_id=..., kind="txt2img", request=json_text,
                                         prompt=prompt, image_count=4, guild_id=...),
                                  policy, remember_prompt=True)
        ...
        await db.jobs.mark_running(job.id)
        done = await db.complete_job(job.id, [GeneratedImage(0, seed, png_bytes), ...])
"""

from __future__ import annotations

import sqlite3

import asyncpg

from ._base import UNSET
from .clock import Clock, ManualClock, next_utc_midnight, system_clock
from .database import DATABASE_FILE, IMAGES_DIR, Database, migrate
from .errors import (
    DatabaseBusy,
    DatabaseDamaged,
    DatabaseUnreachable,
    EmptyDatabaseBesideImages,
    ImageNotFound,
    ImageStoreUnavailable,
    InvalidImage,
    InvalidInput,
    InvalidKey,
    InvalidText,
    InvalidTransition,
    JobNotFound,
    LimitKind,
    NotFound,
    NotOurDatabase,
    QuotaExceeded,
    SchemaError,
    SchemaOutdated,
    SchemaTooNew,
    StorageError,
    StorageUserError,
)
from .files import ImageStore, LinkedImageStore, LocalImageStore, StoredObject, content_key
from .migrations import LATEST_VERSION, MIGRATIONS, Migration
from .records import (
    DEFAULT_POLICY,
    TRANSITIONS,
    ActiveCounts,
    BannedWord,
    CleanupReport,
    CompletedJob,
    Favourite,
    GeneratedImage,
    Guild,
    GuildSettings,
    HistoryEntry,
    Image,
    Job,
    JobStatus,
    NewImage,
    NewJob,
    Page,
    PolicySource,
    Priority,
    PromptUse,
    QuotaOverride,
    QuotaPolicy,
    QuotaScope,
    ResumeResult,
    Usage,
    User,
)

# What the database drivers raise besides ``StorageError`` (a failing disk, a lost server
# connection): an operator's problem, retried or reported, never shown to a user.
DRIVER_ERRORS: tuple[type[Exception], ...] = (
    sqlite3.Error,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)

__all__ = [
    "DATABASE_FILE",
    "DEFAULT_POLICY",
    "DRIVER_ERRORS",
    "IMAGES_DIR",
    "LATEST_VERSION",
    "MIGRATIONS",
    "TRANSITIONS",
    "UNSET",
    "ActiveCounts",
    "BannedWord",
    "CleanupReport",
    "Clock",
    "CompletedJob",
    "Database",
    "DatabaseBusy",
    "DatabaseDamaged",
    "DatabaseUnreachable",
    "EmptyDatabaseBesideImages",
    "Favourite",
    "GeneratedImage",
    "Guild",
    "GuildSettings",
    "HistoryEntry",
    "Image",
    "ImageNotFound",
    "ImageStore",
    "ImageStoreUnavailable",
    "InvalidImage",
    "InvalidInput",
    "InvalidKey",
    "InvalidText",
    "InvalidTransition",
    "Job",
    "JobNotFound",
    "JobStatus",
    "LimitKind",
    "LinkedImageStore",
    "LocalImageStore",
    "ManualClock",
    "Migration",
    "NewImage",
    "NewJob",
    "NotFound",
    "NotOurDatabase",
    "Page",
    "PolicySource",
    "Priority",
    "PromptUse",
    "QuotaExceeded",
    "QuotaOverride",
    "QuotaPolicy",
    "QuotaScope",
    "ResumeResult",
    "SchemaError",
    "SchemaOutdated",
    "SchemaTooNew",
    "StorageError",
    "StorageUserError",
    "StoredObject",
    "Usage",
    "User",
    "content_key",
    "migrate",
    "next_utc_midnight",
    "system_clock",
]
