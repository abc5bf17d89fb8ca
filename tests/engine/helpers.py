"""Small builders shared by the engine tests (inputs, callbacks, comparisons)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from engine.types import StepInfo


def noise_image(size: tuple[int, int] = (64, 64), seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def centre_mask(size: tuple[int, int] = (64, 64)) -> Image.Image:
    mask = Image.new("L", size, 0)
    width, height = size
    mask.paste(255, (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    return mask


def never_cancel(_info: StepInfo) -> frozenset[str]:
    return frozenset()


class StepRecorder:
    """An on_step callback that records every step and cancels jobs from a given step."""

    def __init__(self, cancel: frozenset[str] = frozenset(), from_step: int = 1) -> None:
        self.steps: list[StepInfo] = []
        self._cancel = cancel
        self._from_step = from_step

    def __call__(self, info: StepInfo) -> frozenset[str]:
        self.steps.append(info)
        return self._cancel if info.step >= self._from_step else frozenset()


def max_pixel_difference(first: Image.Image, second: Image.Image) -> int:
    a = np.asarray(first.convert("RGB"), dtype=np.int16)
    b = np.asarray(second.convert("RGB"), dtype=np.int16)
    assert a.shape == b.shape
    return int(np.abs(a - b).max())


def write_tiny_lora(model: str, path: Path, *, seed: int = 0) -> Path:
    """A random-weight LoRA for a tiny model's UNet, written offline as one .safetensors
    file in the layout diffusers writes (and loads) for LoRAs."""
    import torch
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from engine.tiny import build_tiny_by_name

    pipe = build_tiny_by_name(model)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        config = LoraConfig(
            r=4,
            lora_alpha=4,
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
            init_lora_weights=False,  # random both ways: the adapter changes the output
        )
        pipe.unet.add_adapter(config)
    finally:
        torch.random.set_rng_state(generator_state)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    path.parent.mkdir(parents=True, exist_ok=True)
    type(pipe).save_lora_weights(path.parent, unet_lora_layers=layers, weight_name=path.name)
    return path
