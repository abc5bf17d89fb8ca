"""Results shared by every front process on one database: a seeded request that any of them
has already generated is answered from the stored images instead of the GPU.

Shared only where it is safe, that is where the request alone decides the pixels and the
answer carries everything the new job needs:
- seeded text-to-image requests (a request without a seed asks for something new; one with
  an input image would need that image in the key);
- registry models from the operator's file, without LoRAs (a custom model or a LoRA can be
  replaced under the same name);
- every image still stored and unhidden, with the image check's score of each, so the new
  job's own server policy decides about it again.
The engine's in-memory cache then answers the job as it does for its own results.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import logging
from collections.abc import Sequence

from PIL import Image as PilImage

from core.storage.database import Database
from core.storage.errors import ImageNotFound, StorageError
from core.storage.files import ImageStore
from core.storage.records import Image
from engine.cache import cache_key
from engine.images import read_png_parameters
from engine.registry import ModelRegistry
from engine.types import GeneratedImage, JobResult, Operation, ResolvedRequest, Timings

log = logging.getLogger(__name__)


class SharedResults:
    def __init__(self, db: Database, images: ImageStore, registry: ModelRegistry) -> None:
        self._db = db
        self._images = images
        self._registry = registry

    def key(self, request: ResolvedRequest) -> str | None:
        """The digest of everything that decides ``request``'s pixels (the model's registry
        entry included), or None where sharing would not be safe."""
        if (
            cache_key(request) is None
            or request.operation is not Operation.TXT2IMG
            or request.loras
            or request.model not in self._registry
            or self._registry.is_custom(request.model)
        ):
            return None
        spec = self._registry.get(request.model)
        text = repr((dataclasses.replace(request, preview_every=0), spec))
        return hashlib.sha256(text.encode()).hexdigest()

    async def find(self, request: ResolvedRequest) -> JobResult | None:
        """A stored answer to ``request``, decoded; None when there is none (or it cannot be
        read now: the GPU answers instead)."""
        key = self.key(request)
        if key is None:
            return None
        try:
            found = await self._db.result_cache.find(key)
            if found is None:
                return None
            stored = sorted(await self._db.images.for_job(found.job_id), key=lambda i: i.index)
            if len(stored) != request.count or len(found.scores) != len(stored):
                return None  # some were deleted by retention, or held back
            datas = await asyncio.gather(*(self._images.get(i.file_key) for i in stored))
        except (ImageNotFound, StorageError, OSError) as error:
            log.warning("a shared result could not be read (%s); generating instead", error)
            return None
        images = await asyncio.gather(
            *(
                asyncio.to_thread(_decoded, data, image, score)
                for data, image, score in zip(datas, stored, found.scores, strict=True)
            )
        )
        return JobResult(
            job_id=found.job_id, request=request, images=tuple(images), timings=Timings()
        )

    async def remember(self, job_id: str, result: JobResult, stored: Sequence[Image]) -> None:
        """``job_id``'s ``stored`` images answer ``result.request`` from now on, if they are
        all of them. Best effort: a failure is logged, never the job's."""
        key = self.key(result.request)
        if key is None or len(stored) != len(result.images):
            return
        try:
            await self._db.result_cache.remember(
                key, job_id, [image.nsfw_score for image in result.images]
            )
        except Exception as error:  # the job is stored; only later reuse is lost
            log.warning("a result could not be shared: %s", error)


def _decoded(data: bytes, image: Image, score: float | None) -> GeneratedImage:
    with PilImage.open(io.BytesIO(data)) as opened:
        picture = opened.convert("RGB")
    return GeneratedImage(
        image=picture,
        seed=image.seed,
        parameters=read_png_parameters(data) or "",
        nsfw_score=score,
    )
