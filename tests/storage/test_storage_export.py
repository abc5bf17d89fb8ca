"""The export: every image of the user's, byte for byte, in parts no larger than the limit,
and a manifest of their jobs and favourites; nothing of anyone else's."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from storage_helpers import (
    both_backends,  # noqa: F401  (the fixture "backend": SQLite, PostgreSQL)
    job_spec,
    make_png,
)

from core.export import MANIFEST, export_user
from core.storage import Database, GeneratedImage, LocalImageStore, QuotaPolicy

pytestmark = pytest.mark.asyncio
FREE = QuotaPolicy.unlimited()
ME, OTHER = 11, 22


async def finished_job(db: Database, user_id: int, prompt: str, seeds: list[int]) -> str:
    job = await db.create_job(job_spec(user_id=user_id, prompt=prompt), FREE)
    await db.jobs.mark_running(job.id)
    outputs = [GeneratedImage(i, seed, make_png(seed, (96, 96))) for i, seed in enumerate(seeds)]
    await db.complete_job(job.id, outputs)
    return job.id


async def test_export_in_parts_with_every_image_and_a_manifest(
    db: Database, store: LocalImageStore, tmp_path: Path
) -> None:
    ids = [await finished_job(db, ME, f"my picture {n}", [n * 10, n * 10 + 1]) for n in range(3)]
    await finished_job(db, OTHER, "not mine", [99])
    starred = (await db.images.for_job(ids[0]))[1]
    await db.favourites.add(ME, [starred.id])
    sizes = [image.size_bytes for job_id in ids for image in await db.images.for_job(job_id)]
    limit = 2 * max(sizes) + 600  # about two images a part

    folder = tmp_path / "export"
    folder.mkdir()
    made = await export_user(db, store, ME, folder, part_limit=limit)

    assert (made.jobs, made.images) == (3, 6) and len(made.parts) >= 3
    members: dict[str, bytes] = {}
    for part in made.parts:
        assert part.stat().st_size <= limit
        with zipfile.ZipFile(part) as archive:
            members |= {name: archive.read(name) for name in archive.namelist()}
    manifest = json.loads(members.pop(MANIFEST))
    assert sorted(job["prompt"] for job in manifest["jobs"]) == [
        f"my picture {n}" for n in range(3)
    ]
    [star] = manifest["favourites"]
    assert (star["job"], star["image"]) == (ids[0], 2)
    listed = {image["file"] for job in manifest["jobs"] for image in job["images"]}
    assert listed == set(members)
    stored = {
        await store.get(image.file_key)
        for job_id in ids
        for image in await db.images.for_job(job_id)
    }
    assert set(members.values()) == stored  # byte for byte, and nothing of OTHER's


async def test_nothing_to_export(db: Database, store: LocalImageStore, tmp_path: Path) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    made = await export_user(db, store, ME, folder, part_limit=10_000)
    assert made.parts == [] and not any(folder.iterdir())
