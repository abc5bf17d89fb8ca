"""Small builders shared by the engine tests (inputs, callbacks, comparisons)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from engine.types import StepInfo


def noise_image(size: tuple[int, int] = (64, 64), seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def centre_mask(size: tuple[int, int] = (64, 64)) -> Image.Image:
    mask = Image.new("L", size, 0)
    width, height = size
    mask.paste(255, (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    return mask


def never_cancel(_info: StepInfo) -> frozenset[str]:
    return frozenset()


class StepRecorder:
    """An on_step callback that records every step and cancels jobs from a given step."""

    def __init__(self, cancel: frozenset[str] = frozenset(), from_step: int = 1) -> None:
        self.steps: list[StepInfo] = []
        self._cancel = cancel
        self._from_step = from_step

    def __call__(self, info: StepInfo) -> frozenset[str]:
        self.steps.append(info)
        return self._cancel if info.step >= self._from_step else frozenset()


def max_pixel_difference(first: Image.Image, second: Image.Image) -> int:
    a = np.asarray(first.convert("RGB"), dtype=np.int16)
    b = np.asarray(second.convert("RGB"), dtype=np.int16)
    assert a.shape == b.shape
    return int(np.abs(a - b).max())
