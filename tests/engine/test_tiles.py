"""Tiled upscales (issue 14): beyond what a model draws at once, an upscale is redrawn in
overlapping tiles blended without visible borders."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from PIL import Image

from engine.backend import DiffusersBackend
from engine.errors import Interrupted
from engine.ops import tiles
from engine.ops.upscale import tile_geometry
from engine.types import GenerationRequest, Operation, ResolvedRequest
from tests.engine.helpers import StepRecorder, max_pixel_difference, never_cancel, png

GRADIENT_SIZE = (640, 384)


def gradient(size: tuple[int, int]) -> Image.Image:
    width, height = size
    pixels = np.zeros((height, width, 3), dtype=np.float32)
    pixels[..., 0] = np.linspace(0, 255, width)[None, :]
    pixels[..., 1] = np.linspace(0, 255, height)[:, None]
    pixels[..., 2] = 128
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def border_jump(image: Image.Image, layout: list[tiles.Tile]) -> tuple[float, float]:
    """(largest step between neighbouring pixels across any tile's inner edge, largest step
    anywhere else): a visible seam is a step much larger at borders than elsewhere."""
    pixels = np.asarray(image, dtype=np.float32)
    across = np.abs(np.diff(pixels, axis=1)).max(axis=(0, 2))  # column c to c + 1
    down = np.abs(np.diff(pixels, axis=0)).max(axis=(1, 2))
    columns = {t.left - 1 for t in layout if t.left} | {t.box[2] - 1 for t in layout}
    rows = {t.top - 1 for t in layout if t.top} | {t.box[3] - 1 for t in layout}
    columns = {c for c in columns if 0 <= c < len(across)}
    rows = {r for r in rows if 0 <= r < len(down)}
    at_border = max(max(across[sorted(columns)], default=0), max(down[sorted(rows)], default=0))
    elsewhere_c = np.delete(across, sorted(columns))
    elsewhere_r = np.delete(down, sorted(rows))
    return float(at_border), float(max(elsewhere_c.max(), elsewhere_r.max()))


def test_tiles_cover_the_image_on_multiples_of_eight_with_the_overlap_asked() -> None:
    for length, tile, overlap in ((640, 256, 64), (1024, 512, 128), (520, 512, 128), (64, 64, 16)):
        offsets = tiles.starts(length, tile, overlap)
        assert offsets[0] == 0 and offsets[-1] + tile == length
        assert all(offset % 8 == 0 for offset in offsets[:-1])
        assert all(b - a <= tile - overlap for a, b in itertools.pairwise(offsets))
    layout = tiles.layout(640, 384, 256, 64)
    covered = np.zeros((384, 640), dtype=bool)
    for tile in layout:
        covered[tile.top : tile.box[3], tile.left : tile.box[2]] = True
    assert covered.all()
    with pytest.raises(ValueError):
        tiles.layout(100, 40, 64, 16)  # a tile taller than the image


def test_blending_hides_the_borders_between_tiles_that_disagree() -> None:
    source = gradient(GRADIENT_SIZE)
    layout = tiles.layout(*GRADIENT_SIZE, 256, 64)
    rng = np.random.default_rng(3)
    # Each redrawn tile drifts by its own few levels, as independent redraws do.
    redrawn = [
        Image.fromarray(
            np.clip(np.asarray(source.crop(t.box), np.float32) + rng.uniform(-12, 12), 0, 255)
            .round()
            .astype(np.uint8)
        )
        for t in layout
    ]
    blended = tiles.blend(GRADIENT_SIZE, layout, redrawn)
    at_border, elsewhere = border_jump(blended, layout)
    assert at_border <= elsewhere + 2  # no step at a border beyond the gradient's own
    pasted = np.zeros((GRADIENT_SIZE[1], GRADIENT_SIZE[0], 3), dtype=np.uint8)
    for tile, picture in zip(layout, redrawn, strict=True):
        pasted[tile.top : tile.box[3], tile.left : tile.box[2]] = np.asarray(picture)
    hard_border, hard_elsewhere = border_jump(Image.fromarray(pasted), layout)
    assert hard_border > hard_elsewhere + 8  # the check bites: pasting shows the seams
    # Tiles that agree come back unchanged.
    same = tiles.blend(GRADIENT_SIZE, layout, [source.crop(t.box) for t in layout])
    assert max_pixel_difference(same, source) <= 1


def test_tile_geometry_uses_the_models_own_size_within_the_image() -> None:
    assert tile_geometry((2048, 1536), native=512, max_size=1024) == (512, 128)
    assert tile_geometry((512, 300), native=512, max_size=1024) == (296, 72)
    assert tile_geometry((512, 512), native=64, max_size=256) == (64, 16)


def resolve(backend: DiffusersBackend, **fields: object) -> ResolvedRequest:
    base = GenerationRequest(prompt="a smooth gradient", model="tiny", seed=5)
    return backend.resolve(dataclasses.replace(base, **fields))  # type: ignore[arg-type]


def test_an_upscale_beyond_max_size_is_drawn_in_tiles(backend: DiffusersBackend) -> None:
    source = png(gradient((256, 192)))  # the tiny model draws 256 px at most
    request = resolve(backend, operation=Operation.UPSCALE, init_image=source)
    assert (request.width, request.height) == (512, 384)
    recorder = StepRecorder()
    [image] = backend.run(request, request.slots("tiled"), recorder)
    assert image.image.size == (512, 384)
    steps = [info.step for info in recorder.steps]
    assert steps == sorted(steps) and steps[-1] == recorder.steps[-1].total  # one bar, to 100%
    [again] = backend.run(request, request.slots("tiled"), never_cancel)
    assert max_pixel_difference(image.image, again.image) <= 2  # each tile seeded the same
    cancelled = StepRecorder(cancel=frozenset({"tiled"}), from_step=2)
    with pytest.raises(Interrupted):
        backend.run(request, request.slots("tiled"), cancelled)
    assert len(cancelled.steps) == 2  # stopped at the step it was cancelled in
