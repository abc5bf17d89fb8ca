"""Built-in tiny models with random weights: the SD 1.5 and SDXL layouts in miniature.

They exercise every code path of the real models (tokenizer, text encoders, UNet, VAE,
schedulers, derived pipelines) in well under a second on a CPU, with no file or network
access. Their images are noise. The weights come from a fixed seed, so two builds are equal.

The VAE keeps the real models' 8x downsampling (four blocks), so sizes, latent shapes and
previews behave as they do with real weights.
"""

from __future__ import annotations

from typing import TypeVar

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from tokenizers import pre_tokenizers
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from engine.types import Family

_P = TypeVar("_P", StableDiffusionPipeline, StableDiffusionXLPipeline)

TINY_SEED = 20240601
TOKENIZER_MAX_LENGTH = 77
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
TINY_SAMPLE_SIZE = 8  # latent side: 64 pixels through the 8x VAE
TEXT_HIDDEN_SIZE = 32
# SDXL's second encoder is wider than its first (1280 vs 768), and diffusers' single-file
# loader tells the two apart by width, so the tiny one keeps them different too.
TEXT_2_HIDDEN_SIZE = 64

# The training noise schedule every Stable Diffusion model shares; schedulers picked per
# request are built from this config (engine/loader.py).
SD_SCHEDULER_CONFIG: dict[str, object] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
}


def tiny_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer over single bytes: it tokenizes any text, one token per byte.

    The vocabulary is the 256 byte symbols of byte-level BPE, the same with the end-of-word
    marker, and the start and end tokens; with no merges every word splits into bytes.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for symbol in alphabet:
        vocab[symbol] = len(vocab)
    for symbol in alphabet:
        vocab[symbol + "</w>"] = len(vocab)
    vocab[START_TOKEN] = len(vocab)
    vocab[END_TOKEN] = len(vocab)
    return CLIPTokenizer(
        vocab=vocab,
        merges=[],
        model_max_length=TOKENIZER_MAX_LENGTH,
        bos_token=START_TOKEN,
        eos_token=END_TOKEN,
        pad_token=END_TOKEN,
        unk_token=END_TOKEN,
    )


def _text_config(
    tokenizer: CLIPTokenizer,
    hidden_size: int = TEXT_HIDDEN_SIZE,
    projection_dim: int | None = None,
) -> CLIPTextConfig:
    extra = {"projection_dim": projection_dim} if projection_dim is not None else {}
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=hidden_size,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=TOKENIZER_MAX_LENGTH,
        layer_norm_eps=1e-5,
        hidden_act="gelu",
        **extra,
    )


def _vae(scaling_factor: float) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=TINY_SAMPLE_SIZE * 8,
        scaling_factor=scaling_factor,
        force_upcast=False,
    )


def _scheduler() -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler.from_config(SD_SCHEDULER_CONFIG)


def build_tiny_sd15() -> StableDiffusionPipeline:
    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        unet = UNet2DConditionModel(
            sample_size=TINY_SAMPLE_SIZE,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            cross_attention_dim=TEXT_HIDDEN_SIZE,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        vae = _vae(scaling_factor=0.18215)
        text_encoder = CLIPTextModel(_text_config(tokenizer))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return prepare_for_inference(pipe)


def build_tiny_sdxl() -> StableDiffusionXLPipeline:
    tokenizer = tiny_tokenizer()
    tokenizer_2 = tiny_tokenizer()
    addition_time_embed_dim = 8
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED + 1)
        unet = UNet2DConditionModel(
            sample_size=TINY_SAMPLE_SIZE,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            transformer_layers_per_block=(1, 1),
            # SDXL conditions on both encoders' hidden states, concatenated...
            cross_attention_dim=TEXT_HIDDEN_SIZE + TEXT_2_HIDDEN_SIZE,
            # ...and on the pooled text embedding plus six size/crop numbers.
            addition_embed_type="text_time",
            addition_time_embed_dim=addition_time_embed_dim,
            projection_class_embeddings_input_dim=6 * addition_time_embed_dim + TEXT_2_HIDDEN_SIZE,
            norm_num_groups=32,
        )
        vae = _vae(scaling_factor=0.13025)
        text_encoder = CLIPTextModel(_text_config(tokenizer))
        text_encoder_2 = CLIPTextModelWithProjection(
            _text_config(tokenizer_2, TEXT_2_HIDDEN_SIZE, projection_dim=TEXT_2_HIDDEN_SIZE)
        )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=_scheduler(),
        force_zeros_for_empty_prompt=True,
    )
    return prepare_for_inference(pipe)


def build_tiny(family: Family) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    if family is Family.SDXL:
        return build_tiny_sdxl()
    return build_tiny_sd15()


def build_tiny_by_name(name: str) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """``name`` is a built-in source name: "tiny" or "tiny-xl"."""
    if name == "tiny":
        return build_tiny_sd15()
    if name == "tiny-xl":
        return build_tiny_sdxl()
    raise ValueError(f"No built-in model {name!r}; built-ins are 'tiny' and 'tiny-xl'.")


def prepare_for_inference(pipe: _P) -> _P:
    """No progress bars, eval mode, no gradients: how every pipeline here is used."""
    pipe.set_progress_bar_config(disable=True)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval().requires_grad_(False)
    return pipe
