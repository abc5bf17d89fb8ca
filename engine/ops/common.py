"""What every operation shares: the call context, seeded generators, and the per-step
callback that reports progress, draws previews and drops cancelled images from the batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DiffusionPipeline
from PIL import Image

from engine.errors import Interrupted
from engine.images import open_user_image, open_user_mask
from engine.loader import LoadedModel, ModelManager, PipelineKind, make_scheduler
from engine.ops.prompt_embeds import prompt_arguments
from engine.preview import latent_preview
from engine.prompt_syntax import plain_text
from engine.types import (
    Family,
    ImageSlot,
    ResolvedRequest,
    StepCallback,
    StepInfo,
    preview_due,
)

# Decoding above this many pixels at once needs several GB in half precision; tiles keep it
# bounded (at the price of faint seams, which the overlap mostly hides).
VAE_TILING_MIN_PIXELS = 1024 * 1024


@dataclass(frozen=True, slots=True)
class OpContext:
    """Everything one pipeline call needs. ``slots`` share ``request``'s batch key."""

    manager: ModelManager
    model: LoadedModel
    request: ResolvedRequest
    slots: Sequence[ImageSlot]
    on_step: StepCallback
    max_input_pixels: int

    @property
    def family(self) -> Family:
        return self.model.family

    @property
    def size(self) -> tuple[int, int]:
        return (self.request.width, self.request.height)


OpResult = list[Image.Image | None]


def seeded_generators(slots: Sequence[ImageSlot]) -> list[torch.Generator]:
    """One generator per image. They live on the CPU whatever the device, so a seed draws
    the same starting noise on any GPU (and on the CPU), and batch order cannot matter."""
    return [torch.Generator(device="cpu").manual_seed(slot.seed) for slot in slots]


def use_scheduler(pipe: DiffusionPipeline, ctx: OpContext) -> None:
    # A fresh scheduler each call: schedulers hold per-run state (timesteps, step index,
    # previous outputs), and a stale one would make results depend on the previous call.
    pipe.scheduler = make_scheduler(ctx.request.scheduler, ctx.model.scheduler_config)


def init_images(ctx: OpContext, size: tuple[int, int] | None = None) -> list[Image.Image]:
    """Each slot's input image, decoded safely and resized to ``size`` (default: the
    request's size)."""
    target = size or ctx.size
    images = []
    for slot in ctx.slots:
        if slot.init_image is None:
            raise ValueError("this operation needs an input image in every slot")
        image = open_user_image(slot.init_image, max_pixels=ctx.max_input_pixels)
        images.append(fit_exactly(image, target))
    return images


def mask_images(ctx: OpContext) -> list[Image.Image]:
    masks = []
    for slot in ctx.slots:
        if slot.init_image is None or slot.mask_image is None:
            raise ValueError("inpainting needs an image and a mask in every slot")
        image = open_user_image(slot.init_image, max_pixels=ctx.max_input_pixels)
        mask = open_user_mask(slot.mask_image, size=image.size, max_pixels=ctx.max_input_pixels)
        masks.append(fit_exactly(mask, ctx.size))
    return masks


def fit_exactly(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    if image.size == size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS)


def prompts(ctx: OpContext, pipe: DiffusionPipeline) -> dict[str, Any]:
    """The slots' prompts as ``pipe`` takes them: weighted and long ones as embeddings."""
    return prompt_arguments(
        pipe, [slot.prompt for slot in ctx.slots], [slot.negative_prompt for slot in ctx.slots]
    )


def plain_prompts(ctx: OpContext) -> dict[str, list[str]]:
    """The slots' prompts without emphasis syntax, for a pipeline that reads only words."""
    return {
        "prompt": [plain_text(slot.prompt) for slot in ctx.slots],
        "negative_prompt": [plain_text(slot.negative_prompt) for slot in ctx.slots],
    }


@contextlib.contextmanager
def vae_tiling_for(pipe: DiffusionPipeline, pixels: int) -> Iterator[None]:
    """Tile the VAE for this call when the output is large; restore the setting after."""
    vae = getattr(pipe, "vae", None)
    if vae is None or not hasattr(vae, "enable_tiling") or pixels < VAE_TILING_MIN_PIXELS:
        yield
        return
    was_tiling = bool(getattr(vae, "use_tiling", False))
    vae.enable_tiling()
    try:
        yield
    finally:
        if not was_tiling:
            vae.disable_tiling()


class BatchProgress:
    """``callback_on_step_end`` for one pipeline call.

    After each denoising step it reports the step (with previews) and learns which jobs
    were cancelled. Their rows leave the batch: latents, text embeddings, the scheduler's
    remembered outputs and the generator list are cut to the surviving rows, so the rest of
    the call costs less and the cancelled images are never decoded. Where a pipeline keeps
    batch-sized tensors that the callback cannot reach (inpainting), ``shrinkable`` is
    False: cancelled rows are computed to the end and then thrown away. When no row is
    left, ``Interrupted`` aborts the call at once.
    """

    def __init__(
        self,
        ctx: OpContext,
        generators: list[torch.Generator],
        *,
        shrinkable: bool,
    ) -> None:
        self._ctx = ctx
        self._generators = generators  # the very list the pipeline uses: cut in place
        self.shrinkable = shrinkable
        self.rows: list[int] = list(range(len(ctx.slots)))  # slot position of each row
        self.cancelled: set[int] = set()  # slot positions

    def tensor_inputs(self, pipe: DiffusionPipeline) -> list[str]:
        wanted = ["latents"]
        if self.shrinkable:
            wanted += ["prompt_embeds", "add_text_embeds", "add_time_ids"]
        available = set(getattr(pipe, "_callback_tensor_inputs", ["latents"]))
        return [name for name in wanted if name in available]

    def __call__(
        self, pipe: DiffusionPipeline, step_index: int, timestep: Any, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        step = step_index + 1
        total = int(getattr(pipe, "num_timesteps", 0) or self._ctx.request.steps)
        self.after_step(step, total, kwargs.get("latents"), pipe=pipe, kwargs=kwargs)
        return kwargs

    def legacy_callback(self, total: int) -> Any:
        """For pipelines with only the old ``callback(step, timestep, latents)``."""

        def callback(step_index: int, _timestep: Any, latents: torch.Tensor) -> None:
            self.after_step(step_index + 1, total, latents, pipe=None, kwargs=None)

        return callback

    def after_step(
        self,
        step: int,
        total: int,
        latents: torch.Tensor | None,
        *,
        pipe: DiffusionPipeline | None,
        kwargs: dict[str, Any] | None,
    ) -> None:
        previews = self._previews(step, total, latents)
        cancelled_jobs = self._ctx.on_step(StepInfo(step=step, total=total, previews=previews))
        if not cancelled_jobs:
            return
        newly = {
            position
            for position in self.rows
            if self._ctx.slots[position].job_id in cancelled_jobs and position not in self.cancelled
        }
        if not newly:
            return
        self.cancelled |= newly
        if all(position in self.cancelled for position in self.rows):
            raise Interrupted()
        if self.shrinkable and pipe is not None and kwargs is not None:
            keep = [row for row, position in enumerate(self.rows) if position not in self.cancelled]
            self._shrink(pipe, kwargs, keep)

    def results(self, images: Sequence[Image.Image]) -> OpResult:
        """One entry per slot: its image, or None if its job was cancelled."""
        if len(images) != len(self.rows):
            raise RuntimeError(f"pipeline returned {len(images)} images for {len(self.rows)} rows")
        output: OpResult = [None] * len(self._ctx.slots)
        for position, image in zip(self.rows, images, strict=True):
            if position not in self.cancelled:
                output[position] = image
        return output

    def _previews(
        self, step: int, total: int, latents: torch.Tensor | None
    ) -> dict[str, Image.Image]:
        if latents is None:
            return {}
        previews: dict[str, Image.Image] = {}
        for row, position in enumerate(self.rows):
            slot = self._ctx.slots[position]
            if (
                slot.index == 0
                and preview_due(step, total, slot.preview_every)
                and position not in self.cancelled
                and row < latents.shape[0]
            ):
                previews[slot.job_id] = latent_preview(
                    latents[row], self._ctx.family, self._ctx.size
                )
        return previews

    def _shrink(self, pipe: DiffusionPipeline, kwargs: dict[str, Any], keep: list[int]) -> None:
        old_rows = len(self.rows)
        latents = kwargs["latents"]
        latent_shape = tuple(latents.shape)
        for name, value in list(kwargs.items()):
            kwargs[name] = select_rows(value, keep, old_rows)
        shrink_scheduler_state(pipe.scheduler, latent_shape, keep)
        self._generators[:] = [self._generators[row] for row in keep]
        self.rows = [self.rows[row] for row in keep]


def select_rows(value: Any, keep: list[int], old_rows: int) -> Any:
    """Keep batch rows ``keep`` of a tensor whose first dimension is the batch, or the
    batch twice over (classifier-free guidance stacks [negative, positive])."""
    if not isinstance(value, torch.Tensor) or value.ndim == 0:
        return value
    index = torch.tensor(keep, device=value.device)
    if value.shape[0] == old_rows:
        return value.index_select(0, index)
    if value.shape[0] == 2 * old_rows:
        negative, positive = value[:old_rows], value[old_rows:]
        return torch.cat([negative.index_select(0, index), positive.index_select(0, index)])
    return value


def shrink_scheduler_state(scheduler: Any, latent_shape: tuple[int, ...], keep: list[int]) -> None:
    """Cut the scheduler's remembered latent-shaped tensors (multistep solvers keep the last
    outputs) to the surviving rows. Only tensors of exactly the latents' shape are touched,
    so sigma and timestep tables are left alone."""

    def cut(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and tuple(value.shape) == latent_shape:
            return value.index_select(0, torch.tensor(keep, device=value.device))
        return value

    for name, value in list(vars(scheduler).items()):
        if isinstance(value, torch.Tensor):
            setattr(scheduler, name, cut(value))
        elif isinstance(value, list) and any(isinstance(v, torch.Tensor) for v in value):
            setattr(scheduler, name, [cut(v) for v in value])
        elif isinstance(value, tuple) and any(isinstance(v, torch.Tensor) for v in value):
            setattr(scheduler, name, tuple(cut(v) for v in value))


def can_shrink(pipe: DiffusionPipeline, kind: PipelineKind) -> bool:
    if kind is PipelineKind.INPAINT:
        return False  # keeps image latents and noise outside the callback's reach
    unet = getattr(pipe, "unet", None)
    # Guidance-embedding UNets (LCM distillations) keep a batch-sized timestep_cond.
    return unet is not None and getattr(unet.config, "time_cond_proj_dim", None) is None


def run_pipeline(
    pipe: DiffusionPipeline,
    progress: BatchProgress,
    **call_kwargs: Any,
) -> OpResult:
    """Call a diffusers pipeline with our step callback and map its images to slots."""
    output = pipe(
        **call_kwargs,
        callback_on_step_end=progress,
        callback_on_step_end_tensor_inputs=progress.tensor_inputs(pipe),
        output_type="pil",
    )
    return progress.results(output.images)


def common_kwargs(
    ctx: OpContext, pipe: DiffusionPipeline, generators: list[torch.Generator]
) -> dict[str, Any]:
    request = ctx.request
    return {
        **prompts(ctx, pipe),
        "num_inference_steps": request.steps,
        "guidance_scale": request.guidance,
        "generator": generators,
    }


def run_image_to_image(
    ctx: OpContext,
    images: list[Image.Image],
    *,
    strength: float,
    tile_vae: bool = False,
) -> OpResult:
    """img2img over ``images`` (one per slot): the step shared by img2img, variation and
    upscale."""
    pipe = ctx.manager.pipeline(ctx.model, PipelineKind.IMG2IMG)
    use_scheduler(pipe, ctx)
    generators = seeded_generators(ctx.slots)
    progress = BatchProgress(ctx, generators, shrinkable=can_shrink(pipe, PipelineKind.IMG2IMG))
    pixels = ctx.size[0] * ctx.size[1] if tile_vae else 0
    with vae_tiling_for(pipe, pixels):
        return run_pipeline(
            pipe,
            progress,
            image=images,
            strength=strength,
            **common_kwargs(ctx, pipe, generators),
        )
