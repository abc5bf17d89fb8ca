"""A user's data, to take away: their images (the PNGs as stored, with their generation
parameters) and ``diffusion-chat-export.json`` (jobs, favourites, API keys), as zip files of
at most ``part_limit`` bytes each, written to a folder one image at a time (memory stays at
about one image, however much there is)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.jobcodec import StoredRequest
from core.storage.database import Database
from core.storage.files import ImageStore
from core.storage.records import Image, Job

PAGE = 100
ZIP_OVERHEAD = 200  # bytes a member adds beside its data (headers, directory entry)
MANIFEST = "diffusion-chat-export.json"


@dataclass
class Export:
    parts: list[Path] = field(default_factory=list)
    jobs: int = 0
    images: int = 0


def _when(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _image_name(job: Job, image: Image) -> str:
    return f"images/{job.created_at:%Y-%m-%d}_{job.id}_{image.index + 1}.png"


def _job_record(job: Job, images: tuple[Image, ...]) -> dict[str, Any]:
    request = StoredRequest.loads(job.request).request
    return {
        "id": job.id,
        "created_at": _when(job.created_at),
        "finished_at": _when(job.finished_at),
        "status": job.status.value,
        "operation": job.kind,
        "server_id": job.guild_id,
        "private": job.private,
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "model": request.model,
        "steps": request.steps,
        "guidance": request.guidance,
        "scheduler": request.scheduler,
        "seed": request.seed,
        "error": job.error,
        "images": [
            {
                "file": _image_name(job, image),
                "seed": image.seed,
                "width": image.width,
                "height": image.height,
            }
            for image in images
        ],
    }


class _Parts:
    """Zip files of at most ``limit`` bytes, opened one after another in ``folder``."""

    def __init__(self, folder: Path, limit: int) -> None:
        self.folder = folder
        self.limit = limit
        self.paths: list[Path] = []
        self._zip: zipfile.ZipFile | None = None
        self._size = 0

    def add(self, name: str, data: bytes) -> None:
        needed = len(data) + len(name) + ZIP_OVERHEAD
        if self._zip is None or (self._size + needed > self.limit and self._size > 0):
            self._next()
        assert self._zip is not None
        # PNGs are compressed already: stored as they are, so a part's size is predictable.
        self._zip.writestr(name, data, compress_type=zipfile.ZIP_STORED)
        self._size += needed

    def _next(self) -> None:
        self.close()
        path = self.folder / f"diffusion-chat-export-{len(self.paths) + 1}.zip"
        self._zip = zipfile.ZipFile(path, "w")
        self.paths.append(path)
        self._size = 0

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None


async def export_user(
    db: Database, images: ImageStore, user_id: int, folder: Path, *, part_limit: int
) -> Export:
    """Write the user's export into ``folder``; nothing when they have no jobs."""
    jobs: list[dict[str, Any]] = []
    parts = _Parts(folder, part_limit)
    result = Export()
    offset = 0
    try:
        while True:
            page = await db.jobs.history(user_id, offset=offset, limit=PAGE)
            for entry in page.items:
                jobs.append(_job_record(entry.job, entry.images))
                for image in entry.images:
                    data = await images.get(image.file_key)
                    await asyncio.to_thread(parts.add, _image_name(entry.job, image), data)
                    result.images += 1
            offset += PAGE
            if offset >= page.total:
                break
        if not jobs:
            return result
        favourites = []
        offset = 0
        while True:
            stars = await db.favourites.list(user_id, offset=offset, limit=PAGE)
            favourites += [
                {"job": star.job.id, "image": star.image.index + 1, "at": _when(star.created_at)}
                for star in stars.items
            ]
            offset += PAGE
            if offset >= stars.total:
                break
        keys = [
            {
                "name": key.name,
                "starts": key.prefix,
                "created_at": _when(key.created_at),
                "revoked_at": _when(key.revoked_at),
            }
            for key in await db.api_keys.for_user(user_id)
        ]
        manifest = {
            "user_id": user_id,
            "exported_at": _when(db.now()),
            "jobs": jobs,
            "favourites": favourites,
            "api_keys": keys,
        }
        body = json.dumps(manifest, ensure_ascii=False, indent=1).encode()
        await asyncio.to_thread(parts.add, MANIFEST, body)
        result.jobs = len(jobs)
    finally:
        await asyncio.to_thread(parts.close)
    result.parts = parts.paths
    return result
