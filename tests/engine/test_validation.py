"""DiffusersBackend.resolve: every default it fills and every error a user can cause.

resolve never loads weights, so these tests use a manager that has loaded nothing.
"""

from __future__ import annotations

import dataclasses
import io
import struct
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from engine.backend import (
    BackendLimits,
    DiffusersBackend,
    clean_prompt,
    denoising_steps,
    fit_size,
    steps_for_strength,
)
from engine.errors import ModelNotFoundError, ValidationError
from engine.loader import LoaderOptions, ModelManager
from engine.prompt_syntax import MAX_CHUNKS
from engine.registry import ModelRegistry
from engine.types import MAX_SEED, GenerationRequest, Operation
from tests.engine.helpers import centre_mask, noise_image, png

IMAGE = png(noise_image((64, 64)))
MASK = png(centre_mask((64, 64)))


@pytest.fixture(scope="module")
def resolver() -> DiffusersBackend:
    registry = ModelRegistry.loads(
        """
        [models.tiny]
        source = "builtin:tiny"
        [models.tiny-xl]
        source = "builtin:tiny-xl"
        [models.prefixed]
        source = "builtin:tiny"
        negative_prefix = "blurry, lowres"
        max_steps = 20
        [models.sd15]
        source = "a/b"
        family = "sd15"
        """,
        base_dir=Path.cwd(),
    )
    return DiffusersBackend(registry, ModelManager(LoaderOptions(device="cpu")))


def request(**overrides: object) -> GenerationRequest:
    base = GenerationRequest(prompt="a red fox in snow", model="tiny")
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def refused(resolver: DiffusersBackend, match: str, **overrides: object) -> None:
    with pytest.raises(ValidationError, match=match):
        resolver.resolve(request(**overrides))


# --- defaults ---------------------------------------------------------------------------------


def test_defaults_come_from_the_model_presets(resolver: DiffusersBackend) -> None:
    resolved = resolver.resolve(request(seed=7))
    assert (resolved.width, resolved.height, resolved.steps) == (64, 64, 4)
    assert resolved.guidance == 5.0
    assert resolved.scheduler == "euler_a"
    assert resolved.seed == 7 and resolved.seed_was_explicit
    assert resolved.strength is None
    assert resolved.model == "tiny"
    assert not resolved.prompt_truncated


def test_resolving_loads_no_weights_and_is_fast(resolver: DiffusersBackend) -> None:
    started = time.perf_counter()
    for model in ("tiny", "tiny-xl", "sd15"):
        resolver.resolve(request(model=model))
    assert time.perf_counter() - started < 2.0
    assert resolver.manager.loaded_names() == []


def test_a_missing_seed_is_drawn_and_marked(resolver: DiffusersBackend) -> None:
    seeds = {resolver.resolve(request()).seed for _ in range(5)}
    assert len(seeds) > 1
    resolved = resolver.resolve(request(count=3))
    assert not resolved.seed_was_explicit
    assert 0 <= resolved.seed <= MAX_SEED
    assert resolved.seeds == tuple((resolved.seed + i) % (MAX_SEED + 1) for i in range(3))


def test_the_negative_prefix_is_added(resolver: DiffusersBackend) -> None:
    assert resolver.resolve(request(model="prefixed")).negative_prompt == "blurry, lowres"
    both = resolver.resolve(request(model="prefixed", negative_prompt="text"))
    assert both.negative_prompt == "blurry, lowres, text"


def test_aspect_ratio_picks_the_family_size(resolver: DiffusersBackend) -> None:
    resolved = resolver.resolve(request(aspect="16:9"))
    assert (resolved.width, resolved.height) == (112, 64)
    sd15 = resolver.resolve(request(model="sd15", aspect="2:3"))
    assert (sd15.width, sd15.height) == (512, 768)
    explicit = resolver.resolve(request(aspect="16:9", width=96, height=96))
    assert (explicit.width, explicit.height) == (96, 96)  # explicit sizes win


def test_image_operations_take_the_input_size_and_default_strengths(
    resolver: DiffusersBackend,
) -> None:
    wide = png(noise_image((120, 64)))
    img2img = resolver.resolve(request(operation=Operation.IMG2IMG, init_image=wide))
    assert (img2img.width, img2img.height) == (120, 64)
    assert img2img.strength == 0.6
    subtle = resolver.resolve(request(operation=Operation.VARIATION, init_image=IMAGE))
    strong = resolver.resolve(
        request(operation=Operation.VARIATION, init_image=IMAGE, variation="strong")
    )
    assert (subtle.strength, strong.strength) == (0.35, 0.7)
    upscale = resolver.resolve(request(operation=Operation.UPSCALE, init_image=IMAGE))
    assert (upscale.width, upscale.height) == (128, 128)
    # Beyond the tiny model's 256 px max_size, upscales are drawn in tiles, up to 4x that.
    drawn_whole = png(noise_image((256, 256)))
    tiled = resolver.resolve(request(operation=Operation.UPSCALE, init_image=drawn_whole))
    assert (tiled.width, tiled.height) == (512, 512)
    widest = resolver.resolve(
        request(operation=Operation.UPSCALE, init_image=png(noise_image((512, 256))))
    )
    assert (widest.width, widest.height) == (1024, 512)
    largest = png(noise_image((1024, 512)))  # already at the 1024 px upscale limit
    with pytest.raises(ValidationError, match="already as large"):
        resolver.resolve(request(operation=Operation.UPSCALE, init_image=largest))
    inpaint = resolver.resolve(
        request(operation=Operation.INPAINT, init_image=IMAGE, mask_image=MASK)
    )
    assert inpaint.strength == 0.85
    assert inpaint.mask_image is not None
    with Image.open(io.BytesIO(inpaint.mask_image)) as mask:
        assert mask.mode == "L" and mask.tobytes() == centre_mask((64, 64)).tobytes()
    assert resolver.resolve(request(init_image=IMAGE)).init_image is None  # txt2img ignores it


def test_outpaint_canvas_grows_by_the_padding(resolver: DiffusersBackend) -> None:
    around = resolver.resolve(request(operation=Operation.OUTPAINT, init_image=IMAGE))
    # 128 px is capped to a quarter of the tiny model's 256 px limit.
    assert (around.width, around.height, around.outpaint_pixels) == (192, 192, 64)
    right = resolver.resolve(
        request(
            operation=Operation.OUTPAINT,
            init_image=IMAGE,
            outpaint_sides=("right",),
            outpaint_pixels=32,
        )
    )
    assert (right.width, right.height) == (96, 64)
    assert right.outpaint_sides == ("right",)


def test_steps_are_raised_when_strength_leaves_none(resolver: DiffusersBackend) -> None:
    """Only int(steps × strength) denoising steps run; when that is zero the steps are
    raised, whoever set them (presets, the user, a parent job), up to the model's max."""
    resolved = resolver.resolve(
        request(operation=Operation.IMG2IMG, init_image=IMAGE, strength=0.1)
    )
    assert resolved.steps == 10
    explicit = resolver.resolve(
        request(operation=Operation.IMG2IMG, init_image=IMAGE, strength=0.1, steps=4)
    )
    assert explicit.steps == 10
    enough = resolver.resolve(
        request(operation=Operation.IMG2IMG, init_image=IMAGE, strength=0.5, steps=3)
    )
    assert enough.steps == 3  # one denoising step already: left alone
    refused(
        resolver,
        "too low for prefixed.*at least 0.05",
        model="prefixed",
        operation=Operation.IMG2IMG,
        init_image=IMAGE,
        strength=0.04,
    )


@pytest.mark.parametrize("strength", [0.3, 0.35, 0.7, 0.1, 0.15, 0.29, 0.33, 0.999, 1.0])
@pytest.mark.parametrize("steps", [1, 2, 3, 8])
def test_the_raised_steps_are_the_fewest_that_denoise(steps: int, strength: float) -> None:
    raised = steps_for_strength(steps, strength, 50, "m")
    assert denoising_steps(raised, strength) >= 1
    assert raised == steps or denoising_steps(raised - 1, strength) == 0


# --- errors -----------------------------------------------------------------------------------


def test_unknown_model(resolver: DiffusersBackend) -> None:
    with pytest.raises(ModelNotFoundError, match="Available models: tiny"):
        resolver.resolve(request(model="nope"))


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t", "\x00\x00"])
def test_empty_prompt(resolver: DiffusersBackend, prompt: str) -> None:
    refused(resolver, "prompt is empty", prompt=prompt)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"width": 60}, "Width must be a multiple of 8"),
        ({"height": 100}, "Height must be a multiple of 8"),
        ({"width": 512}, "Width must be between 32 and 256"),
        ({"height": 24}, "Height must be between 32 and 256"),
        ({"steps": 0}, "Steps must be between 1 and 50"),
        ({"steps": 51}, "Steps must be between 1 and 50"),
        ({"guidance": -0.5}, "Guidance must be between 0 and 30"),
        ({"guidance": 31.0}, "Guidance must be between 0 and 30"),
        ({"guidance": float("nan")}, "Guidance must be between"),
        ({"count": 0}, "1 to 4 images"),
        ({"count": 5}, "1 to 4 images"),
        ({"scheduler": "magic"}, "Unknown scheduler 'magic'"),
        ({"aspect": "4:3"}, "Unknown aspect ratio"),
        ({"seed": -1}, "seed must be between"),
        ({"seed": MAX_SEED + 1}, "seed must be between"),
        ({"preview_every": -1}, "preview_every"),
    ],
)
def test_out_of_range_settings(
    resolver: DiffusersBackend, overrides: dict[str, object], match: str
) -> None:
    refused(resolver, match, **overrides)


def test_steps_limit_is_per_model(resolver: DiffusersBackend) -> None:
    refused(resolver, "between 1 and 20 for prefixed", model="prefixed", steps=21)


@pytest.mark.parametrize("strength", [0.0, -0.1, 1.5, float("nan")])
def test_strength_out_of_range(resolver: DiffusersBackend, strength: float) -> None:
    refused(
        resolver,
        "Strength must be",
        operation=Operation.IMG2IMG,
        init_image=IMAGE,
        strength=strength,
    )


@pytest.mark.parametrize(
    "operation",
    [
        Operation.IMG2IMG,
        Operation.VARIATION,
        Operation.UPSCALE,
        Operation.INPAINT,
        Operation.OUTPAINT,
    ],
)
def test_image_operations_need_an_image(resolver: DiffusersBackend, operation: Operation) -> None:
    refused(resolver, "needs an input image", operation=operation)


def test_inpainting_needs_a_mask_of_the_same_size(resolver: DiffusersBackend) -> None:
    refused(resolver, "needs a mask", operation=Operation.INPAINT, init_image=IMAGE)
    refused(
        resolver,
        "same size",
        operation=Operation.INPAINT,
        init_image=IMAGE,
        mask_image=png(centre_mask((32, 32))),
    )


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n broken"])
def test_input_that_is_not_an_image(resolver: DiffusersBackend, data: bytes) -> None:
    with pytest.raises(ValidationError):
        resolver.resolve(request(operation=Operation.IMG2IMG, init_image=data))


def test_images_above_the_pixel_limit_are_refused_before_decoding() -> None:
    registry = ModelRegistry.load()
    small_limit = DiffusersBackend(
        registry, ModelManager(LoaderOptions(device="cpu")), BackendLimits(max_input_pixels=1000)
    )
    with pytest.raises(ValidationError, match="Send a smaller image"):
        small_limit.resolve(request(operation=Operation.IMG2IMG, init_image=IMAGE))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a decompression bomb's shape)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


def test_a_decompression_bomb_is_refused(resolver: DiffusersBackend) -> None:
    with pytest.raises(ValidationError, match="Send a smaller image"):
        resolver.resolve(
            request(operation=Operation.IMG2IMG, init_image=png_claiming(50000, 50000))
        )


def test_outpaint_padding_out_of_range(resolver: DiffusersBackend) -> None:
    for pixels in (0, 4, 1024):
        refused(
            resolver,
            "Extend by 8 to 512",
            operation=Operation.OUTPAINT,
            init_image=IMAGE,
            outpaint_pixels=pixels,
        )


# --- prompts ----------------------------------------------------------------------------------


def test_long_prompts_are_cut_to_the_chunks_the_encoder_reads(resolver: DiffusersBackend) -> None:
    # The tiny tokenizer spends a token per "a": 75 fit in a chunk, MAX_CHUNKS chunks in all.
    resolved = resolver.resolve(request(prompt="a" * 5000))
    assert resolved.prompt_truncated
    assert resolved.prompt == "a" * 75 * MAX_CHUNKS
    words = " ".join(["fox"] * 200)
    cut = resolver.resolve(request(prompt=words))
    assert cut.prompt_truncated and words.startswith(cut.prompt)
    assert not resolver.resolve(request(prompt="a" * 75 * MAX_CHUNKS)).prompt_truncated


def test_long_prompts_are_estimated_when_no_tokenizer_is_on_disk(
    resolver: DiffusersBackend,
) -> None:
    # sd15 is a hub model that is not downloaded here: its length is estimated by words.
    long = " ".join(f"word{i}" for i in range(500))
    resolved = resolver.resolve(request(model="sd15", prompt=long))
    assert resolved.prompt_truncated
    assert long.startswith(resolved.prompt)


@pytest.mark.parametrize(
    "prompt",
    [
        "🦊🦊🦊 in ❄️ snow",
        "שלום עולם a fox مرحبا",
        "null\x00byte\x01and\x7fcontrol",
        "lone \ud800 surrogate",
        "e\u0301\u0301\u0301 combining",
        "\u202eright-to-left override",
        "x" * 5000,
        "🦊" * 5000,
    ],
)
def test_hostile_prompts_resolve_to_clean_text(resolver: DiffusersBackend, prompt: str) -> None:
    resolved = resolver.resolve(request(prompt=prompt))
    assert resolved.prompt
    assert "\x00" not in resolved.prompt and "\ud800" not in resolved.prompt
    resolved.prompt.encode("utf-8")  # no lone surrogates left


def test_clean_prompt() -> None:
    assert clean_prompt("  a\x00b  \t c \r\n\n d ") == "a b c\nd"
    assert clean_prompt("\ud83d") == ""


def test_fit_size_keeps_inputs_in_range() -> None:
    presets = ModelRegistry.load().get("sd15").presets
    assert fit_size((512, 512), presets) == (512, 512)
    assert fit_size((3000, 2000), presets) == (1024, 680)
    assert fit_size((100, 200), presets) == (256, 512)
