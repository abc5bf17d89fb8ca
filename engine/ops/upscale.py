"""Upscale one image 2x.

Without extra weights this is the "hires fix": enlarge the pixels (Lanczos), then let the same
model redraw fine detail with a low-strength img2img pass; the VAE is tiled for large
outputs. When the registry entry names an ``upscaler`` (a diffusers folder or hub id of
``StableDiffusionLatentUpscalePipeline`` or the x4 ``StableDiffusionUpscalePipeline``), that
model does the enlarging instead.
"""

from __future__ import annotations

from typing import Any

from diffusers import StableDiffusionLatentUpscalePipeline, StableDiffusionUpscalePipeline

from engine.errors import ModelLoadError
from engine.ops.common import (
    BatchProgress,
    OpContext,
    OpResult,
    fit_exactly,
    init_images,
    prompts,
    run_image_to_image,
    seeded_generators,
    vae_tiling_for,
)

UPSCALE_FACTOR = 2
DEFAULT_UPSCALE_STRENGTH = 0.3
X4_UPSCALER_GUIDANCE = 7.0
X4_NOISE_LEVEL = 20


def upscale(ctx: OpContext) -> OpResult:
    if ctx.model.spec.upscaler:
        return _dedicated_upscale(ctx, ctx.model.spec.upscaler, ctx.model.spec.upscaler_steps)
    # The request's size is already the enlarged size (engine/backend.py).
    strength = ctx.request.strength or DEFAULT_UPSCALE_STRENGTH
    return run_image_to_image(ctx, init_images(ctx), strength=strength, tile_vae=True)


def _dedicated_upscale(ctx: OpContext, source: str, steps: int) -> OpResult:
    upscaler = ctx.manager.upscaler(source)
    width, height = ctx.size
    sources = init_images(ctx, size=(width // UPSCALE_FACTOR, height // UPSCALE_FACTOR))
    generators = seeded_generators(ctx.slots)
    progress = BatchProgress(ctx, generators, shrinkable=False)
    kwargs: dict[str, Any] = {
        **prompts(ctx),
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
