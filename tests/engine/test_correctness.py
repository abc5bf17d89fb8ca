"""What the user gave reaches the pipeline and shapes what comes out (tiny random weights,
fixed seeds).

Each test here fails when the pipeline is handed a blank prompt, a blank negative prompt,
a black image instead of the user's, or a mask that keeps nothing (each mutation was applied
to engine/ops/common.py and seen to fail).

Random weights draw noise, so "the output looks like the input" cannot be read from pixels:
the tiny VAE does not reproduce an image, and measured outputs are as far from their own
input's VAE round trip as from another's. Image operations are therefore checked where
the weights do not matter:

* the exact pixels the VAE encodes are the user's image (at the size the operation takes:
  enlarged for an upscale, inside the padding for an outpaint);
* different inputs give different outputs, and the same input the same output;
* inpainting and outpainting keep the kept area exactly in latent space: the latents the
  VAE decodes equal the input's encoded latents outside the mask, and differ inside it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from PIL import Image, ImageDraw

from engine.backend import DiffusersBackend
from engine.types import GenerationRequest, Operation
from tests.engine.conftest import TINY_MODELS
from tests.engine.helpers import centre_mask, never_cancel, png

MASK = centre_mask((64, 64))  # white (repaint) over the centre 32×32


def picture(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    """A smooth picture (a background and a few discs), unlike the noise the model draws."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = (int(v) for v in rng.integers(0, size[0] - 16, 2))
        draw.ellipse((x, y, x + 24, y + 24), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return image


A, B = picture(1), picture(2)


def distance(first: Image.Image, second: Image.Image) -> float:
    """Mean absolute difference in 8-bit levels."""
    a = np.asarray(first.convert("RGB"), dtype=np.float32)
    b = np.asarray(second.convert("RGB"), dtype=np.float32)
    return float(np.abs(a - b).mean())


def as_vae_input(image: Image.Image) -> torch.Tensor:
    """An image as diffusers hands it to the VAE encoder: (3, h, w) in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0 * 2.0 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


class VaeSpy:
    """Records what the VAE of a loaded model encodes, samples and decodes."""

    def __init__(self) -> None:
        self.encoded: list[torch.Tensor] = []  # encoder inputs, one image each
        self.sampled: list[torch.Tensor] = []  # latents drawn from the encoder's output
        self.decoded: list[torch.Tensor] = []  # latents handed to the decoder (unscaled)

    @classmethod
    @contextlib.contextmanager
    def on(
        cls, backend: DiffusersBackend, model: str, monkeypatch: pytest.MonkeyPatch
    ) -> Iterator[VaeSpy]:
        spy = cls()
        vae = backend.manager.get(backend.registry.get(model)).pipe.vae
        real_sample = DiagonalGaussianDistribution.sample

        def sample(self: DiagonalGaussianDistribution, *args: Any, **kwargs: Any) -> Any:
            latents = real_sample(self, *args, **kwargs)
            spy.sampled.extend(latents.detach().clone())
            return latents

        monkeypatch.setattr(DiagonalGaussianDistribution, "sample", sample)

        def encoder_input(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            spy.encoded.extend(args[0].detach().float().clone())

        def decoder_input(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            spy.decoded.extend(args[0].detach().float().clone())

        handles = [
            vae.encoder.register_forward_pre_hook(encoder_input),  # type: ignore[union-attr]
            vae.post_quant_conv.register_forward_pre_hook(decoder_input),  # type: ignore[union-attr]
        ]
        try:
            yield spy
        finally:
            for handle in handles:
                handle.remove()


@pytest.fixture
def spy_on(
    backend: DiffusersBackend, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str], contextlib.AbstractContextManager[VaeSpy]]:
    return lambda model: VaeSpy.on(backend, model, monkeypatch)


def generate(backend: DiffusersBackend, model: str, **fields: object) -> Image.Image:
    base = GenerationRequest(prompt="a red fox in snow", model=model, seed=42)
    request = backend.resolve(dataclasses.replace(base, **fields))  # type: ignore[arg-type]
    [image] = backend.run(request, request.slots("job"), never_cancel)
    assert image is not None
    return image.image


def assert_same_pixels(encoded: torch.Tensor, expected: Image.Image) -> None:
    wanted = as_vae_input(expected)
    assert encoded.shape == wanted.shape
    # The encoder was given this very image (one 8-bit level is 0.0078).
    assert float((encoded - wanted).abs().max()) < 1e-4


# --- prompts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("model", TINY_MODELS)
def test_different_prompts_give_different_images(backend: DiffusersBackend, model: str) -> None:
    fox = generate(backend, model)
    owl = generate(backend, model, prompt="an owl at night")
    assert distance(fox, owl) > 1.0
    assert distance(fox, generate(backend, model)) == 0.0  # and the same prompt, the same


@pytest.mark.parametrize("model", TINY_MODELS)
def test_the_negative_prompt_changes_the_image(backend: DiffusersBackend, model: str) -> None:
    plain = generate(backend, model)
    negative = generate(backend, model, negative_prompt="blurry, dark")
    assert distance(plain, negative) > 1.0


@pytest.mark.parametrize("model", TINY_MODELS)
def test_the_prompt_reaches_image_operations_too(backend: DiffusersBackend, model: str) -> None:
    def img2img(**fields: object) -> Image.Image:
        return generate(
            backend, model, operation=Operation.IMG2IMG, init_image=png(A), strength=0.8, **fields
        )

    assert distance(img2img(), img2img(prompt="an owl at night")) > 0.5
    assert distance(img2img(), img2img(negative_prompt="blurry, dark")) > 0.5


# --- input images -----------------------------------------------------------------------------

IMAGE_OPERATIONS: dict[str, dict[str, object]] = {
    "img2img low strength": {"operation": Operation.IMG2IMG, "strength": 0.3},
    "img2img": {"operation": Operation.IMG2IMG},
    "vary subtle": {"operation": Operation.VARIATION, "variation": "subtle"},
    "vary strong": {"operation": Operation.VARIATION, "variation": "strong"},
    "upscale": {"operation": Operation.UPSCALE},
    "inpaint": {"operation": Operation.INPAINT, "mask_image": png(MASK)},
    "outpaint": {
        "operation": Operation.OUTPAINT,
        "outpaint_sides": ("right",),
        "outpaint_pixels": 32,
    },
}


def expected_vae_input(name: str, image: Image.Image) -> tuple[Image.Image, tuple[int, ...]]:
    """(what the VAE must encode, the box of the encoded canvas it must fill)."""
    if name == "upscale":
        return image.resize((128, 128), Image.Resampling.LANCZOS), (0, 0, 128, 128)
    if name == "outpaint":
        return image, (0, 0, 64, 64)  # the canvas is 96×64: the image, then 32 new columns
    return image, (0, 0, 64, 64)


@pytest.mark.parametrize("model", TINY_MODELS)
@pytest.mark.parametrize("name", list(IMAGE_OPERATIONS))
def test_the_users_image_is_what_the_pipeline_encodes(
    backend: DiffusersBackend, spy_on: Any, model: str, name: str
) -> None:
    with spy_on(model) as spy:
        generate(backend, model, init_image=png(A), **IMAGE_OPERATIONS[name])
    assert spy.encoded, "the VAE encoded nothing"
    expected, (left, top, right, bottom) = expected_vae_input(name, A)
    assert_same_pixels(spy.encoded[0][:, top:bottom, left:right], expected)


@pytest.mark.parametrize("model", TINY_MODELS)
@pytest.mark.parametrize("name", list(IMAGE_OPERATIONS))
def test_an_input_image_shapes_the_result(backend: DiffusersBackend, model: str, name: str) -> None:
    fields = IMAGE_OPERATIONS[name]
    from_a = generate(backend, model, init_image=png(A), **fields)
    from_b = generate(backend, model, init_image=png(B), **fields)
    assert distance(from_a, from_b) > 0.1
    assert distance(from_a, generate(backend, model, init_image=png(A), **fields)) == 0.0


def latent_change(spy: VaeSpy) -> np.ndarray:
    """Per latent cell, how far the latents decoded are from those encoded from the input
    (largest over the channels)."""
    decoded, encoded = spy.decoded[-1], spy.sampled[0]
    assert decoded.shape == encoded.shape
    return (decoded - encoded).abs().amax(dim=0).numpy()


@pytest.mark.parametrize("model", TINY_MODELS)
def test_inpainting_keeps_the_unmasked_area(
    backend: DiffusersBackend, spy_on: Any, model: str
) -> None:
    with spy_on(model) as spy:
        generate(
            backend, model, operation=Operation.INPAINT, init_image=png(A), mask_image=png(MASK)
        )
    # The mask's centre 32×32 pixels are latent cells 2 to 5 of 8.
    keep = np.ones((8, 8), dtype=bool)
    keep[2:6, 2:6] = False
    change = latent_change(spy)
    assert change[keep].max() < 1e-4, "the unmasked area was not kept"
    assert change[~keep].mean() > 1e-2, "the masked area was not repainted"


@pytest.mark.parametrize("model", TINY_MODELS)
def test_outpainting_keeps_the_original_region(
    backend: DiffusersBackend, spy_on: Any, model: str
) -> None:
    with spy_on(model) as spy:
        image = generate(backend, model, init_image=png(A), **IMAGE_OPERATIONS["outpaint"])
    assert image.size == (96, 64)
    # Latent columns 0-6 hold the original (its last 8 px, column 7, are the repainted
    # seam); columns 8-11 are the new area.
    change = latent_change(spy)
    assert change[:, :7].max() < 1e-4, "the original region was not kept"
    assert change[:, 8:].mean() > 1e-2, "the new area was not painted"
