"""Inpaint: repaint the white part of a mask, keep the black part.

The model redraws the whole canvas (its VAE alone shifts every pixel a little), so the
result is put back over the input through the mask, widened and softened by ``FEATHER``
pixels: outside that border the input's pixels come back exactly.
"""

from __future__ import annotations

from PIL import Image, ImageChops, ImageFilter

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
FEATHER = 8  # pixels over which the repainted area fades into the kept one


def keep_outside(
    original: Image.Image, repainted: Image.Image, mask: Image.Image, feather: int = FEATHER
) -> Image.Image:
    """``repainted`` inside the mask, ``original`` outside it, blended across a border of
    ``feather`` pixels beyond the mask's edge; farther out, ``original`` exactly."""
    if feather <= 0:
        alpha = mask.convert("L")
    else:
        half = max(1, feather // 2)
        widened = mask.convert("L").filter(ImageFilter.MaxFilter(2 * half + 1))
        alpha = widened.filter(ImageFilter.BoxBlur(half))  # support: half pixels more
        alpha = ImageChops.lighter(alpha, mask.convert("L"))  # the mask itself stays full
    return Image.composite(repainted.convert("RGB"), original.convert("RGB"), alpha)


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
    results = run_pipeline(
        pipe,
        progress,
        image=images,
        mask_image=masks,
        width=ctx.request.width,
        height=ctx.request.height,
        strength=strength,
        **common_kwargs(ctx, pipe, generators),
    )
    return [
        None if result is None else keep_outside(image, result, mask)
        for image, mask, result in zip(images, masks, results, strict=True)
    ]
