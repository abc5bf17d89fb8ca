"""Text to image."""

from __future__ import annotations

from engine.loader import PipelineKind
from engine.ops.common import (
    BatchProgress,
    OpContext,
    OpResult,
    can_shrink,
    common_kwargs,
    run_pipeline,
    seeded_generators,
    use_scheduler,
)


def txt2img(ctx: OpContext) -> OpResult:
    pipe = ctx.manager.pipeline(ctx.model, PipelineKind.TXT2IMG)
    use_scheduler(pipe, ctx)
    generators = seeded_generators(ctx.slots)
    progress = BatchProgress(ctx, generators, shrinkable=can_shrink(pipe, PipelineKind.TXT2IMG))
    return run_pipeline(
        pipe,
        progress,
        width=ctx.request.width,
        height=ctx.request.height,
        **common_kwargs(ctx, pipe, generators),
    )
