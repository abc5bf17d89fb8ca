"""Variations of one image: img2img with new seeds at a "subtle" or "strong" strength."""

from __future__ import annotations

from engine.ops.common import OpContext, OpResult, init_images, run_image_to_image
from engine.types import VariationStrength

VARIATION_STRENGTHS: dict[VariationStrength, float] = {"subtle": 0.35, "strong": 0.7}
DEFAULT_VARIATION: VariationStrength = "subtle"


def variation(ctx: OpContext) -> OpResult:
    # The request's strength is already resolved from "subtle"/"strong" (engine/backend.py).
    strength = ctx.request.strength or VARIATION_STRENGTHS[DEFAULT_VARIATION]
    return run_image_to_image(ctx, init_images(ctx), strength=strength)
