"""Write a diffusers Stable Diffusion pipeline as one original-layout .safetensors checkpoint.

The original (CompVis/Stability "LDM") layout is what single-file checkpoints shared online
use: ``model.diffusion_model.*`` for the UNet, ``first_stage_model.*`` for the VAE, and
``cond_stage_model.*`` (SD 1.x) or ``conditioner.embedders.{0,1}.*`` (SDXL) for the text
encoders, the second SDXL encoder in OpenCLIP's naming. Tests use this to produce a real
single-file checkpoint from the tiny models, which diffusers' ``from_single_file`` then
converts back; the round trip must give the same weights.

Only the block types the Stable Diffusion UNets and VAEs use are handled.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file

_UNET_RESNET_NAMES = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)
_UNET_TOP_LEVEL = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_VAE_ATTENTION_NAMES = (
    ("group_norm", "norm"),
    ("to_q", "q"),
    ("to_k", "k"),
    ("to_v", "v"),
    ("to_out.0", "proj_out"),
)


def unet_to_ldm(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    config = unet.config
    per_block = config.layers_per_block
    if not isinstance(per_block, int):
        raise NotImplementedError("per-block layer counts are not supported")
    stride = per_block + 1  # LDM numbers resnets and the down/up sampler in one sequence
    renames: dict[str, str] = dict(_UNET_TOP_LEVEL)
    for block, down_type in enumerate(config.down_block_types):
        for layer in range(per_block):
            index = 1 + block * stride + layer
            renames[f"down_blocks.{block}.resnets.{layer}"] = f"input_blocks.{index}.0"
            if "CrossAttn" in down_type:
                renames[f"down_blocks.{block}.attentions.{layer}"] = f"input_blocks.{index}.1"
        renames[f"down_blocks.{block}.downsamplers.0.conv"] = (
            f"input_blocks.{(block + 1) * stride}.0.op"
        )
    renames["mid_block.resnets.0"] = "middle_block.0"
    renames["mid_block.attentions.0"] = "middle_block.1"
    renames["mid_block.resnets.1"] = "middle_block.2"
    for block, up_type in enumerate(config.up_block_types):
        has_attention = "CrossAttn" in up_type
        for layer in range(stride):
            index = block * stride + layer
            renames[f"up_blocks.{block}.resnets.{layer}"] = f"output_blocks.{index}.0"
            if has_attention:
                renames[f"up_blocks.{block}.attentions.{layer}"] = f"output_blocks.{index}.1"
        sampler_slot = 2 if has_attention else 1
        renames[f"up_blocks.{block}.upsamplers.0.conv"] = (
            f"output_blocks.{block * stride + per_block}.{sampler_slot}.conv"
        )

    converted: dict[str, torch.Tensor] = {}
    for key, tensor in unet.state_dict().items():
        prefix, rest = _split_by_known_prefix(key, renames)
        new_prefix = renames[prefix]
        if ".resnets." in prefix:
            rest = _rename_first(rest, _UNET_RESNET_NAMES)
        converted["model.diffusion_model." + new_prefix + rest] = tensor
    return converted


def vae_to_ldm(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    blocks = len(vae.config.down_block_types)
    renames = {
        "encoder.conv_norm_out": "encoder.norm_out",
        "decoder.conv_norm_out": "decoder.norm_out",
        "encoder.conv_in": "encoder.conv_in",
        "encoder.conv_out": "encoder.conv_out",
        "decoder.conv_in": "decoder.conv_in",
        "decoder.conv_out": "decoder.conv_out",
        "quant_conv": "quant_conv",
        "post_quant_conv": "post_quant_conv",
    }
    for coder in ("encoder", "decoder"):
        renames[f"{coder}.mid_block.resnets.0"] = f"{coder}.mid.block_1"
        renames[f"{coder}.mid_block.resnets.1"] = f"{coder}.mid.block_2"
        renames[f"{coder}.mid_block.attentions.0"] = f"{coder}.mid.attn_1"
    for block in range(blocks):
        # Encoder "down" counts from the input; decoder "up" counts from the output, so
        # diffusers' first up block is LDM's last.
        up = blocks - 1 - block
        renames[f"encoder.down_blocks.{block}.downsamplers.0.conv"] = (
            f"encoder.down.{block}.downsample.conv"
        )
        renames[f"decoder.up_blocks.{block}.upsamplers.0.conv"] = f"decoder.up.{up}.upsample.conv"
        for layer in range(vae.config.layers_per_block + 1):
            renames[f"encoder.down_blocks.{block}.resnets.{layer}"] = (
                f"encoder.down.{block}.block.{layer}"
            )
            renames[f"decoder.up_blocks.{block}.resnets.{layer}"] = f"decoder.up.{up}.block.{layer}"

    converted: dict[str, torch.Tensor] = {}
    for key, tensor in vae.state_dict().items():
        prefix, rest = _split_by_known_prefix(key, renames)
        if ".resnets." in prefix:
            rest = rest.replace("conv_shortcut", "nin_shortcut")
        if ".attentions." in prefix:
            rest = _rename_first(rest, _VAE_ATTENTION_NAMES)
            if tensor.ndim == 2:  # LDM's VAE attention uses 1x1 convolutions
                tensor = tensor[:, :, None, None]
        converted["first_stage_model." + renames[prefix] + rest] = tensor
    return converted


def clip_to_ldm(text_encoder: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIP text model under ``prefix`` in Hugging Face naming."""
    converted = {}
    for key, tensor in text_encoder.state_dict().items():
        if key.endswith("position_ids"):
            continue
        if not key.startswith("text_model."):
            key = "text_model." + key  # CLIPTextModel no longer nests text_model
        converted[prefix + key] = tensor
    return converted


def open_clip_to_ldm(text_encoder: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """SDXL's second text encoder in OpenCLIP naming (fused q/k/v, transposed projection)."""
    state = {
        key.removeprefix("text_model."): tensor
        for key, tensor in text_encoder.state_dict().items()
        if not key.endswith("position_ids")
    }
    converted = {
        prefix + "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        prefix + "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        prefix + "ln_final.weight": state.pop("final_layer_norm.weight"),
        prefix + "ln_final.bias": state.pop("final_layer_norm.bias"),
        prefix + "text_projection": state.pop("text_projection.weight").T.contiguous(),
    }
    layers = text_encoder.config.num_hidden_layers
    for layer in range(layers):
        source = f"encoder.layers.{layer}."
        target = f"{prefix}transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            converted[target + f"attn.in_proj_{kind}"] = torch.cat(
                [state.pop(source + f"self_attn.{name}_proj.{kind}") for name in ("q", "k", "v")]
            )
            converted[target + f"attn.out_proj.{kind}"] = state.pop(
                source + f"self_attn.out_proj.{kind}"
            )
            converted[target + f"ln_1.{kind}"] = state.pop(source + f"layer_norm1.{kind}")
            converted[target + f"ln_2.{kind}"] = state.pop(source + f"layer_norm2.{kind}")
            converted[target + f"mlp.c_fc.{kind}"] = state.pop(source + f"mlp.fc1.{kind}")
            converted[target + f"mlp.c_proj.{kind}"] = state.pop(source + f"mlp.fc2.{kind}")
    if state:
        raise NotImplementedError(f"unconverted text encoder tensors: {sorted(state)}")
    return converted


def pipeline_to_ldm(pipe: DiffusionPipeline) -> dict[str, torch.Tensor]:
    checkpoint = {**unet_to_ldm(pipe.unet), **vae_to_ldm(pipe.vae)}
    if getattr(pipe, "text_encoder_2", None) is not None:
        checkpoint.update(clip_to_ldm(pipe.text_encoder, "conditioner.embedders.0.transformer."))
        checkpoint.update(open_clip_to_ldm(pipe.text_encoder_2, "conditioner.embedders.1.model."))
    else:
        checkpoint.update(clip_to_ldm(pipe.text_encoder, "cond_stage_model.transformer."))
    return checkpoint


def save_single_file(pipe: DiffusionPipeline, path: Path) -> Path:
    checkpoint = pipeline_to_ldm(pipe)
    tensors = {key: value.detach().contiguous().cpu() for key, value in checkpoint.items()}
    save_file(tensors, str(path))
    return path


def _split_by_known_prefix(key: str, renames: dict[str, str]) -> tuple[str, str]:
    # The longest matching prefix wins: "down_blocks.0.resnets.1" before "down_blocks.0".
    for prefix in sorted(renames, key=len, reverse=True):
        if key == prefix or key.startswith(prefix + "."):
            return prefix, key[len(prefix) :]
    raise NotImplementedError(f"no LDM name for {key!r}")


def _rename_first(rest: str, pairs: tuple[tuple[str, str], ...]) -> str:
    for old, new in pairs:
        if rest.startswith("." + old + "."):
            return "." + new + rest[len(old) + 1 :]
    return rest
