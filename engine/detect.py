"""Object detection: what is in an image, as labelled boxes, from one of two back ends.

- ``LocalDetector``: a transformers object-detection model (YOLOS by default: hustvl/yolos-tiny,
  Apache-2.0) from the hub or a folder, run off the event loop. Ultralytics' YOLO is AGPL-3.0
  and is not bundled.
- ``RemoteDetector``: a YOLO service over HTTP (``YOLO_SERVICE_URL``) with a time limit,
  retries and a circuit breaker. The contract: ``POST`` a multipart form with the image as
  PNG in ``image`` and ``threshold``; the answer is JSON,
  ``{"detections": [{"label": "dog", "score": 0.93, "box": [x0, y0, x1, y1]}, ...]}`` with
  the box in pixels of the image sent.

Both answer ``Detection``s in the image's pixels; ``annotate`` draws them and ``count_labels``
sums them per label.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import torch
from PIL import Image, ImageDraw, ImageFont

from engine.errors import N_, EngineError, ModelLoadError
from engine.images import encode_png

log = logging.getLogger(__name__)

DEFAULT_DETECTOR_MODEL = "hustvl/yolos-tiny"  # Apache-2.0
MAX_DETECTIONS = 100  # beyond this a picture of boxes says nothing
MAX_LABEL_CHARS = 40
_PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Detection:
    label: str
    score: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in the image's pixels


class DetectionUnavailable(EngineError):
    """The detector cannot answer now (a service down, slow or broken); nothing is wrong
    with the request."""


class Detector(Protocol):
    name: str

    async def detect(self, image: Image.Image, threshold: float) -> list[Detection]: ...


# --- local -----------------------------------------------------------------------------------


class LocalDetector:
    """A transformers object-detection model, loaded on first use and kept."""

    name = "local"

    def __init__(
        self,
        source: str = DEFAULT_DETECTOR_MODEL,
        *,
        device: str | None = None,
        local_files_only: bool = False,
    ) -> None:
        self.source = source
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.local_files_only = local_files_only
        self._lock = threading.Lock()  # one load, one inference at a time
        self._model: Any = None
        self._processor: Any = None

    async def detect(self, image: Image.Image, threshold: float) -> list[Detection]:
        return await asyncio.to_thread(self.detect_now, image, threshold)

    def detect_now(self, image: Image.Image, threshold: float) -> list[Detection]:
        with self._lock:
            model, processor = self._load()
            inputs = processor(images=image.convert("RGB"), return_tensors="pt").to(self.device)
            with torch.inference_mode():
                outputs = model(**inputs)
            found = processor.post_process_object_detection(
                outputs, threshold=threshold, target_sizes=[(image.height, image.width)]
            )[0]
        labels: Mapping[int, str] = model.config.id2label
        detections = [
            Detection(
                _clean_label(labels.get(int(label), str(int(label)))),
                float(score),
                _clip_box([float(v) for v in box], image.width, image.height),
            )
            for score, label, box in zip(
                found["scores"].tolist(),
                found["labels"].tolist(),
                found["boxes"].tolist(),
                strict=True,
            )
        ]
        return _strongest(detections)

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            from transformers import AutoImageProcessor, AutoModelForObjectDetection

            started = time.perf_counter()
            try:
                processor = AutoImageProcessor.from_pretrained(
                    self.source, local_files_only=self.local_files_only
                )
                model = AutoModelForObjectDetection.from_pretrained(
                    self.source, local_files_only=self.local_files_only
                )
            except (OSError, ValueError) as error:
                raise ModelLoadError(
                    f"The detection model {self.source!r} could not be loaded "
                    f"({str(error).splitlines()[0][:200]}). Set DETECTOR_MODEL to a hub id or "
                    "a folder of a transformers object-detection model."
                ) from None
            self._model = model.to(self.device).eval()
            self._processor = processor
            log.info("detector %s loaded in %.1fs", self.source, time.perf_counter() - started)
        return self._model, self._processor


# --- remote ----------------------------------------------------------------------------------


class RemoteDetector:
    """A YOLO service over HTTP. Each call has ``timeout_s``; connection failures, time-outs
    and 5xx answers are retried ``retries`` times; after ``breaker_failures`` failed calls in
    a row the service is not asked for ``breaker_open_s`` seconds (answers come at once)."""

    name = "remote"

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 10.0,
        retries: int = 2,
        breaker_failures: int = 3,
        breaker_open_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.retries = retries
        self.breaker_failures = breaker_failures
        self.breaker_open_s = breaker_open_s
        self._clock = clock
        self._failures = 0
        self._open_until = 0.0

    async def detect(self, image: Image.Image, threshold: float) -> list[Detection]:
        wait = self._open_until - self._clock()
        if wait > 0:
            raise DetectionUnavailable(
                N_(
                    "The detection service failed several times in a row; it gets a rest "
                    "for {seconds} s. Try again then."
                ),
                seconds=math.ceil(wait),
            )
        png = await asyncio.to_thread(lambda: encode_png(image.convert("RGB")))
        try:
            answer = await self._ask(png, threshold)
        except DetectionUnavailable:
            self._failures += 1
            if self._failures >= self.breaker_failures:
                self._open_until = self._clock() + self.breaker_open_s
                log.warning("detection service: %d failures; paused", self._failures)
            raise
        self._failures = 0
        return _strongest(parse_detections(answer, image.width, image.height))

    async def _ask(self, png: bytes, threshold: float) -> object:
        last: DetectionUnavailable | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(0.2 * attempt)
            form = aiohttp.FormData()
            form.add_field("image", png, filename="image.png", content_type="image/png")
            form.add_field("threshold", f"{threshold:g}")
            try:
                timeout = aiohttp.ClientTimeout(total=self.timeout_s)
                async with (
                    aiohttp.ClientSession(timeout=timeout) as session,
                    session.post(self.url, data=form) as response,
                ):
                    if response.status >= 500:
                        last = _unreachable()
                        continue
                    if response.status != 200:
                        raise _garbage()
                    try:
                        return await response.json(content_type=None)
                    except (ValueError, aiohttp.ContentTypeError):
                        raise _garbage() from None
            except TimeoutError:
                last = DetectionUnavailable(
                    N_("The detection service did not answer within {seconds} s. Try again later."),
                    seconds=f"{self.timeout_s:g}",
                )
            except aiohttp.ClientError:
                last = _unreachable()
        assert last is not None
        raise last


def _unreachable() -> DetectionUnavailable:
    return DetectionUnavailable(
        N_("The detection service cannot be reached right now. Try again later.")
    )


def _garbage() -> DetectionUnavailable:
    return DetectionUnavailable(
        N_("The detection service answered with something that is not a list of detections.")
    )


def parse_detections(answer: object, width: int, height: int) -> list[Detection]:
    """The service's JSON as detections; anything off the contract is ``_garbage()``."""
    items = answer.get("detections") if isinstance(answer, dict) else None
    if not isinstance(items, list) or len(items) > 10 * MAX_DETECTIONS:
        raise _garbage()
    detections = []
    for item in items:
        if not isinstance(item, dict):
            raise _garbage()
        label, score, box = item.get("label"), item.get("score"), item.get("box")
        if (
            not isinstance(label, str)
            or not isinstance(score, int | float)
            or not _is_number(score)
            or not isinstance(box, list)
            or len(box) != 4
            or not all(_is_number(value) for value in box)
        ):
            raise _garbage()
        clipped = _clip_box([float(value) for value in box], width, height)
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            continue  # outside the image, or empty
        detections.append(Detection(_clean_label(label), min(1.0, max(0.0, float(score))), clipped))
    return detections


def _is_number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


# --- shared ----------------------------------------------------------------------------------


def _clean_label(label: str) -> str:
    printable = "".join(char for char in label if char.isprintable()).strip()
    return printable[:MAX_LABEL_CHARS] or "?"


def _clip_box(box: list[float], width: int, height: int) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box
    x0, x1 = sorted((min(max(x0, 0.0), width), min(max(x1, 0.0), width)))
    y0, y1 = sorted((min(max(y0, 0.0), height), min(max(y1, 0.0), height)))
    return (x0, y0, x1, y1)


def _strongest(detections: list[Detection]) -> list[Detection]:
    return sorted(detections, key=lambda d: -d.score)[:MAX_DETECTIONS]


def count_labels(detections: list[Detection]) -> list[tuple[str, int]]:
    """(label, how many), most first, then by label."""
    counted = Counter(d.label for d in detections)
    return sorted(counted.items(), key=lambda item: (-item[1], item[0]))


def annotate(image: Image.Image, detections: list[Detection]) -> Image.Image:
    """A copy of ``image`` with each detection's box and "label score" drawn on it, one
    colour per label."""
    drawn = image.convert("RGB")
    draw = ImageDraw.Draw(drawn)
    labels = sorted({d.label for d in detections})
    line = max(2, min(drawn.size) // 150)
    font = ImageFont.load_default(size=max(10, min(drawn.size) // 40))
    for detection in sorted(detections, key=lambda d: d.score):  # strongest on top
        colour = _PALETTE[labels.index(detection.label) % len(_PALETTE)]
        x0, y0, x1, y1 = detection.box
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=line)
        caption = f"{detection.label} {detection.score:.2f}"
        left, top, right, bottom = draw.textbbox((x0, y0), caption, font=font)
        lift = min(bottom - top + 2 * line, y0)  # above the box where there is room
        draw.rectangle((left, top - lift, right + 2 * line, bottom - lift), fill=colour)
        draw.text((x0 + line, y0 - lift), caption, fill=(0, 0, 0), font=font)
    return drawn
