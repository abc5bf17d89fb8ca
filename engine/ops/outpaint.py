"""Outpaint: extend an image on chosen sides (or all around) and paint the new area.

The image is padded with its own edge pixels, a mask marks the new area (reaching a few
pixels into the old one so the seam is repainted too), and inpainting fills it. This is the
basis of "zoom out" (all sides) and "pan" (one side).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from engine.errors import N_, ValidationError
from engine.ops.common import OpContext, OpResult, fit_exactly, init_images
from engine.ops.inpaint import run_inpaint
from engine.types import OutpaintSide

ALL_SIDES: tuple[OutpaintSide, ...] = ("left", "right", "top", "bottom")
SEAM_OVERLAP = 8  # pixels of the old image repainted along each new edge
DEFAULT_OUTPAINT_STRENGTH = 1.0  # the new area has no content worth keeping
MIN_INNER_SIDE = 16


def outpaint_padding(sides: Sequence[OutpaintSide], pixels: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) padding; no sides means all four."""
    chosen = set(sides or ALL_SIDES)
    return (
        pixels if "left" in chosen else 0,
        pixels if "top" in chosen else 0,
        pixels if "right" in chosen else 0,
        pixels if "bottom" in chosen else 0,
    )


def outpaint_geometry(
    image_size: tuple[int, int],
    sides: Sequence[OutpaintSide],
    pixels: int,
    *,
    min_size: int,
    max_size: int,
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(inner size, canvas size): the input is scaled (to multiples of 8) so that the
    padded canvas fits the model's size range."""
    left, top, right, bottom = outpaint_padding(sides, pixels)
    pad_x, pad_y = left + right, top + bottom
    width, height = image_size
    room_x, room_y = max_size - pad_x, max_size - pad_y
    if min(room_x, room_y) < MIN_INNER_SIDE:
        raise ValidationError(
            N_(
                "Extending by {pixels} px leaves no room for the image within this model's "
                "{limit} px limit; extend by less."
            ),
            pixels=pixels,
            limit=max_size,
        )
    fit = min(room_x / width, room_y / height)
    if fit < 1.0:
        scale = fit  # large inputs shrink so the canvas fits the maximum size
    else:
        # Small inputs grow until the canvas reaches the model's minimum size.
        grow = max((min_size - pad_x) / width, (min_size - pad_y) / height)
        scale = max(1.0, min(grow, fit))
    inner = (_floor8(width * scale), _floor8(height * scale))
    if min(inner) < MIN_INNER_SIDE:
        raise ValidationError(N_("The image is too small or too narrow to extend."))
    return inner, (inner[0] + pad_x, inner[1] + pad_y)


def _floor8(value: float) -> int:
    return max(8, math.floor(value / 8) * 8)


def pad_for_outpaint(
    image: Image.Image,
    padding: tuple[int, int, int, int],
) -> tuple[Image.Image, Image.Image]:
    """(canvas, mask): the image padded with its edge pixels, and white over the new area."""
    left, top, right, bottom = padding
    pixels = np.asarray(image.convert("RGB"))
    canvas = np.pad(pixels, ((top, bottom), (left, right), (0, 0)), mode="edge")
    mask = np.zeros(canvas.shape[:2], dtype=np.uint8)
    height, width = canvas.shape[0], canvas.shape[1]
    overlap_x = min(SEAM_OVERLAP, image.width // 4)
    overlap_y = min(SEAM_OVERLAP, image.height // 4)
    if left:
        mask[:, : left + overlap_x] = 255
    if right:
        mask[:, width - right - overlap_x :] = 255
    if top:
        mask[: top + overlap_y, :] = 255
    if bottom:
        mask[height - bottom - overlap_y :, :] = 255
    return Image.fromarray(canvas), Image.fromarray(mask)


def outpaint(ctx: OpContext) -> OpResult:
    request = ctx.request
    padding = outpaint_padding(request.outpaint_sides, request.outpaint_pixels)
    left, top, right, bottom = padding
    inner = (request.width - left - right, request.height - top - bottom)
    canvases: list[Image.Image] = []
    masks: list[Image.Image] = []
    for image in init_images(ctx, size=inner):
        canvas, mask = pad_for_outpaint(fit_exactly(image, inner), padding)
        canvases.append(canvas)
        masks.append(mask)
    strength = request.strength or DEFAULT_OUTPAINT_STRENGTH
    return run_inpaint(ctx, canvases, masks, strength=strength)
