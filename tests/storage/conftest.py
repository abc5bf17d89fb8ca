"""Fixtures for the storage tests: real SQLite files and image files under ``tmp_path``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from storage_helpers import START

from core.storage import Database, LocalImageStore, ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "diffusion-chat.sqlite3"


@pytest.fixture
def store(tmp_path: Path) -> LocalImageStore:
    return LocalImageStore(tmp_path / "data" / "images")


@pytest_asyncio.fixture
async def db(db_path: Path, store: LocalImageStore, clock: ManualClock) -> AsyncIterator[Database]:
    async with Database.open(db_path, images=store, clock=clock) as database:
        yield database
