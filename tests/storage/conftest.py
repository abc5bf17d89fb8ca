"""Fixtures for the storage tests: real SQLite files and image files under ``tmp_path``, and
(for the modules that import ``backend`` from ``storage_helpers``) a fresh database on a
throwaway PostgreSQL server too."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from pg_support import PgCluster, require_bin_dir
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


@pytest.fixture
def backend() -> str:
    """The database the test runs on; ``storage_helpers.backend`` overrides it with both."""
    return "sqlite"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    cluster = PgCluster(require_bin_dir())
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def _drop_database(cluster: PgCluster, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(cluster.url())
    try:  # FORCE: also when a killed test process's connection is still being cleaned up
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


async def _create_database(cluster: PgCluster, name: str, template: str | None) -> None:
    import asyncpg

    conn = await asyncpg.connect(cluster.url())
    try:
        if template is None:
            await conn.execute(f"CREATE DATABASE {name}")
            async with Database.open(cluster.url(name)):
                pass  # migrated once; each test copies it
        else:
            await conn.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    finally:
        await conn.close()


_TEMPLATE = "dc_template"
_templates: set[int] = set()


def drop_pg_database(cluster: PgCluster, url: str) -> None:
    asyncio.run(_drop_database(cluster, url.rsplit("/", 1)[1]))


def new_pg_database(cluster: PgCluster, *, migrated: bool = True) -> str:
    """A fresh database's URL: migrated (a copy of one migrated once), or empty. Drop it
    after the test (``drop_pg_database``): the cluster's folder stays small."""
    name = cluster.new_name()
    if not migrated:
        asyncio.run(_create_database(cluster, name, "template0"))
        return cluster.url(name)
    if id(cluster) not in _templates:
        asyncio.run(_create_database(cluster, _TEMPLATE, None))
        _templates.add(id(cluster))
    asyncio.run(_create_database(cluster, name, _TEMPLATE))
    return cluster.url(name)


@pytest.fixture
def db_location(
    backend: str, db_path: Path, request: pytest.FixtureRequest
) -> Iterator[Path | str]:
    """Where the test's database is: the SQLite file, or a fresh PostgreSQL database's URL."""
    if backend != "postgres":
        yield db_path
        return
    cluster = request.getfixturevalue("pg_cluster")
    url = new_pg_database(cluster)
    yield url
    drop_pg_database(cluster, url)


@pytest_asyncio.fixture
async def db(
    db_location: Path | str, store: LocalImageStore, clock: ManualClock
) -> AsyncIterator[Database]:
    async with Database.open(db_location, images=store, clock=clock) as database:
        yield database
