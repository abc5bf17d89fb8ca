"""Models for the benchmarks: the real SD 1.5 and SDXL architectures with random weights,
and the two ways of running them that the benchmarks compare.

Random weights cost exactly what trained ones do (the same layers, shapes and kernels), so
speed figures carry over; the images are noise. Configs are written out here, so nothing is
downloaded. ``Scale.MINI`` keeps every architecture's structure (block types, depths,
attention layout, conditioning) at toy widths, for dry runs on a CPU.

Both sides of every comparison use the same module objects: the engine through
``PrebuiltModels`` (a ``ModelManager`` whose "loading" hands out the pipeline built here, so
the rest of the real loading path runs: dtype, device, SDPA, channels_last, compile) and
plain diffusers through a pipeline made from the same components.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Mapping
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from engine.backend import DiffusersBackend
from engine.loader import LoadedModel, LoaderOptions, ModelManager, make_scheduler
from engine.registry import FAMILY_PRESETS, ModelRegistry, ModelSpec, Presets, SourceKind
from engine.tiny import SD_SCHEDULER_CONFIG, prepare_for_inference, tiny_tokenizer
from engine.types import (
    Family,
    GeneratedImage,
    ImageSlot,
    LoadCallback,
    ResolvedRequest,
    StepCallback,
    StepInfo,
)


class Scale(enum.StrEnum):
    REAL = "real"  # the released models' sizes
    MINI = "mini"  # same structure, toy widths: for dry runs


# --- configs ------------------------------------------------------------------------------

# stable-diffusion-v1-5/stable-diffusion-v1-5, unet/config.json
SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}
SD15_UNET_MINI: dict[str, Any] = {
    **SD15_UNET,
    "sample_size": 8,
    "block_out_channels": (32, 32, 64, 64),
    "cross_attention_dim": 32,
}

# stabilityai/stable-diffusion-xl-base-1.0, unet/config.json
SDXL_UNET: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,  # 768 (CLIP ViT-L) + 1280 (OpenCLIP bigG)
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,  # 6 x 256 size/crop numbers + 1280 pooled
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}
SDXL_UNET_MINI: dict[str, Any] = {
    **SDXL_UNET,
    "sample_size": 8,
    "block_out_channels": (32, 64, 64),
    "transformer_layers_per_block": (1, 2, 3),
    "attention_head_dim": (2, 4, 4),
    "cross_attention_dim": 32 + 64,
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 6 * 8 + 64,
}

# The SD VAE (SD 1.5 and SDXL share the layout; SDXL's scaling factor differs). Its fp16
# decode is run without upcasting, as with the fp16-fixed SDXL VAE that fast deployments use.
VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "force_upcast": False,
}
VAE_MINI: dict[str, Any] = {**VAE, "block_out_channels": (32, 32, 32, 32), "layers_per_block": 1}

# openai/clip-vit-large-patch14's text tower (SD 1.5's encoder and SDXL's first one).
CLIP_L: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
# laion/CLIP-ViT-bigG-14's text tower (SDXL's second encoder, with its projection).
CLIP_BIG_G: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}
CLIP_L_MINI: dict[str, Any] = {
    **CLIP_L,
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "projection_dim": 32,
}
CLIP_BIG_G_MINI: dict[str, Any] = {
    **CLIP_BIG_G,
    "hidden_size": 64,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "projection_dim": 64,
}

ARCH_SEED = 1234


def _text_config(base: Mapping[str, Any]) -> CLIPTextConfig:
    # The in-memory byte tokenizer (engine/tiny.py) stands in for CLIP's BPE one: its ids
    # fall inside the real vocabulary, and the encoder's cost does not depend on the ids.
    tokenizer = tiny_tokenizer()
    return CLIPTextConfig(
        **base,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        layer_norm_eps=1e-5,
    )


def build_sd15(scale: Scale = Scale.REAL, device: str = "cpu") -> StableDiffusionPipeline:
    """SD 1.5's UNet, VAE and text encoder with random weights, built on ``device``."""
    mini = scale is Scale.MINI
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(ARCH_SEED)
        unet = UNet2DConditionModel(**(SD15_UNET_MINI if mini else SD15_UNET))
        vae = AutoencoderKL(
            **(VAE_MINI if mini else VAE),
            sample_size=64 if mini else 512,
            scaling_factor=0.18215,
        )
        text_encoder = CLIPTextModel(_text_config(CLIP_L_MINI if mini else CLIP_L))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tiny_tokenizer(),
        unet=unet,
        scheduler=make_scheduler("euler", dict(SD_SCHEDULER_CONFIG)),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return prepare_for_inference(pipe)


def build_sdxl(scale: Scale = Scale.REAL, device: str = "cpu") -> StableDiffusionXLPipeline:
    """SDXL base's UNet, VAE and both text encoders with random weights, built on ``device``."""
    mini = scale is Scale.MINI
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(ARCH_SEED + 1)
        unet = UNet2DConditionModel(**(SDXL_UNET_MINI if mini else SDXL_UNET))
        vae = AutoencoderKL(
            **(VAE_MINI if mini else VAE),
            sample_size=64 if mini else 1024,
            scaling_factor=0.13025,
        )
        text_encoder = CLIPTextModel(_text_config(CLIP_L_MINI if mini else CLIP_L))
        text_encoder_2 = CLIPTextModelWithProjection(
            _text_config(CLIP_BIG_G_MINI if mini else CLIP_BIG_G)
        )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tiny_tokenizer(),
        tokenizer_2=tiny_tokenizer(),
        unet=unet,
        scheduler=make_scheduler("euler", dict(SD_SCHEDULER_CONFIG)),
        force_zeros_for_empty_prompt=True,
    )
    return prepare_for_inference(pipe)


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- the engine's side: a registry and a manager for in-memory models ---------------------


def arch_spec(name: str, family: Family, presets: Presets) -> ModelSpec:
    """A registry entry for a benchmark model built in memory.

    It is marked built-in, so the manager measures prompts with the in-memory byte
    tokenizer, which is the one these pipelines use.
    """
    return ModelSpec(
        name=name,
        source=f"builtin:{name}",
        source_kind=SourceKind.BUILTIN,
        family=family,
        description=f"{family.value} architecture with random weights (benchmark)",
        license="MIT (random weights)",
        presets=presets,
    )


def arch_presets(family: Family, *, width: int, height: int, steps: int, scheduler: str) -> Presets:
    base = FAMILY_PRESETS[family]
    return Presets(
        steps=steps,
        max_steps=max(base.max_steps, steps),
        guidance=base.guidance,
        width=width,
        height=height,
        min_size=min(base.min_size, width, height),
        max_size=max(base.max_size, width, height),
        scheduler=scheduler,
    )


class PrebuiltModels(ModelManager):
    """A ``ModelManager`` that "loads" pipelines the benchmark built in memory, by name.

    Only where the weights come from is replaced: preparing the pipeline (dtype, device,
    eval mode, SDPA attention, channels_last, torch.compile) is the real manager's.
    """

    def __init__(self, options: LoaderOptions, pipelines: Mapping[str, DiffusionPipeline]) -> None:
        super().__init__(options)
        self._prebuilt = dict(pipelines)

    def _load_pipeline(self, spec: ModelSpec, report: LoadCallback) -> DiffusionPipeline:
        # Handed over, not kept: unloading the model then frees its memory.
        pipe = self._prebuilt.pop(spec.name, None)
        if pipe is not None:
            return pipe
        return super()._load_pipeline(spec, report)


class CountingBackend(DiffusersBackend):
    """The real backend, counting its pipeline calls (to show which jobs were batched)."""

    def __init__(self, registry: ModelRegistry, manager: ModelManager) -> None:
        super().__init__(registry, manager)
        # On a GPU, wait for each step's kernels before reporting it, so that a Progress
        # event marks a finished step and not one the CPU has only queued (measurements).
        self.sync_steps = False
        self.calls = 0
        self.images = 0
        self.threads: set[int] = set()  # native ids of the threads that ran pipeline calls

    def run(
        self, request: ResolvedRequest, slots: list[ImageSlot], on_step: StepCallback
    ) -> list[GeneratedImage | None]:
        self.calls += 1
        self.images += len(slots)
        self.threads.add(threading.get_ident())
        if self.sync_steps and self.manager.device.type == "cuda":
            report = on_step

            def on_step(info: StepInfo) -> frozenset[str]:
                torch.cuda.synchronize(self.manager.device)
                return report(info)

        return super().run(request, slots, on_step)


def tiny_backend(device: str = "cpu") -> CountingBackend:
    """The bundled registry's tiny models on ``device``: what the tests and the CLI use."""
    registry = ModelRegistry.load()
    manager = ModelManager(LoaderOptions(device=device, local_files_only=True))
    return CountingBackend(registry, manager)


def prebuilt_backend(
    specs: list[ModelSpec], pipelines: Mapping[str, DiffusionPipeline], options: LoaderOptions
) -> CountingBackend:
    registry = ModelRegistry(specs, origin="<benchmark>")
    return CountingBackend(registry, PrebuiltModels(options, pipelines))


# --- the plain-diffusers side -------------------------------------------------------------


def plain_pipeline(loaded: LoadedModel, scheduler: str) -> DiffusionPipeline:
    """A plain diffusers pipeline over ``loaded``'s very modules, with its own scheduler
    (the one the engine would pick for ``scheduler``), as a user of diffusers would write."""
    components = dict(loaded.pipe.components)
    components["scheduler"] = make_scheduler(scheduler, loaded.scheduler_config)
    pipe = type(loaded.pipe)(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def plain_generate(
    pipe: DiffusionPipeline,
    *,
    prompts: list[str],
    negative_prompts: list[str],
    seeds: list[int],
    steps: int,
    guidance: float,
    width: int,
    height: int,
) -> list[Any]:
    """One plain pipeline call: a batch of images, one CPU generator per image."""
    generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
    output = pipe(
        prompt=prompts,
        negative_prompt=negative_prompts,
        num_inference_steps=steps,
        guidance_scale=guidance,
        width=width,
        height=height,
        generator=generators,
        output_type="pil",
    )
    return list(output.images)


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
