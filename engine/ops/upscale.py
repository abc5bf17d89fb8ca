"""Upscale one image 2x.

Without extra weights this is the "hires fix": enlarge the pixels (Lanczos), then let the same
model redraw fine detail with a low-strength img2img pass; the VAE is tiled for large
outputs. When the registry entry names an ``upscaler`` (a diffusers folder or hub id of
``StableDiffusionLatentUpscalePipeline`` or the x4 ``StableDiffusionUpscalePipeline``), that
model does the enlarging instead.

Beyond the largest image the model draws at once (its ``max_size``), the enlarged image is
redrawn in overlapping tiles of the model's own size, cross-faded where they overlap
(``engine.ops.tiles``), so every result can be upscaled on every model, up to
``engine.registry.upscale_limit``.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import StableDiffusionLatentUpscalePipeline, StableDiffusionUpscalePipeline
from PIL import Image

from engine.errors import Interrupted, ModelLoadError
from engine.loader import PipelineKind
from engine.ops import tiles
from engine.ops.common import (
    BatchProgress,
    OpContext,
    OpResult,
    fit_exactly,
    init_images,
    plain_prompts,
    run_image_to_image,
    seeded_generators,
    use_scheduler,
    vae_tiling_for,
)
from engine.ops.prompt_embeds import prompt_arguments
from engine.types import ImageSlot, StepInfo

UPSCALE_FACTOR = 2
DEFAULT_UPSCALE_STRENGTH = 0.3
X4_UPSCALER_GUIDANCE = 7.0
X4_NOISE_LEVEL = 20
TILES_PER_CALL = 4  # tiles redrawn together: a batch the model draws at its own size


def upscale(ctx: OpContext) -> OpResult:
    presets = ctx.model.spec.presets
    within_reach = max(ctx.size) <= presets.max_size
    if ctx.model.spec.upscaler and within_reach:
        return _dedicated_upscale(ctx, ctx.model.spec.upscaler, ctx.model.spec.upscaler_steps)
    # The request's size is already the enlarged size (engine/backend.py).
    strength = ctx.request.strength or DEFAULT_UPSCALE_STRENGTH
    if within_reach:
        return run_image_to_image(ctx, init_images(ctx), strength=strength, tile_vae=True)
    return _tiled_upscale(ctx, strength)


class _SlotCancelled(Exception):
    """Its job was cancelled: stop redrawing this image's tiles."""


def tile_geometry(size: tuple[int, int], native: int, max_size: int) -> tuple[int, int]:
    """(tile side, overlap) for an image of ``size`` on a model that draws ``native``
    pixels a side best and ``max_size`` at most: square tiles of the native size (never
    larger than the image), overlapping by a quarter."""
    tile = min(native, max_size, *size) // 8 * 8
    return tile, max(8, tile // 4 // 8 * 8)


def _tiled_upscale(ctx: OpContext, strength: float) -> OpResult:
    presets = ctx.model.spec.presets
    width, height = ctx.size
    tile, overlap = tile_geometry(ctx.size, max(presets.width, presets.height), presets.max_size)
    layout = tiles.layout(width, height, tile, overlap)
    pipe = ctx.manager.pipeline(ctx.model, PipelineKind.IMG2IMG)
    per_call = max(1, int(ctx.request.steps * strength))
    calls = -(-len(layout) // TILES_PER_CALL)
    total = per_call * calls * len(ctx.slots)
    results: OpResult = []
    done = 0
    for slot, source in zip(ctx.slots, init_images(ctx), strict=True):
        slot_start = done
        try:
            pictures: list[Image.Image] = []
            for first in range(0, len(layout), TILES_PER_CALL):
                chunk = layout[first : first + TILES_PER_CALL]
                pictures += _redraw(ctx, pipe, slot, source, chunk, first, strength, done, total)
                done += per_call
            results.append(tiles.blend(ctx.size, layout, pictures))
        except _SlotCancelled:
            results.append(None)
            done = slot_start + per_call * calls
    if all(result is None for result in results):
        raise Interrupted()
    return results


def _redraw(
    ctx: OpContext,
    pipe: Any,
    slot: ImageSlot,
    source: Image.Image,
    chunk: list[tiles.Tile],
    first: int,
    strength: float,
    done: int,
    total: int,
) -> list[Image.Image]:
    """One pipeline call redrawing ``chunk``'s tiles of ``source``; each tile has its own
    seed (the image's, plus its position), so a tile redraws the same every time."""
    use_scheduler(pipe, ctx)
    count = len(chunk)

    def after_step(_pipe: Any, step_index: int, _timestep: Any, kwargs: dict[str, Any]) -> Any:
        step = min(total, done + step_index + 1)
        if slot.job_id in ctx.on_step(StepInfo(step=step, total=total, previews={})):
            raise _SlotCancelled()
        return kwargs

    output = pipe(
        **prompt_arguments(pipe, [slot.prompt] * count, [slot.negative_prompt] * count),
        image=[source.crop(tile.box) for tile in chunk],
        strength=strength,
        num_inference_steps=ctx.request.steps,
        guidance_scale=ctx.request.guidance,
        generator=[
            torch.Generator(device="cpu").manual_seed(slot.seed + first + n) for n in range(count)
        ],
        callback_on_step_end=after_step,
        output_type="pil",
    )
    return list(output.images)


def _dedicated_upscale(ctx: OpContext, source: str, steps: int) -> OpResult:
    upscaler = ctx.manager.upscaler(source)
    width, height = ctx.size
    sources = init_images(ctx, size=(width // UPSCALE_FACTOR, height // UPSCALE_FACTOR))
    generators = seeded_generators(ctx.slots)
    progress = BatchProgress(ctx, generators, shrinkable=False)
    kwargs: dict[str, Any] = {
        **plain_prompts(ctx),
        "image": sources,
        "num_inference_steps": steps,
        "generator": generators,
        "output_type": "pil",
        "callback": progress.legacy_callback(steps),
        "callback_steps": 1,
    }
    if isinstance(upscaler, StableDiffusionLatentUpscalePipeline):
        # Trained to follow the prompt weakly; guidance only adds cost.
        kwargs["guidance_scale"] = 0.0
        kwargs.pop("negative_prompt")
    elif isinstance(upscaler, StableDiffusionUpscalePipeline):
        kwargs["guidance_scale"] = X4_UPSCALER_GUIDANCE
        kwargs["noise_level"] = X4_NOISE_LEVEL
    else:
        raise ModelLoadError(
            f"The upscaler {source!r} is a {type(upscaler).__name__}; supported upscalers are "
            "StableDiffusionLatentUpscalePipeline (x2) and StableDiffusionUpscalePipeline (x4)."
        )
    with vae_tiling_for(upscaler, width * height * UPSCALE_FACTOR**2):
        images = upscaler(**kwargs).images
    # The x4 model overshoots a 2x request; Lanczos brings it to the requested size.
    return progress.results([fit_exactly(image, ctx.size) for image in images])
