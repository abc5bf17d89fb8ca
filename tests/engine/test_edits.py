"""The editing loop's image work (issue 14): zoom-out and pan canvases, region masks,
inpainting that keeps everything outside its feathered border, plain edits and compare."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image, ImageFilter

from engine import edits
from engine.backend import DiffusersBackend
from engine.errors import ValidationError
from engine.ops.inpaint import FEATHER, keep_outside
from engine.types import GenerationRequest, Operation
from tests.engine.helpers import never_cancel, noise_image, png


def test_zoom_out_keeps_the_size_and_paints_a_border_around_the_shrunk_image() -> None:
    image = noise_image((96, 64), seed=2)
    canvas = edits.zoom_out(image, 2.0)
    assert canvas.image.size == canvas.mask.size == (96, 64)
    mask = np.asarray(canvas.mask)
    assert mask[0, 0] == 255 and mask[-1, -1] == 255  # the border is painted
    assert mask[32, 48] == 0  # the middle (the old image) is kept
    kept = np.argwhere(mask == 0)
    assert kept[:, 1].min() >= 24 and kept[:, 1].max() < 72  # inside the half-size image
    with pytest.raises(ValidationError):
        edits.zoom_out(image, 10)


def test_pan_grows_towards_its_direction_within_the_models_size() -> None:
    image = noise_image((64, 48), seed=3)
    left = edits.pan(image, edits.PanDirection.LEFT, max_size=256)
    assert left.image.size == (96, 48)
    assert np.asarray(left.mask)[:, :32].min() == 255 and np.asarray(left.mask)[:, -1].max() == 0
    # The old pixels sit where they were, shifted right by the new strip.
    assert np.array_equal(np.asarray(left.image)[:, 40:], np.asarray(image)[:, 8:])
    down = edits.pan(image, edits.PanDirection.DOWN, max_size=256)
    assert down.image.size == (64, 72)
    big = edits.pan(noise_image((256, 256)), edits.PanDirection.RIGHT, max_size=256)
    assert max(big.image.size) <= 256 and big.image.size[0] > big.image.size[1]
    again = edits.pan(left.image, edits.PanDirection.LEFT, max_size=256)
    assert again.image.size == (144, 48)  # a panned image pans again


def test_region_masks_and_boxes() -> None:
    left = np.asarray(edits.region_mask((100, 50), edits.Region.LEFT))
    assert left[:, :50].min() == 255 and left[:, 50:].max() == 0
    centre = np.asarray(edits.region_mask((100, 100), edits.Region.CENTRE))
    assert centre[50, 50] == 255 and centre[10, 10] == 0
    box = edits.parse_box("10, 20, 30% 40")
    assert box == (10, 20, 30, 40)
    boxed = np.asarray(edits.region_mask((100, 100), edits.Region.BOX, box))
    assert boxed[30, 20] == 255 and boxed[70, 50] == 0
    for bad in ("1 2 3", "a b c d", "90 0 20 10", "0 0 0 10"):
        with pytest.raises(ValidationError):
            edits.parse_box(bad)
    drawn = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    drawn.paste((255, 255, 255, 255), (0, 0, 10, 20))
    mask = np.asarray(edits.user_mask(drawn, (40, 40)))
    assert mask[:, :20].min() == 255 and mask[:, 20:].max() == 0
    with pytest.raises(ValidationError, match="empty"):
        edits.user_mask(Image.new("L", (8, 8), 0), (8, 8))


def test_inpainting_keeps_every_pixel_outside_its_feathered_border() -> None:
    original = noise_image((64, 64), seed=4)
    repainted = noise_image((64, 64), seed=5)
    mask = edits.region_mask((64, 64), edits.Region.CENTRE)
    result = np.asarray(keep_outside(original, repainted, mask)).astype(int)
    reach = np.asarray(mask.filter(ImageFilter.MaxFilter(2 * FEATHER + 1))) > 0
    assert np.array_equal(result[~reach], np.asarray(original).astype(int)[~reach])
    inside = np.asarray(mask) > 0
    assert np.array_equal(result[inside], np.asarray(repainted).astype(int)[inside])
    # In the border the two are blended, not cut: some pixels lie between them.
    border = reach & ~inside
    assert (result[border] != np.asarray(original).astype(int)[border]).any()


def test_vary_region_through_the_model_changes_only_the_region(
    backend: DiffusersBackend,
) -> None:
    source = noise_image((64, 64), seed=6)
    mask = edits.region_mask((64, 64), edits.Region.LEFT)
    request = backend.resolve(
        GenerationRequest(
            prompt="a red door",
            model="tiny",
            seed=3,
            operation=Operation.INPAINT,
            init_image=png(source),
            mask_image=png(mask),
            strength=1.0,
        )
    )
    [image] = backend.run(request, request.slots("region"), never_cancel)
    result = np.asarray(image.image).astype(int)
    reach = np.asarray(mask.filter(ImageFilter.MaxFilter(2 * FEATHER + 1))) > 0
    assert np.array_equal(result[~reach], np.asarray(source).astype(int)[~reach])
    assert (
        result[np.asarray(mask) > 0] != np.asarray(source).astype(int)[np.asarray(mask) > 0]
    ).any()


def test_plain_edits_crop_rotate_flip_and_filter() -> None:
    image = Image.new("RGB", (120, 60), (200, 100, 50))
    image.paste((0, 0, 255), (0, 0, 10, 10))  # a blue corner to follow
    square = edits.adjust(image, edits.Adjustments(crop_aspect="1:1"))
    assert square.size == (60, 60)
    turned = edits.adjust(image, edits.Adjustments(rotate=90))
    assert turned.size == (60, 120) and turned.getpixel((55, 2))[2] == 255  # corner went right
    flipped = edits.adjust(image, edits.Adjustments(flip="horizontal"))
    assert flipped.getpixel((115, 2))[2] == 255
    grey = edits.adjust(image, edits.Adjustments(filter=edits.Filter.GRAYSCALE))
    r, g, b = grey.getpixel((60, 30))
    assert r == g == b
    brighter = edits.adjust(image, edits.Adjustments(brightness=1.5))
    assert sum(brighter.getpixel((60, 30))) > sum(image.getpixel((60, 30)))
    boxed = edits.adjust(image, edits.Adjustments(crop_box=(0, 0, 50, 50)))
    assert boxed.size == (60, 30)
    sepia = edits.adjust(image, edits.Adjustments(filter=edits.Filter.SEPIA))
    assert sepia.getpixel((60, 30))[0] > sepia.getpixel((60, 30))[2]
    with pytest.raises(ValidationError):
        edits.Adjustments(rotate=45)
    with pytest.raises(ValidationError):
        edits.Adjustments(brightness=9)
    assert (
        edits.Adjustments().neutral
        and not dataclasses.replace(edits.Adjustments(), flip="vertical").neutral
    )


def test_compare_puts_before_and_after_side_by_side() -> None:
    before = Image.new("RGB", (64, 64), (255, 0, 0))
    after = Image.new("RGB", (128, 128), (0, 0, 255))
    sheet = edits.compare(before, after)
    assert sheet.height == 128 and sheet.width > 256
    assert sheet.getpixel((10, 100)) == (255, 0, 0)
    assert sheet.getpixel((sheet.width - 10, 100)) == (0, 0, 255)
