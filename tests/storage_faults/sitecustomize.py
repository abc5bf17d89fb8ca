"""Test aid, loaded only by bot processes started with this folder on PYTHONPATH: storage
that refuses writes the way a full disk or a locked database does, for as long as a marker
file exists (the test creates and removes it).

- ``FAULT_FULL_DISK_WHILE=<path>``: storing an image file raises ENOSPC.
- ``FAULT_LOCKED_DB_WHILE=<path>``: every database write raises "database is locked".
- ``FAULT_BROKEN_READS_WHILE=<path>``: every database read raises SQLite's "disk I/O error",
  a failure no user can do anything about (it gets an incident reference).
- ``FAULT_SLOW_SET_MESSAGE_S=<seconds>``: recording a job's message takes that long (a crash
  in that window loses it).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

full_disk = os.environ.get("FAULT_FULL_DISK_WHILE")
locked_db = os.environ.get("FAULT_LOCKED_DB_WHILE")
broken_reads = os.environ.get("FAULT_BROKEN_READS_WHILE")


def present(marker: str) -> bool:
    return os.path.exists(marker)  # a stat, as cheap as the write it stands in front of


slow_set_message = float(os.environ.get("FAULT_SLOW_SET_MESSAGE_S", "0"))

if full_disk or locked_db or broken_reads or slow_set_message:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

if full_disk:
    from core.storage.files import LocalImageStore

    original_put = LocalImageStore.put

    async def put(self: LocalImageStore, *args: Any, **kwargs: Any) -> str:
        if present(full_disk):
            raise OSError(errno.ENOSPC, "No space left on device")
        return await original_put(self, *args, **kwargs)

    LocalImageStore.put = put  # type: ignore[method-assign]

if locked_db:
    from core.storage._base import Context
    from core.storage.errors import DatabaseBusy

    original_write = Context.write

    @contextlib.asynccontextmanager
    async def write(self: Context) -> AsyncIterator[Any]:
        if present(locked_db):
            # What ``Context.write`` raises once the busy timeout has passed.
            raise DatabaseBusy("the database stayed locked") from sqlite3.OperationalError(
                "database is locked"
            )
        async with original_write(self) as tx:
            yield tx

    Context.write = write  # type: ignore[method-assign,assignment]

if broken_reads:
    from core.storage._base import Context

    original_read = Context.read

    @contextlib.asynccontextmanager
    async def read(self: Context, **kwargs: Any) -> AsyncIterator[Any]:
        if present(broken_reads):
            raise sqlite3.OperationalError("disk I/O error")
        async with original_read(self, **kwargs) as tx:
            yield tx

    Context.read = read  # type: ignore[method-assign,assignment]

if slow_set_message:
    from core.storage.jobs import JobRepository

    original_set_message = JobRepository.set_message

    async def set_message(self: JobRepository, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(slow_set_message)
        return await original_set_message(self, *args, **kwargs)

    JobRepository.set_message = set_message  # type: ignore[method-assign]
