"""Editing a finished image: the canvases and masks behind Zoom Out, Pan and Vary (Region),
which the inpainting model then fills in, and the plain Pillow edits (crop, rotate, flip,
colour filters) that need no model at all. Pure functions of images: callers run them off
the event loop.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from engine.errors import N_, ValidationError

SEAM = 8  # pixels of the old image repainted along a new edge, so the join is redrawn too
PAN_GROWTH = 0.5  # a pan adds half the image's size in its direction
MIN_ZOOM, MAX_ZOOM = 1.1, 4.0


class PanDirection(enum.StrEnum):
    LEFT = "left"
    RIGHT = "right"
    UP = "up"
    DOWN = "down"


class Region(enum.StrEnum):
    LEFT = "left"
    RIGHT = "right"
    TOP = "top"
    BOTTOM = "bottom"
    CENTRE = "centre"
    BOX = "box"  # a box the user gives, in percent of the image


@dataclass(frozen=True, slots=True)
class Canvas:
    """An inpainting input: the picture to start from and the mask of what to paint
    (white), both of the output's size."""

    image: Image.Image
    mask: Image.Image


def _floor8(value: float) -> int:
    return max(8, math.floor(value / 8) * 8)


def fit_within(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``size`` shrunk (never grown) so its longer side is at most ``max_side``, on
    multiples of 8: what a model paints at once, for an image larger than that."""
    scale = min(1.0, max_side / max(size))
    return _floor8(size[0] * scale), _floor8(size[1] * scale)


def zoom_out(image: Image.Image, factor: float) -> Canvas:
    """The image shrunk by ``factor`` in the middle of a canvas of its own size (so the
    result keeps the size and aspect), the new border to be painted."""
    if not MIN_ZOOM <= factor <= MAX_ZOOM:
        raise ValidationError(
            N_("Zoom out by {least} to {most} times."), least=f"{MIN_ZOOM:g}", most=f"{MAX_ZOOM:g}"
        )
    width, height = image.size
    inner = (_floor8(width / factor), _floor8(height / factor))
    left, top = (width - inner[0]) // 2, (height - inner[1]) // 2
    small = image.convert("RGB").resize(inner, Image.Resampling.LANCZOS)
    padded = np.pad(
        np.asarray(small),
        ((top, height - inner[1] - top), (left, width - inner[0] - left), (0, 0)),
        mode="edge",  # the nearest colours: a better start for the painting than grey
    )
    mask = Image.new("L", (width, height), 255)
    keep = (left + SEAM, top + SEAM, left + inner[0] - SEAM, top + inner[1] - SEAM)
    mask.paste(0, keep)
    return Canvas(Image.fromarray(padded), mask)


def pan(image: Image.Image, direction: PanDirection, *, max_size: int) -> Canvas:
    """The image extended by half its size towards ``direction`` (the new strip to be
    painted); shrunk first when the canvas would pass the model's ``max_size``."""
    width, height = image.size
    horizontal = direction in (PanDirection.LEFT, PanDirection.RIGHT)
    grow = _floor8((width if horizontal else height) * PAN_GROWTH)
    canvas_w, canvas_h = (width + grow, height) if horizontal else (width, height + grow)
    scale = min(1.0, max_size / max(canvas_w, canvas_h))
    if scale < 1.0:
        width, height = _floor8(width * scale), _floor8(height * scale)
        grow = _floor8((width if horizontal else height) * PAN_GROWTH)
        canvas_w, canvas_h = (width + grow, height) if horizontal else (width, height + grow)
        image = image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    pixels = np.asarray(image.convert("RGB"))
    pad = {
        PanDirection.LEFT: ((0, 0), (grow, 0)),
        PanDirection.RIGHT: ((0, 0), (0, grow)),
        PanDirection.UP: ((grow, 0), (0, 0)),
        PanDirection.DOWN: ((0, grow), (0, 0)),
    }[direction]
    canvas = np.pad(pixels, (*pad, (0, 0)), mode="edge")
    mask = Image.new("L", (canvas_w, canvas_h), 0)
    seam = min(SEAM, (width if horizontal else height) // 4)
    new_area = {
        PanDirection.LEFT: (0, 0, grow + seam, canvas_h),
        PanDirection.RIGHT: (canvas_w - grow - seam, 0, canvas_w, canvas_h),
        PanDirection.UP: (0, 0, canvas_w, grow + seam),
        PanDirection.DOWN: (0, canvas_h - grow - seam, canvas_w, canvas_h),
    }[direction]
    mask.paste(255, new_area)
    return Canvas(Image.fromarray(canvas), mask)


def parse_box(text: str) -> tuple[float, float, float, float]:
    """A box typed as ``x y w h`` in percent of the image (commas allowed): the left and
    top edges, the width and the height."""
    parts = text.replace(",", " ").replace("%", " ").split()
    try:
        x, y, w, h = (float(part) for part in parts)
    except ValueError:
        raise ValidationError(
            N_(
                "Give the box as four numbers in percent: left, top, width, height "
                "(for example 25 25 50 50)."
            )
        ) from None
    if not (0 <= x < 100 and 0 <= y < 100 and 0 < w <= 100 - x and 0 < h <= 100 - y):
        raise ValidationError(N_("The box must lie inside the image (0 to 100 percent)."))
    return x, y, w, h


def region_mask(
    size: tuple[int, int], region: Region, box: tuple[float, float, float, float] | None = None
) -> Image.Image:
    """White over the region to repaint."""
    width, height = size
    shapes = {
        Region.LEFT: (0.0, 0.0, 50.0, 100.0),
        Region.RIGHT: (50.0, 0.0, 50.0, 100.0),
        Region.TOP: (0.0, 0.0, 100.0, 50.0),
        Region.BOTTOM: (0.0, 50.0, 100.0, 50.0),
        Region.CENTRE: (25.0, 25.0, 50.0, 50.0),
    }
    if region is Region.BOX:
        if box is None:
            raise ValidationError(N_("A box region needs its box."))
        x, y, w, h = box
    else:
        x, y, w, h = shapes[region]
    mask = Image.new("L", size, 0)
    mask.paste(
        255,
        (
            round(width * x / 100),
            round(height * y / 100),
            round(width * (x + w) / 100),
            round(height * (y + h) / 100),
        ),
    )
    return mask


def user_mask(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A mask a user drew: white (or opaque) marks what to repaint, fitted to ``size``."""
    channel = mask.getchannel("A") if mask.mode in ("RGBA", "LA") else mask.convert("L")
    fitted = channel.resize(size, Image.Resampling.NEAREST)
    binary = fitted.point(lambda value: 255 if value >= 128 else 0)
    if not binary.getbbox():
        raise ValidationError(N_("The mask is empty: paint the area to change in white."))
    return binary


# --- plain edits ----------------------------------------------------------------------------


class Filter(enum.StrEnum):
    GRAYSCALE = "grayscale"
    SEPIA = "sepia"
    SHARPEN = "sharpen"
    BLUR = "blur"
    AUTOCONTRAST = "autocontrast"


ASPECTS = {
    "1:1": (1, 1),
    "4:3": (4, 3),
    "3:4": (3, 4),
    "16:9": (16, 9),
    "9:16": (9, 16),
    "3:2": (3, 2),
    "2:3": (2, 3),
}


# One whole sentence per setting, so that each translates as a sentence.
_OUT_OF_RANGE = {
    "brightness": N_("Brightness goes from 0 to 3 (1 leaves it as it is)."),
    "contrast": N_("Contrast goes from 0 to 3 (1 leaves it as it is)."),
    "saturation": N_("Saturation goes from 0 to 3 (1 leaves it as it is)."),
}


@dataclass(frozen=True, slots=True)
class Adjustments:
    """What /edit does, in order: crop, rotate, flip, tone, filter. Neutral by default."""

    crop_aspect: str | None = None  # centre crop to this aspect
    crop_box: tuple[float, float, float, float] | None = None  # x y w h in percent
    rotate: int = 0  # 90, 180, 270 (clockwise)
    flip: str | None = None  # "horizontal" or "vertical"
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0
    filter: Filter | None = None

    def __post_init__(self) -> None:
        if self.rotate not in (0, 90, 180, 270):
            raise ValidationError(N_("Rotate by 90, 180 or 270 degrees."))
        if self.flip not in (None, "horizontal", "vertical"):
            raise ValidationError(N_("Flip horizontal or vertical."))
        if self.crop_aspect is not None and self.crop_aspect not in ASPECTS:
            raise ValidationError(N_("Crop to one of {aspects}."), aspects=", ".join(ASPECTS))
        for name, message in _OUT_OF_RANGE.items():
            if not 0.0 <= getattr(self, name) <= 3.0:
                raise ValidationError(message)

    @property
    def neutral(self) -> bool:
        return self == Adjustments()

    def describe(self) -> str:
        """What the edit does, in a few words (shown with the result and in its PNG)."""
        parts = []
        if self.crop_box is not None:
            parts.append("crop " + " ".join(f"{value:g}" for value in self.crop_box) + " %")
        elif self.crop_aspect is not None:
            parts.append(f"crop {self.crop_aspect}")
        if self.rotate:
            parts.append(f"rotate {self.rotate}°")
        if self.flip:
            parts.append(f"flip {self.flip}")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) != 1.0:
                parts.append(f"{name} {getattr(self, name):g}")
        if self.filter is not None:
            parts.append(self.filter.value)
        return ", ".join(parts) or "no change"


def _sepia(image: Image.Image) -> Image.Image:
    grey = ImageOps.grayscale(image)
    return ImageOps.colorize(grey, black=(38, 24, 12), white=(255, 240, 205), mid=(160, 120, 80))


_FILTERS: dict[Filter, Callable[[Image.Image], Image.Image]] = {
    Filter.GRAYSCALE: lambda image: ImageOps.grayscale(image).convert("RGB"),
    Filter.SEPIA: _sepia,
    Filter.SHARPEN: lambda image: image.filter(ImageFilter.UnsharpMask(radius=2, percent=120)),
    Filter.BLUR: lambda image: image.filter(ImageFilter.GaussianBlur(2)),
    Filter.AUTOCONTRAST: lambda image: ImageOps.autocontrast(image, cutoff=1),
}


def adjust(image: Image.Image, edits: Adjustments) -> Image.Image:
    """The image with ``edits`` applied (RGB)."""
    result = image.convert("RGB")
    if edits.crop_box is not None:
        x, y, w, h = edits.crop_box
        result = result.crop(
            (
                round(result.width * x / 100),
                round(result.height * y / 100),
                round(result.width * (x + w) / 100),
                round(result.height * (y + h) / 100),
            )
        )
    elif edits.crop_aspect is not None:
        across, down = ASPECTS[edits.crop_aspect]
        result = ImageOps.fit(result, _fit_aspect(result.size, across, down))
    if edits.rotate:
        result = result.rotate(-edits.rotate, expand=True)  # Pillow turns anticlockwise
    if edits.flip == "horizontal":
        result = ImageOps.mirror(result)
    elif edits.flip == "vertical":
        result = ImageOps.flip(result)
    if edits.brightness != 1.0:
        result = ImageEnhance.Brightness(result).enhance(edits.brightness)
    if edits.contrast != 1.0:
        result = ImageEnhance.Contrast(result).enhance(edits.contrast)
    if edits.saturation != 1.0:
        result = ImageEnhance.Color(result).enhance(edits.saturation)
    if edits.filter is not None:
        result = _FILTERS[edits.filter](result)
    if min(result.size) < 8:
        raise ValidationError(N_("That crop leaves too little of the image."))
    return result


def _fit_aspect(size: tuple[int, int], across: int, down: int) -> tuple[int, int]:
    width, height = size
    if width * down > height * across:
        return (height * across // down, height)
    return (width, width * down // across)


def compare(before: Image.Image, after: Image.Image, *, height: int = 768) -> Image.Image:
    """Before and after side by side at one height, each labelled, with a divider."""
    from PIL import ImageDraw, ImageFont

    height = min(height, max(before.height, after.height))
    panels = [
        picture.convert("RGB").resize(
            (max(1, round(picture.width * height / picture.height)), height),
            Image.Resampling.LANCZOS,
        )
        for picture in (before, after)
    ]
    gap = max(4, height // 96)
    sheet = Image.new("RGB", (panels[0].width + gap + panels[1].width, height), (255, 255, 255))
    sheet.paste(panels[0], (0, 0))
    sheet.paste(panels[1], (panels[0].width + gap, 0))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=max(12, height // 24))
    for label, left in (("Before", 0), ("After", panels[0].width + gap)):
        box = draw.textbbox((0, 0), label, font=font)
        pad = max(3, height // 128)
        draw.rectangle(
            (left, 0, left + box[2] - box[0] + 2 * pad, box[3] - box[1] + 2 * pad), fill=(0, 0, 0)
        )
        draw.text((left + pad - box[0], pad - box[1]), label, fill=(255, 255, 255), font=font)
    return sheet
