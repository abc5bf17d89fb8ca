"""The image check's records: each server's action for flagged images (with per-channel
overrides) and the moderators' audit log, which also keeps blocked images until released."""

from __future__ import annotations

from collections.abc import Sequence

from ._base import Context, Row, Tx
from .clock import from_db, from_db_opt, to_db
from .errors import InvalidInput
from .images import insert_images
from .records import (
    Flag,
    FlagAction,
    Image,
    NewImage,
    SafetyAction,
    SafetyEntry,
    SafetyPolicy,
)

SERVER_WIDE = 0  # the channel id of a server's own row in safety_policies
MAX_LOG_PAGE = 50

ENTRY_COLUMNS = (
    "id, job_id, idx, guild_id, channel_id, user_id, prompt, score, action, seed, created_at,"
    " released_by, released_at"
)


class EntryNotFound(InvalidInput):
    """No audit entry with that number in this server."""


class NotHeldBack(InvalidInput):
    """The entry's image was posted blurred: it was never held back."""


class AlreadyReleased(InvalidInput):
    """The entry's image was released before."""


def entry_from_row(row: Row) -> SafetyEntry:
    return SafetyEntry(
        id=row["id"],
        job_id=row["job_id"],
        index=row["idx"],
        guild_id=row["guild_id"],
        channel_id=row["channel_id"],
        user_id=row["user_id"],
        prompt=row["prompt"],
        score=row["score"],
        action=FlagAction(row["action"]),
        seed=row["seed"],
        created_at=from_db(row["created_at"]),
        released_by=row["released_by"],
        released_at=from_db_opt(row["released_at"]),
    )


async def record_flags(
    tx: Tx, job_id: str, flagged: Sequence[tuple[NewImage, Flag]], now: str
) -> tuple[SafetyEntry, ...]:
    """Write an audit entry per flagged image of a finishing job (inside its transaction).
    A blocked image's file stays referenced here, so the file sweep keeps it."""
    job = await tx.one(
        "SELECT user_id, guild_id, channel_id, prompt FROM jobs WHERE id = ?", (job_id,)
    )
    assert job is not None, "the job is checked before its images are recorded"
    entries = []
    for image, flag in flagged:
        held = flag.action is FlagAction.BLOCKED
        row = await tx.one(
            f"""INSERT INTO safety_log (job_id, idx, guild_id, channel_id, user_id, prompt,
                    score, action, seed, width, height, content_hash, file_key,
                    thumbnail_key, size_bytes, created_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                RETURNING {ENTRY_COLUMNS}""",
            (
                job_id,
                image.index,
                job["guild_id"],
                job["channel_id"],
                job["user_id"],
                job["prompt"],
                flag.score,
                flag.action.value,
                image.seed,
                image.width,
                image.height,
                image.content_hash,
                image.file_key if held else None,
                image.thumbnail_key if held else None,
                image.size_bytes,
                now,
            ),
        )
        assert row is not None
        entries.append(entry_from_row(row))
    return tuple(entries)


class SafetyRepository:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def policy(self, guild_id: int | None) -> SafetyPolicy:
        """The server's action and its channel overrides; the default for DMs and servers
        that never chose."""
        if guild_id is None:
            return SafetyPolicy()
        async with self._ctx.read() as tx:
            rows = await tx.all(
                "SELECT channel_id, action FROM safety_policies WHERE guild_id = ?", (guild_id,)
            )
        own = {row["channel_id"]: SafetyAction(row["action"]) for row in rows}
        server = own.pop(SERVER_WIDE, None)
        if server is None:
            return SafetyPolicy(channels=own)
        return SafetyPolicy(server, own, customised=True)

    async def set_action(
        self,
        guild_id: int,
        action: SafetyAction | None,
        *,
        channel_id: int | None = None,
        by: int | None = None,
    ) -> SafetyPolicy:
        """Set the server's action (``channel_id`` None) or a channel's; ``action`` None
        goes back to the default (for a channel: the server's action)."""
        key = SERVER_WIDE if channel_id is None else channel_id
        async with self._ctx.write() as tx:
            if action is None:
                await tx.run(
                    "DELETE FROM safety_policies WHERE guild_id = ? AND channel_id = ?",
                    (guild_id, key),
                )
            else:
                await tx.run(
                    """INSERT INTO safety_policies (guild_id, channel_id, action, updated_by,
                           updated_at) VALUES (?, ?, ?, ?, ?)
                       ON CONFLICT (guild_id, channel_id) DO UPDATE SET action = excluded.action,
                           updated_by = excluded.updated_by, updated_at = excluded.updated_at""",
                    (guild_id, key, action.value, by, to_db(self._ctx.now())),
                )
        return await self.policy(guild_id)

    async def log(
        self, guild_id: int | None, *, limit: int = 10, before_id: int | None = None
    ) -> list[SafetyEntry]:
        """The server's audit log (DMs: ``None``), newest first."""
        limit = max(1, min(limit, MAX_LOG_PAGE))
        async with self._ctx.read() as tx:
            rows = await tx.all(
                f"""SELECT {ENTRY_COLUMNS} FROM safety_log
                    WHERE guild_id IS ? AND id < ? ORDER BY id DESC LIMIT ?""",
                (guild_id, before_id if before_id is not None else 2**63 - 1, limit),
            )
        return [entry_from_row(row) for row in rows]

    async def for_job(self, job_id: str) -> tuple[SafetyEntry, ...]:
        async with self._ctx.read() as tx:
            rows = await tx.all(
                f"SELECT {ENTRY_COLUMNS} FROM safety_log WHERE job_id = ? ORDER BY idx",
                (job_id,),
            )
        return tuple(entry_from_row(row) for row in rows)

    async def release(
        self, entry_id: int, guild_id: int | None, by: int
    ) -> tuple[SafetyEntry, Image]:
        """Give a blocked image back to its job (its owner's history, buttons and the API
        then show it), recording who released it. Raises ``EntryNotFound``, and
        ``InvalidInput`` for an image that was not held back or was released already."""
        now = to_db(self._ctx.now())
        async with self._ctx.write() as tx:
            row = await tx.one(
                "SELECT * FROM safety_log WHERE id = ? AND guild_id IS ?", (entry_id, guild_id)
            )
            if row is None:
                raise EntryNotFound(f"There is no safety log entry #{entry_id} in this server.")
            if row["action"] != FlagAction.BLOCKED.value:
                raise NotHeldBack("That image was posted blurred; there is nothing to release.")
            if row["released_at"] is not None:
                raise AlreadyReleased("That image was released already.")
            (image,) = await insert_images(
                tx,
                row["job_id"],
                [
                    NewImage(
                        index=row["idx"],
                        seed=row["seed"],
                        width=row["width"],
                        height=row["height"],
                        content_hash=row["content_hash"],
                        file_key=row["file_key"],
                        thumbnail_key=row["thumbnail_key"],
                        size_bytes=row["size_bytes"],
                    )
                ],
                now,
            )
            released = await tx.one(
                f"""UPDATE safety_log SET released_by = ?, released_at = ? WHERE id = ?
                    RETURNING {ENTRY_COLUMNS}""",
                (by, now, entry_id),
            )
        assert released is not None
        return entry_from_row(released), image
