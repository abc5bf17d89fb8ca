"""Custom models: the rows /model add writes, read back in order, refused twice, removed."""

from __future__ import annotations

from pathlib import Path

import pytest
from storage_helpers import both_backends  # noqa: F401  (the fixture "backend": SQLite, PostgreSQL)

from core.storage import Database, InvalidInput, ManualClock
from core.storage.custom_models import NewCustomModel

SHA = "ab" * 32


def downloaded(name: str) -> NewCustomModel:
    return NewCustomModel(
        name=name,
        source=f"https://models.example/{name}.safetensors",
        kind="single_file",
        family="sd15",
        added_by=7,
        config="/configs/sd15",
        file_path=f"/data/models/{name}.safetensors",
        sha256=SHA,
        size_bytes=1234,
    )


@pytest.mark.asyncio
async def test_custom_models_are_recorded_listed_in_order_and_removed(
    db: Database, clock: ManualClock
) -> None:
    assert await db.custom_models.all() == []
    first = await db.custom_models.add(downloaded("first"))
    assert first.added_at == clock.now and first.sha256 == SHA and first.size_bytes == 1234
    clock.advance(minutes=1)
    hub = await db.custom_models.add(
        NewCustomModel(name="hub", source="org/model", kind="hub", family="sdxl", added_by=8)
    )
    assert hub.file_path is None and hub.sha256 is None
    assert [m.name for m in await db.custom_models.all()] == ["first", "hub"]
    assert await db.custom_models.get("first") == first
    assert await db.custom_models.get("nothing") is None

    with pytest.raises(InvalidInput, match="exists already"):
        await db.custom_models.add(downloaded("first"))
    assert await db.custom_models.remove("first") == first
    assert await db.custom_models.remove("first") is None
    assert [m.name for m in await db.custom_models.all()] == ["hub"]


@pytest.mark.asyncio
async def test_custom_models_survive_a_reopen(db_location: Path | str, db: Database) -> None:
    await db.custom_models.add(downloaded("kept"))
    await db.close()
    async with Database.open(db_location) as reopened:
        (kept,) = await reopened.custom_models.all()
    assert kept.name == "kept" and kept.config == "/configs/sd15" and kept.family == "sd15"


@pytest.mark.asyncio
async def test_custom_model_fields_are_checked(db: Database) -> None:
    with pytest.raises(InvalidInput, match="kind"):
        await db.custom_models.add(
            NewCustomModel(name="x", source="x", kind="folder", family="sd15", added_by=1)  # type: ignore[arg-type]
        )
    with pytest.raises(InvalidInput, match="SHA-256"):
        await db.custom_models.add(
            NewCustomModel(
                name="x", source="x", kind="single_file", family="sd15", added_by=1, sha256="ab"
            )
        )
