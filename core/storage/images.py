"""Image records, and putting image files (with their thumbnails) into the image store."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ._base import IMAGE_COLUMNS, Context, Tx, image_from_row
from .clock import to_db
from .errors import ImageNotFound, InvalidInput, JobNotFound
from .files import ImageStore, inspect_image
from .records import Image, NewImage

MAX_SEED = 2**63 - 1


def _validate(images: Sequence[NewImage]) -> None:
    indexes = [image.index for image in images]
    if len(set(indexes)) != len(indexes):
        raise InvalidInput("Two images of one job share an index.")
    for image in images:
        if image.index < 0 or image.width <= 0 or image.height <= 0 or image.size_bytes < 0:
            raise InvalidInput(f"Image {image.index} has an impossible index or size.")
        if not 0 <= image.seed <= MAX_SEED:
            raise InvalidInput(f"Image {image.index} has a seed out of range.")


async def insert_images(
    tx: Tx, job_id: str, images: Sequence[NewImage], now: str
) -> tuple[Image, ...]:
    _validate(images)
    stored = []
    for image in images:
        row = await tx.one(
            f"""INSERT INTO images (job_id, idx, seed, width, height, content_hash, file_key,
                                    thumbnail_key, size_bytes, created_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING {IMAGE_COLUMNS}""",
            (
                job_id,
                image.index,
                image.seed,
                image.width,
                image.height,
                image.content_hash,
                image.file_key,
                image.thumbnail_key,
                image.size_bytes,
                now,
            ),
        )
        assert row is not None
        stored.append(image_from_row(row))
    return tuple(stored)


async def store_file(files: ImageStore, data: bytes, *, index: int, seed: int) -> NewImage:
    """Put an encoded image and its WebP thumbnail into ``files``; describe both."""
    new, _ = await store_file_and_thumbnail(files, data, index=index, seed=seed)
    return new


async def store_file_and_thumbnail(
    files: ImageStore, data: bytes, *, index: int, seed: int
) -> tuple[NewImage, bytes]:
    """``store_file``, also returning the thumbnail's bytes."""
    facts = await asyncio.to_thread(inspect_image, data)
    file_key = await files.put(data)
    thumbnail_key = await files.put(facts.thumbnail, ext="webp")
    new = NewImage(
        index=index,
        seed=seed,
        width=facts.width,
        height=facts.height,
        content_hash=facts.content_hash,
        file_key=file_key,
        thumbnail_key=thumbnail_key,
        size_bytes=len(data),
    )
    return new, facts.thumbnail


class ImageRepository:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    @property
    def files(self) -> ImageStore:
        if self._ctx.files is None:
            raise RuntimeError("this Database was opened without an image store")
        return self._ctx.files

    async def store(self, data: bytes, *, index: int, seed: int) -> NewImage:
        """Put an image file and its thumbnail into the image store (not yet recorded)."""
        return await store_file(self.files, data, index=index, seed=seed)

    async def add(self, job_id: str, images: Sequence[NewImage]) -> tuple[Image, ...]:
        """Record images of a job without changing its status (``mark_done`` records the
        final ones itself)."""
        now = to_db(self._ctx.now())
        async with self._ctx.write() as tx:
            if not await tx.scalar("SELECT 1 FROM jobs WHERE id = ?", (job_id,)):
                raise JobNotFound(job_id)
            return await insert_images(tx, job_id, images, now)

    async def find(self, image_id: int) -> Image | None:
        async with self._ctx.read() as tx:
            row = await tx.one(f"SELECT {IMAGE_COLUMNS} FROM images WHERE id = ?", (image_id,))
        return None if row is None else image_from_row(row)

    async def get(self, image_id: int) -> Image:
        image = await self.find(image_id)
        if image is None:
            raise ImageNotFound(f"There is no image {image_id}.")
        return image

    async def find_by_index(self, job_id: str, index: int) -> Image | None:
        """The image a button like U2 or V2 points at (job id and index from its custom_id)."""
        async with self._ctx.read() as tx:
            row = await tx.one(
                f"SELECT {IMAGE_COLUMNS} FROM images WHERE job_id = ? AND idx = ?",
                (job_id, index),
            )
        return None if row is None else image_from_row(row)

    async def for_job(self, job_id: str) -> list[Image]:
        async with self._ctx.read() as tx:
            rows = await tx.all(
                f"SELECT {IMAGE_COLUMNS} FROM images WHERE job_id = ? ORDER BY idx", (job_id,)
            )
        return [image_from_row(row) for row in rows]
