"""The single-image view's edits that start from a canvas: Zoom Out, Pan and Vary (Region)
(an inpainting job of the image's model on a canvas and mask from ``engine.edits``), and
Compare (a picture of an image beside the one it came from). Image work runs off the loop."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable

import discord
from PIL import Image as PILImage

from bot.host import BotHost
from core.errors import N_, UserError
from core.jobcodec import StoredRequest
from core.storage.records import Image, Job
from engine import edits
from engine.errors import ValidationError
from engine.images import encode_png, encode_preview, format_parameters, scheduler_to_sampler
from engine.types import GenerationRequest, Operation

ZOOMS = {"zoom": 2.0, "zoomh": 1.5}
PANS = {
    "panl": edits.PanDirection.LEFT,
    "panr": edits.PanDirection.RIGHT,
    "panu": edits.PanDirection.UP,
    "pand": edits.PanDirection.DOWN,
}
REGIONS = {
    "rgl": edits.Region.LEFT,
    "rgr": edits.Region.RIGHT,
    "rgt": edits.Region.TOP,
    "rgb": edits.Region.BOTTOM,
    "rgc": edits.Region.CENTRE,
    "rgx": edits.Region.BOX,
}
REGION_STRENGTH = 0.9  # a new thing in the region, still lit and coloured like the rest
COMPARE_MAX_BYTES = 8 * 2**20

Build = Callable[[PILImage.Image], edits.Canvas]


def zoom_factor(text: str) -> float:
    """Custom Zoom's field: a factor such as 1.8 (or 1.8x)."""
    try:
        factor = float(text.strip().lower().rstrip("x").strip())
    except ValueError:
        raise UserError(
            N_("Zoom out by a number from {least} to {most}, such as 1.8."),
            least=f"{edits.MIN_ZOOM:g}",
            most=f"{edits.MAX_ZOOM:g}",
        ) from None
    if not edits.MIN_ZOOM <= factor <= edits.MAX_ZOOM:
        raise UserError(
            N_("Zoom out by {least} to {most} times."),
            least=f"{edits.MIN_ZOOM:g}",
            most=f"{edits.MAX_ZOOM:g}",
        )
    return factor


def _canvas_pngs(data: bytes, build: Build, max_size: int) -> tuple[bytes, bytes, tuple[int, int]]:
    with PILImage.open(io.BytesIO(data)) as opened:
        image = opened.convert("RGB")
    if max(image.size) > max_size:  # an upscale beyond what the model paints at once
        image = image.resize(edits.fit_within(image.size, max_size), PILImage.Resampling.LANCZOS)
    canvas = build(image)
    pictures = []
    for picture in (canvas.image, canvas.mask):
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG", compress_level=1)
        pictures.append(buffer.getvalue())
    return pictures[0], pictures[1], canvas.image.size


async def repaint_request(
    bot: BotHost,
    job: Job,
    image: Image,
    build: Build,
    *,
    prompt: str | None = None,
    negative: str | None = None,
    strength: float = 1.0,
) -> GenerationRequest:
    """An inpainting request of ``job``'s model on the canvas ``build`` makes of ``image``."""
    parent = StoredRequest.loads(job.request).request
    spec = bot.registry.get(parent.model or bot.registry.default_name)
    data = await bot.service.image_bytes(image)
    try:
        canvas, mask, (width, height) = await asyncio.to_thread(
            _canvas_pngs, data, build, spec.presets.max_size
        )
    except ValidationError as error:
        raise UserError(error.template, **error.values) from None
    return GenerationRequest(
        prompt=parent.prompt_of(image.index) if prompt is None else prompt,
        negative_prompt=parent.negative_prompt if negative is None else negative,
        model=parent.model,
        operation=Operation.INPAINT,
        count=1,
        steps=parent.steps,
        guidance=parent.guidance,
        scheduler=parent.scheduler,
        width=width,
        height=height,
        init_image=canvas,
        mask_image=mask,
        strength=strength,
    )


def parse_adjustments(crop: str, turn: str, tone: str, look: str) -> edits.Adjustments:
    """The Edit modal's four fields (each may be empty) as ``edits.Adjustments``."""
    crop, turn, tone, look = (field.strip().lower() for field in (crop, turn, tone, look))
    try:
        crop_aspect = crop if crop in edits.ASPECTS else None
        crop_box = edits.parse_box(crop) if crop and crop_aspect is None else None
        rotate, flip = 0, None
        for word in turn.replace(",", " ").split():
            if word.rstrip("°").isdigit():
                rotate = int(word.rstrip("°")) % 360
            elif word in ("horizontal", "h", "mirror"):
                flip = "horizontal"
            elif word in ("vertical", "v"):
                flip = "vertical"
            else:
                raise ValidationError(
                    N_("Turn: use 90, 180 or 270 and/or horizontal or vertical, not {word}."),
                    word=repr(word),
                )
        numbers = tone.replace(",", " ").split()
        if len(numbers) > 3:
            raise ValidationError(
                N_("Tone: at most three numbers (brightness contrast saturation).")
            )
        try:
            levels = [float(number) for number in numbers] + [1.0] * (3 - len(numbers))
        except ValueError:
            raise ValidationError(
                N_("Tone: numbers such as 1.2 1 0.8 (brightness contrast saturation).")
            ) from None
        try:
            chosen = edits.Filter(look) if look else None
        except ValueError:
            names = ", ".join(f.value for f in edits.Filter)
            raise ValidationError(N_("Filter: one of {names}."), names=names) from None
        adjustments = edits.Adjustments(
            crop_aspect=crop_aspect,
            crop_box=crop_box,
            rotate=rotate,
            flip=flip,
            brightness=levels[0],
            contrast=levels[1],
            saturation=levels[2],
            filter=chosen,
        )
    except ValidationError as error:
        raise UserError(error.template, **error.values) from None
    if adjustments.neutral:
        raise UserError(N_("Nothing to change: fill in at least one field."))
    return adjustments


def edit_parameters(
    request: GenerationRequest, seed: int, model: str, description: str
) -> Callable[[int, int], str]:
    """The PNG parameters of an edited image of a given size: its source's settings, and
    the edit."""
    return lambda width, height: format_parameters(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        steps=request.steps or 0,
        sampler=scheduler_to_sampler(request.scheduler or ""),
        cfg_scale=request.guidance or 0.0,
        seed=seed,
        width=width,
        height=height,
        model=model,
        extra={"Edit": description},
    )


def edited_png(
    data: bytes, adjustments: edits.Adjustments, parameters: Callable[[int, int], str]
) -> tuple[bytes, PILImage.Image]:
    """The edited picture as a PNG carrying its ``parameters``, and the picture itself."""
    with PILImage.open(io.BytesIO(data)) as opened:
        picture = edits.adjust(opened, adjustments)
    return encode_png(picture, parameters(picture.width, picture.height)), picture


def _compare_picture(before: bytes, after: bytes) -> tuple[bytes, str]:
    with PILImage.open(io.BytesIO(before)) as first, PILImage.open(io.BytesIO(after)) as second:
        sheet = edits.compare(first, second)
    return encode_preview(sheet, max_bytes=COMPARE_MAX_BYTES)


async def compare_file(bot: BotHost, parent: Image, child: Image, job: Job) -> discord.File:
    data, ext = await asyncio.to_thread(
        _compare_picture,
        await bot.service.image_bytes(parent),
        await bot.service.image_bytes(child),
    )
    return discord.File(io.BytesIO(data), f"{job.id}-compare.{ext}")
