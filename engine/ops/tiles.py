"""Tiles for images larger than a model can draw at once: where they go, and how their
redrawn pixels are blended back so that no tile border shows.

Each tile is redrawn independently, so neighbours disagree slightly where they overlap. The
blend weights ramp linearly across each overlap (1 inside a tile, falling to 0 at an inner
edge; edges on the image's border keep full weight), so one tile fades into the next
instead of meeting it at a line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True, slots=True)
class Tile:
    left: int
    top: int
    size: int  # square

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.left, self.top, self.left + self.size, self.top + self.size)


def starts(length: int, tile: int, overlap: int) -> list[int]:
    """Offsets of tiles of ``tile`` pixels covering ``length`` with at least ``overlap``
    pixels shared by neighbours; the last tile ends exactly at ``length``."""
    if tile >= length:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError("overlap must be at least 0 and smaller than the tile")
    stride = tile - overlap
    count = -(-(length - tile) // stride) + 1  # ceil: enough tiles to reach the end
    # Spread the tiles evenly (each overlap at least the one asked for), on multiples of 8
    # so that each tile maps onto whole latent pixels.
    span = length - tile
    return [min(span, round(span * n / (count - 1) / 8) * 8) for n in range(count)]


def layout(width: int, height: int, tile: int, overlap: int) -> list[Tile]:
    """The tiles covering a ``width`` x ``height`` image, row by row."""
    if tile > min(width, height):
        raise ValueError("a tile must fit inside the image")
    return [
        Tile(left, top, tile)
        for top in starts(height, tile, overlap)
        for left in starts(width, tile, overlap)
    ]


def _ramp(size: int, before: int, after: int) -> np.ndarray:
    """1 in the middle, rising over ``before`` pixels at the start and falling over
    ``after`` at the end (0 means that end is on the image's border: full weight)."""
    weights = np.ones(size, dtype=np.float32)
    if before:
        weights[:before] = (np.arange(before, dtype=np.float32) + 0.5) / before
    if after:
        weights[size - after :] = np.minimum(
            weights[size - after :], (np.arange(after, 0, -1, dtype=np.float32) - 0.5) / after
        )
    return weights


def blend(
    size: tuple[int, int], tiles: Sequence[Tile], pictures: Sequence[Image.Image]
) -> Image.Image:
    """The tiles' redrawn pictures put together into one RGB image of ``size``, each
    overlap cross-faded."""
    width, height = size
    total = np.zeros((height, width, 3), dtype=np.float32)
    weight = np.zeros((height, width, 1), dtype=np.float32)
    for tile, picture in zip(tiles, pictures, strict=True):
        left, top, right, bottom = tile.box
        # How far each neighbour reaches into this tile: the ramp covers exactly that.
        fade_left = max(
            (t.box[2] - left for t in tiles if t.left < left and _rows_meet(t, tile)), default=0
        )
        fade_top = max(
            (t.box[3] - top for t in tiles if t.top < top and _cols_meet(t, tile)), default=0
        )
        fade_right = max(
            (right - t.left for t in tiles if t.left > left and _rows_meet(t, tile)), default=0
        )
        fade_bottom = max(
            (bottom - t.top for t in tiles if t.top > top and _cols_meet(t, tile)), default=0
        )
        mask = np.outer(
            _ramp(tile.size, max(0, fade_top), max(0, fade_bottom)),
            _ramp(tile.size, max(0, fade_left), max(0, fade_right)),
        )[:, :, None]
        pixels = np.asarray(picture.convert("RGB"), dtype=np.float32)
        total[top:bottom, left:right] += pixels * mask
        weight[top:bottom, left:right] += mask
    blended = total / np.maximum(weight, 1e-6)
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8), "RGB")


def _rows_meet(a: Tile, b: Tile) -> bool:
    """Whether two tiles share rows (so one can be the other's left or right neighbour)."""
    return a.top < b.box[3] and b.top < a.box[3]


def _cols_meet(a: Tile, b: Tile) -> bool:
    return a.left < b.box[2] and b.left < a.box[2]
