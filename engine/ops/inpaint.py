"""Inpaint: repaint the white part of a mask, keep the black part."""

from __future__ import annotations

from PIL import Image

from engine.loader import PipelineKind
from engine.ops.common import (
    BatchProgress,
    OpContext,
    OpResult,
    can_shrink,
    common_kwargs,
    init_images,
    mask_images,
    run_pipeline,
    seeded_generators,
    use_scheduler,
)

DEFAULT_INPAINT_STRENGTH = 0.85


def inpaint(ctx: OpContext) -> OpResult:
    strength = ctx.request.strength or DEFAULT_INPAINT_STRENGTH
    return run_inpaint(ctx, init_images(ctx), mask_images(ctx), strength=strength)


def run_inpaint(
    ctx: OpContext,
    images: list[Image.Image],
    masks: list[Image.Image],
    *,
    strength: float,
) -> OpResult:
    """The inpainting call shared with outpaint: one image and one mask per slot."""
    pipe = ctx.manager.pipeline(ctx.model, PipelineKind.INPAINT)
    use_scheduler(pipe, ctx)
    generators = seeded_generators(ctx.slots)
    progress = BatchProgress(ctx, generators, shrinkable=can_shrink(pipe, PipelineKind.INPAINT))
    return run_pipeline(
        pipe,
        progress,
        image=images,
        mask_image=masks,
        width=ctx.request.width,
        height=ctx.request.height,
        strength=strength,
        **common_kwargs(ctx, generators),
    )
