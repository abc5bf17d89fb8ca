"""One line for an operator when storage cannot be opened: what is wrong with ``DATA_DIR``
and what to do about it. Used by the bot at start-up and by the ``diffusion-chat`` commands."""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

from core.storage import (
    DRIVER_ERRORS,
    DatabaseBusy,
    DatabaseDamaged,
    DatabaseUnreachable,
    EmptyDatabaseBesideImages,
    ImageStoreUnavailable,
    SchemaError,
    StorageError,
)
from core.storage.database import DATABASE_FILE, IMAGES_DIR

# What opening storage can raise; anything else is a bug and keeps its traceback.
STARTUP_STORAGE_ERRORS: tuple[type[Exception], ...] = (StorageError, *DRIVER_ERRORS, OSError)


def explain_storage_failure(error: BaseException, data_dir: Path) -> str:
    """``error`` (one of ``STARTUP_STORAGE_ERRORS``) as one line naming ``DATA_DIR`` and a fix."""
    if isinstance(error, DatabaseUnreachable):
        return f"DATABASE_URL: {error}. Check the URL, the server and its login."
    where = f"DATA_DIR {data_dir}"
    database = data_dir / DATABASE_FILE
    if isinstance(error, ImageStoreUnavailable):
        return str(error)  # about the bucket (S3_*), not DATA_DIR; names endpoint and bucket
    restore = _restore_advice(database)
    if isinstance(error, EmptyDatabaseBesideImages):
        return (
            f"{where}: the database {DATABASE_FILE} is empty or missing, but {IMAGES_DIR}/ "
            f"beside it holds stored images, so every user's history, favourites and quotas "
            f"would start from nothing. {restore} To really start over, move {IMAGES_DIR}/ "
            f"away first."
        )
    if isinstance(error, DatabaseDamaged):
        return (
            f"{where}: the database {DATABASE_FILE} is damaged ({error.detail}). Stop "
            f"everything that uses it. {restore}"
        )
    if isinstance(error, SchemaError):
        return f"{where}: {error}"
    if isinstance(error, DatabaseBusy) or _sqlite_says(error, "locked", "busy"):
        return (
            f"{where}: the database is locked by another process. Is another bot or a "
            f"diffusion-chat command using the same DATA_DIR? Stop it, or give this one its own."
        )
    if _is_disk_full(error):
        return (
            f"{where}: the disk is full. Free some space, or delete old images with "
            f"`diffusion-chat cleanup --older-than-days 30`."
        )
    if _is_unwritable(error):
        return (
            f"{where} cannot be written ({_detail(error)}). Make it a folder the bot's user "
            f"can write (in Docker the volume must belong to uid 1000), or set DATA_DIR to one."
        )
    return f"{where}: storage could not be opened ({_detail(error)})."


def _restore_advice(database: Path) -> str:
    backups = sorted(
        database.parent.glob(f"{DATABASE_FILE}.v*.bak"),
        key=lambda path: path.stat().st_mtime,
    )
    if backups:
        return (
            f"Restore it from your backup, or from {backups[-1].name} (the copy taken before "
            f"the last upgrade): move {DATABASE_FILE} away and copy the backup in its place."
        )
    return f"Restore it from your backup: move {DATABASE_FILE} away and copy the backup in."


def _sqlite_says(error: BaseException, *words: str) -> bool:
    return isinstance(error, sqlite3.Error) and any(word in str(error).lower() for word in words)


def _is_disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    return _sqlite_says(error, "disk is full")


def _is_unwritable(error: BaseException) -> bool:
    if isinstance(error, OSError):
        return error.errno in (
            errno.EACCES,
            errno.EPERM,
            errno.EROFS,
            errno.ENOTDIR,
            errno.EEXIST,
        )
    return _sqlite_says(error, "unable to open", "readonly", "read-only")


def _detail(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror + (f": {os.fspath(error.filename)}" if error.filename else "")
    return str(error) or type(error).__name__
