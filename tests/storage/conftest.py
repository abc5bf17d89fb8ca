"""Fixtures for the storage tests: real SQLite files and image files under ``tmp_path``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from s3_support import s3_store
from storage_helpers import START

from core.storage import Database, ImageStore, LocalImageStore, ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "diffusion-chat.sqlite3"


@pytest.fixture
def store(tmp_path: Path) -> LocalImageStore:
    return LocalImageStore(tmp_path / "data" / "images")


@pytest_asyncio.fixture(params=["local", "s3"])
async def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> ImageStore:
    """Each implementation of ``ImageStore`` in turn, for tests of the protocol's behaviour:
    files under ``tmp_path``, then a fresh bucket on a real S3-compatible server."""
    if request.param == "local":
        return LocalImageStore(tmp_path / "data" / "images")
    return await s3_store(request.getfixturevalue("s3_server"))


@pytest_asyncio.fixture
async def db(db_path: Path, store: LocalImageStore, clock: ManualClock) -> AsyncIterator[Database]:
    async with Database.open(db_path, images=store, clock=clock) as database:
        yield database
