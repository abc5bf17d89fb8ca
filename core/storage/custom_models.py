"""Models the bot's owners added at run time (/model add): what they are, where their weights
came from, and the SHA-256 of a downloaded file. The model registry is the TOML file's models
plus these rows (see ``core.custom_models``)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from ._base import Context, Row
from .clock import from_db, to_db
from .errors import InvalidInput

CustomModelKind = Literal["hub", "single_file"]
_KINDS: tuple[CustomModelKind, ...] = ("hub", "single_file")


@dataclass(frozen=True, slots=True, kw_only=True)
class NewCustomModel:
    name: str
    source: str  # the hub id, or the https URL the file was downloaded from
    kind: CustomModelKind
    family: str  # engine.types.Family's value
    added_by: int
    config: str | None = None  # where a single file's configs come from (folder or hub id)
    file_path: str | None = None  # the downloaded .safetensors file (single files)
    sha256: str | None = None  # of the downloaded file, as hex
    size_bytes: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CustomModel(NewCustomModel):
    added_at: dt.datetime


def _from_row(row: Row) -> CustomModel:
    return CustomModel(
        name=row["name"],
        source=row["source"],
        kind=row["kind"],
        family=row["family"],
        added_by=row["added_by"],
        config=row["config"],
        file_path=row["file_path"],
        sha256=row["sha256"],
        size_bytes=row["size_bytes"],
        added_at=from_db(row["added_at"]),
    )


class CustomModelRepository:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def all(self) -> list[CustomModel]:
        """Every custom model, oldest first (the order they join the registry in)."""
        async with self._ctx.read() as tx:
            rows = await tx.all("SELECT * FROM custom_models ORDER BY added_at, name")
        return [_from_row(row) for row in rows]

    async def get(self, name: str) -> CustomModel | None:
        async with self._ctx.read() as tx:
            row = await tx.one("SELECT * FROM custom_models WHERE name = ?", (name,))
        return None if row is None else _from_row(row)

    async def add(self, model: NewCustomModel) -> CustomModel:
        """Record a model; InvalidInput when the name is taken or a field is wrong."""
        if model.kind not in _KINDS:
            raise InvalidInput(f"A custom model's kind is one of {_KINDS}, not {model.kind!r}.")
        if model.sha256 is not None and len(model.sha256) != 64:
            raise InvalidInput("A SHA-256 is 64 hexadecimal digits.")
        now = self._ctx.now()
        async with self._ctx.write() as tx:
            if await tx.scalar("SELECT 1 FROM custom_models WHERE name = ?", (model.name,)):
                raise InvalidInput(f"A custom model called {model.name!r} exists already.")
            await tx.run(
                "INSERT INTO custom_models (name, source, kind, family, config, file_path,"
                " sha256, size_bytes, added_by, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    model.name,
                    model.source,
                    model.kind,
                    model.family,
                    model.config,
                    model.file_path,
                    model.sha256,
                    model.size_bytes,
                    model.added_by,
                    to_db(now),
                ),
            )
        return CustomModel(
            name=model.name,
            source=model.source,
            kind=model.kind,
            family=model.family,
            added_by=model.added_by,
            config=model.config,
            file_path=model.file_path,
            sha256=model.sha256,
            size_bytes=model.size_bytes,
            added_at=from_db(to_db(now)),
        )

    async def remove(self, name: str) -> CustomModel | None:
        """Forget a custom model; returns what it was (None: there was none)."""
        async with self._ctx.write() as tx:
            row = await tx.one("SELECT * FROM custom_models WHERE name = ?", (name,))
            if row is None:
                return None
            await tx.run("DELETE FROM custom_models WHERE name = ?", (name,))
        return _from_row(row)
