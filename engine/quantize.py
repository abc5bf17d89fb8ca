"""FP8 for the UNet: torchao's float8 dynamic quantisation of its large linear layers.

Weights are stored in float8 (e4m3) with one scale per row; each activation is scaled to
float8 on the fly and the product runs on the tensor cores' FP8 path (twice bf16's rate on
Hopper). Only layers big enough to gain are converted: the timestep and size embeddings
see one row per image, where the conversion costs more than the matmul saves.
"""

from __future__ import annotations

import logging

import torch

from engine.errors import ModelLoadError

log = logging.getLogger(__name__)

FP8_MIN_FEATURES = 320  # SD's smallest attention width; every UNet block's layers pass
_SKIPPED_PARTS = ("time_embedding", "add_embedding", "time_emb_proj")


def fp8_refusal(device: torch.device) -> str | None:
    """Why FP8 cannot run on ``device``, or None when it can."""
    if device.type != "cuda":
        return (
            "FP8 needs an NVIDIA GPU with compute capability 8.9 or newer (Ada, Hopper, "
            f"Blackwell); the device is {device.type}. Turn UNET_FP8 off."
        )
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        name = torch.cuda.get_device_name(device)
        return (
            f"FP8 needs compute capability 8.9 or newer; {name} has {major}.{minor}. "
            "Turn UNET_FP8 off."
        )
    return None


def wants_fp8(name: str, module: torch.nn.Module) -> bool:
    """Whether a layer of the UNet is converted: a linear layer with both sides at least
    FP8_MIN_FEATURES wide and multiples of 16 (the FP8 matmul's alignment), outside the
    per-image embeddings."""
    if not isinstance(module, torch.nn.Linear):
        return False
    if any(part in name for part in _SKIPPED_PARTS):
        return False
    sides = (module.in_features, module.out_features)
    return all(side >= FP8_MIN_FEATURES and side % 16 == 0 for side in sides)


def quantize_fp8(unet: torch.nn.Module, device: torch.device) -> int:
    """Convert ``unet``'s large linear layers to FP8 in place; the number converted.
    Raises ModelLoadError when the GPU or the installation cannot."""
    refusal = fp8_refusal(device)
    if refusal is not None:
        raise ModelLoadError(refusal)
    try:
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            PerRow,
            quantize_,
        )
    except ImportError:
        raise ModelLoadError(
            "FP8 needs torchao: pip install 'diffusion-chat[gpu]' (or torchao), or turn "
            "UNET_FP8 off."
        ) from None
    chosen = {name for name, module in unet.named_modules() if wants_fp8(name, module)}
    quantize_(
        unet,
        Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
        filter_fn=lambda module, name: name in chosen,
    )
    log.info("FP8: %d linear layers of the UNet converted", len(chosen))
    return len(chosen)
