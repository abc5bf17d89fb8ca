"""Image to image: each slot's input image, re-noised to ``strength`` and denoised."""

from __future__ import annotations

from engine.ops.common import OpContext, OpResult, init_images, run_image_to_image

DEFAULT_IMG2IMG_STRENGTH = 0.6


def img2img(ctx: OpContext) -> OpResult:
    strength = ctx.request.strength or DEFAULT_IMG2IMG_STRENGTH
    return run_image_to_image(ctx, init_images(ctx), strength=strength)
