"""Cheap progress previews: latents to RGB with one linear map, no VAE decode.

Each of the four latent channels contributes a fixed amount to red, green and blue. The
factors are least-squares fits of decoded images against latents, widely used for live
previews (they need no extra weights); they give a blurry but recognisable picture at
1/8 of the image size, which is then enlarged.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from engine.types import Family

# rows: latent channels; columns: R, G, B
LATENT_RGB_FACTORS: dict[Family, tuple[tuple[float, float, float], ...]] = {
    Family.SD15: (
        (0.3512, 0.2297, 0.3227),
        (0.3250, 0.4974, 0.2350),
        (-0.2829, 0.1762, 0.2721),
        (-0.2120, -0.2616, -0.7177),
    ),
    Family.SDXL: (
        (0.3651, 0.4232, 0.4341),
        (-0.2533, -0.0042, 0.1068),
        (0.1076, 0.1111, -0.0362),
        (-0.3165, -0.2492, -0.2188),
    ),
}
LATENT_RGB_BIAS: dict[Family, tuple[float, float, float]] = {
    Family.SD15: (0.0, 0.0, 0.0),
    Family.SDXL: (0.1084, -0.0175, -0.0011),
}
PREVIEW_MAX_SIDE = 512


def latents_to_rgb(latents: torch.Tensor, family: Family) -> np.ndarray:
    """(4, h, w) latents of one image -> (h, w, 3) uint8 approximation."""
    if latents.ndim != 3 or latents.shape[0] != 4:
        raise ValueError(f"expected (4, h, w) latents, got {tuple(latents.shape)}")
    factors = torch.tensor(LATENT_RGB_FACTORS[family], dtype=torch.float32)
    bias = torch.tensor(LATENT_RGB_BIAS[family], dtype=torch.float32)
    values = latents.detach().to(device="cpu", dtype=torch.float32)
    rgb = torch.einsum("chw,cr->hwr", values, factors) + bias
    rgb = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rgb.numpy()


def latent_preview(
    latents: torch.Tensor,
    family: Family,
    size: tuple[int, int] | None = None,
    max_side: int = PREVIEW_MAX_SIDE,
) -> Image.Image:
    """A preview image for one image's latents, enlarged towards ``size`` (the final
    image's width and height) but no larger than ``max_side``."""
    image = Image.fromarray(latents_to_rgb(latents, family))
    width, height = size or (image.width * 8, image.height * 8)
    scale = min(1.0, max_side / max(width, height))
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    if target != image.size:
        image = image.resize(target, Image.Resampling.BILINEAR)
    return image
