"""What is in a picture: detection for /analyze and ``POST /api/cv/yolo/detect``.

The front doors hand over image bytes; this decodes them safely (the upload limits of every
other image input), asks the configured detector (engine.detect: a local model or a YOLO
service) and draws the boxes, all off the event loop.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from core.errors import N_, InvalidField, UserError
from core.storage.errors import ImageNotFound
from core.storage.files import ImageStore, hash_of_key, key_for
from engine.detect import Detection, Detector, annotate, count_labels
from engine.images import encode_png, open_user_image

DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True, slots=True)
class Analysis:
    detections: list[Detection]
    counts: list[tuple[str, int]]  # (label, how many), most first
    annotated_png: bytes
    # The picture, kept for editing what was found (``Analyzer.picture``); None: nothing was.
    picture_id: str | None
    width: int
    height: int
    detector: str  # "local" or "remote"


class Analyzer:
    disabled_reason = N_("Object detection is turned off on this bot.")

    def __init__(
        self,
        detector: Detector | None,
        images: ImageStore,
        *,
        max_pixels: int,
        default_threshold: float = DEFAULT_THRESHOLD,
    ) -> None:
        self.detector = detector
        self.images = images
        self.max_pixels = max_pixels
        self.default_threshold = default_threshold

    @property
    def enabled(self) -> bool:
        return self.detector is not None

    async def analyze(self, data: bytes, threshold: float | None = None) -> Analysis:
        """Raises UserError (the threshold, detection turned off), engine ValidationError (the
        image) or DetectionUnavailable (the service)."""
        if self.detector is None:
            raise UserError(self.disabled_reason)
        chosen = self.default_threshold if threshold is None else float(threshold)
        if not (0.0 < chosen <= 1.0) or math.isnan(chosen):
            raise InvalidField("threshold", N_("The threshold is a number above 0 and at most 1."))
        image = await asyncio.to_thread(open_user_image, data, max_pixels=self.max_pixels)
        detections = await self.detector.detect(image, chosen)
        annotated = await asyncio.to_thread(lambda: encode_png(annotate(image, detections)))
        picture_id = None
        if detections:
            picture = await asyncio.to_thread(encode_png, image)
            picture_id = hash_of_key(await self.images.put(picture, ext="png"))
        return Analysis(
            detections=detections,
            counts=count_labels(detections),
            annotated_png=annotated,
            picture_id=picture_id,
            width=image.width,
            height=image.height,
            detector=self.detector.name,
        )

    async def picture(self, picture_id: str) -> bytes:
        """The PNG of an analysed picture; UserError once cleanup has swept it."""
        try:
            return await self.images.get(key_for(picture_id, "png"))
        except ImageNotFound:
            raise UserError(N_("That picture is no longer kept; run /analyze again.")) from None
