"""Favourites: a user's starred images. Retention never deletes a favourited image."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ._base import (
    IMAGE_FIELDS,
    JOB_FIELDS,
    Context,
    Tx,
    columns,
    ensure_user,
    image_from_row,
    job_from_row,
    placeholders,
)
from .clock import from_db, to_db
from .errors import ImageNotFound
from .records import Favourite, Page


async def recount_stars(tx: Tx, image_ids: Sequence[int]) -> None:
    """Bring ``jobs.favourite_count`` up to date for the jobs of these images."""
    for start in range(0, len(image_ids), 500):  # SQLite caps the parameters of a statement
        chunk = list(image_ids[start : start + 500])
        await tx.run(  # a finished day's kept figures count favourited jobs: recount it
            f"""DELETE FROM daily_stats WHERE day IN (
                    SELECT substr(jobs.created_at, 1, 10) FROM jobs JOIN images
                    ON images.job_id = jobs.id WHERE images.id IN ({placeholders(len(chunk))}))""",
            chunk,
        )
        # Lock the jobs first: the count below then sees every star committed before it
        # (PostgreSQL reads a new snapshot per statement), even one added concurrently.
        await tx.all(
            f"""SELECT id FROM jobs WHERE id IN (SELECT job_id FROM images
                WHERE id IN ({placeholders(len(chunk))})) ORDER BY id{tx.sql.for_update}""",
            chunk,
        )
        await tx.run(
            f"""UPDATE jobs SET favourite_count = (
                    SELECT count(*) FROM favourites JOIN images ON images.id = favourites.image_id
                    WHERE images.job_id = jobs.id)
                WHERE id IN (SELECT job_id FROM images
                             WHERE id IN ({placeholders(len(chunk))}))""",
            chunk,
        )


class FavouriteRepository:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def add(self, user_id: int, image_ids: Iterable[int]) -> int:
        """Favourite images; returns how many were new."""
        ids = list(dict.fromkeys(image_ids))
        now = to_db(self._ctx.now())
        async with self._ctx.write() as tx:
            await self._check_images(tx, ids)
            await ensure_user(tx, user_id, now)
            return await self._add(tx, user_id, ids, now)

    async def remove(self, user_id: int, image_ids: Iterable[int]) -> int:
        """Unfavourite images; returns how many were favourites."""
        ids = list(dict.fromkeys(image_ids))
        if not ids:
            return 0
        async with self._ctx.write() as tx:
            removed = await tx.run(
                f"DELETE FROM favourites WHERE user_id = ? "
                f"AND image_id IN ({placeholders(len(ids))})",
                (user_id, *ids),
            )
            await recount_stars(tx, ids)
            return removed

    async def toggle(self, user_id: int, image_ids: int | Iterable[int]) -> bool:
        """⭐ on one image or on a grid's set: if every image is already a favourite,
        unfavourite them all; otherwise favourite the rest. Returns whether they are
        favourites now. Raises ``ImageNotFound`` if an image is gone (retention)."""
        ids = [image_ids] if isinstance(image_ids, int) else list(dict.fromkeys(image_ids))
        if not ids:
            return False
        now = to_db(self._ctx.now())
        async with self._ctx.write() as tx:
            await self._check_images(tx, ids)
            have = await tx.scalar(
                f"SELECT count(*) FROM favourites WHERE user_id = ? "
                f"AND image_id IN ({placeholders(len(ids))})",
                (user_id, *ids),
            )
            if have == len(ids):
                await tx.run(
                    f"DELETE FROM favourites WHERE user_id = ? "
                    f"AND image_id IN ({placeholders(len(ids))})",
                    (user_id, *ids),
                )
                await recount_stars(tx, ids)
                return False
            await ensure_user(tx, user_id, now)
            await self._add(tx, user_id, ids, now)
            return True

    async def choose(self, user_id: int, among: Sequence[int], chosen: Iterable[int]) -> int:
        """Make exactly ``chosen`` the user's favourites among ``among`` (a grid's images):
        star those, unstar the rest. Returns how many are starred now."""
        pick = [image_id for image_id in dict.fromkeys(chosen) if image_id in among]
        others = [image_id for image_id in among if image_id not in pick]
        now = to_db(self._ctx.now())
        async with self._ctx.write() as tx:
            await self._check_images(tx, pick)
            if others:
                await tx.run(
                    f"DELETE FROM favourites WHERE user_id = ? "
                    f"AND image_id IN ({placeholders(len(others))})",
                    (user_id, *others),
                )
            await ensure_user(tx, user_id, now)
            await self._add(tx, user_id, pick, now)
            await recount_stars(tx, list(among))
        return len(pick)

    async def is_favourite(self, user_id: int, image_id: int) -> bool:
        async with self._ctx.read() as tx:
            return bool(
                await tx.scalar(
                    "SELECT 1 FROM favourites WHERE user_id = ? AND image_id = ?",
                    (user_id, image_id),
                )
            )

    async def favourited_among(self, user_id: int, image_ids: Iterable[int]) -> set[int]:
        """Which of these images the user has favourited (to draw a filled ⭐)."""
        ids = list(dict.fromkeys(image_ids))
        if not ids:
            return set()
        async with self._ctx.read() as tx:
            rows = await tx.all(
                f"SELECT image_id FROM favourites WHERE user_id = ? "
                f"AND image_id IN ({placeholders(len(ids))})",
                (user_id, *ids),
            )
        return {row[0] for row in rows}

    async def count(self, user_id: int) -> int:
        async with self._ctx.read() as tx:
            return int(
                await tx.scalar("SELECT count(*) FROM favourites WHERE user_id = ?", (user_id,))
            )

    async def list(self, user_id: int, *, offset: int = 0, limit: int = 10) -> Page[Favourite]:
        """The user's favourites, newest first, each with its image and job."""
        if offset < 0 or not 1 <= limit <= 100:
            raise ValueError("offset must be >= 0 and limit in 1..100")
        async with self._ctx.read(snapshot=True) as tx:
            total = await tx.scalar("SELECT count(*) FROM favourites WHERE user_id = ?", (user_id,))
            rows = await tx.all(
                f"""SELECT favourites.created_at AS favourited_at,
                           {columns(IMAGE_FIELDS, "images", "i_")},
                           {columns(JOB_FIELDS, "jobs", "j_")}
                    FROM favourites
                    JOIN images ON images.id = favourites.image_id
                    JOIN jobs ON jobs.id = images.job_id
                    WHERE favourites.user_id = ?
                    ORDER BY favourites.created_at DESC, images.id DESC
                    LIMIT ? OFFSET ?""",
                (user_id, limit, offset),
            )
        items = tuple(
            Favourite(
                user_id=user_id,
                image=image_from_row(row, "i_"),
                job=job_from_row(row, "j_"),
                created_at=from_db(row["favourited_at"]),
            )
            for row in rows
        )
        return Page(items, int(total), offset, limit)

    @staticmethod
    async def _check_images(tx: Tx, ids: Sequence[int]) -> None:
        if not ids:
            return
        found = await tx.scalar(
            f"SELECT count(*) FROM images WHERE id IN ({placeholders(len(ids))})", ids
        )
        if found != len(ids):
            raise ImageNotFound("That image no longer exists.")

    @staticmethod
    async def _add(tx: Tx, user_id: int, ids: Sequence[int], now: str) -> int:
        added = 0
        for image_id in ids:
            added += await tx.run(
                "INSERT INTO favourites (user_id, image_id, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (user_id, image_id, now),
            )
        await recount_stars(tx, ids)
        return added
