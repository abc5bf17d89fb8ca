"""Every operation on both tiny layouts, determinism, batching, previews and cancellation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from PIL import Image

from engine import ops
from engine.backend import DiffusersBackend
from engine.errors import Interrupted, OutOfMemory
from engine.images import parse_parameters, read_png_parameters
from engine.loader import LoaderOptions, ModelManager
from engine.ops.common import OpContext, select_rows, shrink_scheduler_state
from engine.ops.outpaint import outpaint_geometry, outpaint_padding, pad_for_outpaint
from engine.preview import latent_preview, latents_to_rgb
from engine.registry import ModelRegistry
from engine.types import Family, GenerationRequest, ImageSlot, Operation, ResolvedRequest
from tests.engine.conftest import TINY_MODELS
from tests.engine.helpers import (
    StepRecorder,
    centre_mask,
    max_pixel_difference,
    never_cancel,
    noise_image,
    png,
)

IMAGE = png(noise_image((64, 64), seed=1))
MASK = png(centre_mask((64, 64)))
# Float tolerance for "the same image batched or alone", in 8-bit pixel levels.
BATCH_TOLERANCE = 2


def resolve(backend: DiffusersBackend, **fields: object) -> ResolvedRequest:
    base = GenerationRequest(prompt="a red fox in snow", model="tiny", seed=42)
    return backend.resolve(dataclasses.replace(base, **fields))  # type: ignore[arg-type]


def run(
    backend: DiffusersBackend, request: ResolvedRequest, job_id: str = "job", on_step=never_cancel
) -> list:
    return backend.run(request, request.slots(job_id), on_step)


OPERATION_INPUTS: dict[Operation, dict[str, object]] = {
    Operation.TXT2IMG: {},
    Operation.IMG2IMG: {"init_image": IMAGE, "strength": 0.5},
    Operation.VARIATION: {"init_image": IMAGE, "variation": "strong"},
    Operation.UPSCALE: {"init_image": IMAGE},
    Operation.INPAINT: {"init_image": IMAGE, "mask_image": MASK},
    Operation.OUTPAINT: {"init_image": IMAGE, "outpaint_sides": ("left",), "outpaint_pixels": 32},
}
EXPECTED_SIZE = {
    Operation.TXT2IMG: (64, 64),
    Operation.IMG2IMG: (64, 64),
    Operation.VARIATION: (64, 64),
    Operation.UPSCALE: (128, 128),
    Operation.INPAINT: (64, 64),
    Operation.OUTPAINT: (96, 64),
}


@pytest.mark.parametrize("model", TINY_MODELS)
@pytest.mark.parametrize("operation", list(Operation))
def test_every_operation_runs_on_both_layouts(
    backend: DiffusersBackend, model: str, operation: Operation
) -> None:
    request = resolve(
        backend, model=model, operation=operation, count=2, **OPERATION_INPUTS[operation]
    )
    recorder = StepRecorder()
    images = run(backend, request, on_step=recorder)
    assert [image.seed for image in images] == [42, 43]
    for image in images:
        assert image.image.mode == "RGB"
        assert image.image.size == EXPECTED_SIZE[operation]
        parsed = parse_parameters(image.parameters)
        assert parsed.prompt == "a red fox in snow"
        assert parsed.seed == image.seed
        assert parsed.model == model
        assert read_png_parameters(image.png_bytes()) == image.parameters
    # One callback per denoising step, numbered from 1 to the total actually run.
    totals = {info.total for info in recorder.steps}
    assert len(totals) == 1
    assert [info.step for info in recorder.steps] == list(range(1, totals.pop() + 1))


# --- determinism and batching ---------------------------------------------------------------


@pytest.mark.parametrize("model", TINY_MODELS)
def test_the_same_request_gives_the_same_png_bytes(backend: DiffusersBackend, model: str) -> None:
    request = resolve(backend, model=model, count=2, negative_prompt="blurry")
    first = [image.png_bytes() for image in run(backend, request)]
    second = [image.png_bytes() for image in run(backend, request)]
    assert first == second
    assert first[0] != first[1]  # different seeds, different images
    img2img = resolve(backend, model=model, operation=Operation.IMG2IMG, init_image=IMAGE)
    assert run(backend, img2img)[0].png_bytes() == run(backend, img2img)[0].png_bytes()


@pytest.mark.parametrize("model", TINY_MODELS)
@pytest.mark.parametrize("scheduler", ["euler_a", "dpmpp_2m"])
def test_an_image_is_the_same_batched_or_alone(
    backend: DiffusersBackend, model: str, scheduler: str
) -> None:
    batch = run(backend, resolve(backend, model=model, count=3, scheduler=scheduler))
    alone = run(backend, resolve(backend, model=model, seed=44, scheduler=scheduler))
    assert batch[2].seed == alone[0].seed == 44
    assert max_pixel_difference(batch[2].image, alone[0].image) <= BATCH_TOLERANCE


def test_jobs_with_different_prompts_share_a_call(backend: DiffusersBackend) -> None:
    fox = resolve(backend, prompt="a red fox", negative_prompt="blurry")
    owl = resolve(backend, prompt="an owl at night", seed=7, count=2)
    slots = fox.slots("fox") + owl.slots("owl")
    together = backend.run(fox, slots, never_cancel)
    assert [image.seed for image in together] == [42, 7, 8]
    assert "an owl at night" in together[1].parameters
    alone = run(backend, owl)
    assert max_pixel_difference(together[2].image, alone[1].image) <= BATCH_TOLERANCE
    assert max_pixel_difference(together[0].image, run(backend, fox)[0].image) <= BATCH_TOLERANCE


# --- progress and previews ------------------------------------------------------------------


def test_previews_come_for_the_first_image_of_jobs_that_asked(backend: DiffusersBackend) -> None:
    wants = resolve(backend, count=2, preview_every=2)
    quiet = resolve(backend, seed=9)
    slots = wants.slots("wants") + quiet.slots("quiet")
    recorder = StepRecorder()
    backend.run(wants, slots, recorder)
    assert [info.step for info in recorder.steps] == [1, 2, 3, 4]
    assert all(info.total == 4 for info in recorder.steps)
    with_previews = [info.step for info in recorder.steps if info.previews]
    assert with_previews == [2, 4]
    for info in recorder.steps:
        assert set(info.previews) <= {"wants"}
        for preview in info.previews.values():
            assert preview.size == (64, 64) and preview.mode == "RGB"


def test_latent_preview_is_a_linear_map_of_the_latents() -> None:
    latents = torch.zeros(4, 8, 12)
    rgb = latents_to_rgb(latents, Family.SD15)
    assert rgb.shape == (8, 12, 3) and (rgb == 128).all()
    latents[0] = 1.0
    assert latents_to_rgb(latents, Family.SD15)[0, 0].tolist() == [172, 157, 169]
    assert latent_preview(latents, Family.SDXL, (96, 64)).size == (96, 64)
    assert latent_preview(latents, Family.SDXL, (2048, 1024)).size == (512, 256)


# --- cancellation ---------------------------------------------------------------------------


@pytest.mark.parametrize("operation", [Operation.TXT2IMG, Operation.INPAINT])
def test_cancelling_the_only_job_interrupts_without_decoding(
    backend: DiffusersBackend, operation: Operation, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = resolve(backend, operation=operation, count=2, **OPERATION_INPUTS[operation])
    pipe = backend.manager.get(backend.registry.get("tiny"))
    decodes: list[int] = []
    original_decode = pipe.pipe.vae.decode
    monkeypatch.setattr(
        pipe.pipe.vae, "decode", lambda *a, **k: decodes.append(1) or original_decode(*a, **k)
    )
    recorder = StepRecorder(cancel=frozenset({"job"}), from_step=2)
    with pytest.raises(Interrupted):
        run(backend, request, on_step=recorder)
    assert recorder.steps[-1].step == 2  # stopped at the next step
    assert decodes == []
    monkeypatch.undo()
    assert len(run(backend, request)) == 2  # the pipeline still works afterwards


@pytest.mark.parametrize("model", TINY_MODELS)
@pytest.mark.parametrize("cancelled", ["first", "second"])
def test_a_cancelled_job_leaves_the_batch_and_the_other_still_returns(
    backend: DiffusersBackend, model: str, cancelled: str
) -> None:
    first = resolve(backend, model=model, count=2, scheduler="dpmpp_2m")
    second = resolve(backend, model=model, prompt="an owl", seed=100, scheduler="dpmpp_2m")
    slots = first.slots("first") + second.slots("second")
    recorder = StepRecorder(cancel=frozenset({cancelled}), from_step=2)
    outputs = backend.run(first, slots, recorder)
    kept = "second" if cancelled == "first" else "first"
    for slot, output in zip(slots, outputs, strict=True):
        assert (output is None) == (slot.job_id == cancelled)
    # Survivors are the images they would have been alone (the batch shrank mid-run).
    survivors = [output for slot, output in zip(slots, outputs, strict=True) if output]
    expected = run(backend, first if kept == "first" else second, kept)
    assert [image.seed for image in survivors] == [image.seed for image in expected]
    for got, want in zip(survivors, expected, strict=True):
        assert max_pixel_difference(got.image, want.image) <= BATCH_TOLERANCE


def test_inpainting_drops_cancelled_slots_without_shrinking(backend: DiffusersBackend) -> None:
    request = resolve(backend, operation=Operation.INPAINT, init_image=IMAGE, mask_image=MASK)
    slots = request.slots("keep") + dataclasses.replace(request, seed=5).slots("drop")
    outputs = backend.run(request, slots, StepRecorder(cancel=frozenset({"drop"}), from_step=1))
    assert outputs[1] is None
    assert outputs[0] is not None
    alone = run(backend, request, "keep")
    assert max_pixel_difference(outputs[0].image, alone[0].image) <= BATCH_TOLERANCE


def test_select_rows_keeps_guidance_halves_aligned() -> None:
    batch = torch.arange(3).float().reshape(3, 1)
    doubled = torch.cat([batch, batch + 10])  # [negatives, positives]
    assert select_rows(batch, [0, 2], 3).flatten().tolist() == [0, 2]
    assert select_rows(doubled, [0, 2], 3).flatten().tolist() == [0, 2, 10, 12]
    assert select_rows(torch.ones(5, 1), [0], 3).shape == (5, 1)  # not batch-shaped: left alone
    assert select_rows(None, [0], 3) is None


def test_scheduler_state_is_cut_only_where_it_has_the_latents_shape() -> None:
    class State:
        def __init__(self) -> None:
            self.model_outputs = [None, torch.zeros(3, 4, 2, 2)]
            self.sigmas = torch.zeros(3)
            self.last_sample = torch.zeros(3, 4, 2, 2)

    state = State()
    shrink_scheduler_state(state, (3, 4, 2, 2), [1])
    assert state.model_outputs[0] is None
    assert state.model_outputs[1].shape == (1, 4, 2, 2)
    assert state.last_sample.shape == (1, 4, 2, 2)
    assert state.sigmas.shape == (3,)


# --- prompts and metadata -------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt",
    ["🦊 in ❄️", "שלום a fox مرحبا", "null\x00byte", "\ud800 lone", "x" * 5000, "🦊" * 5000],
)
def test_hostile_prompts_generate_and_encode(backend: DiffusersBackend, prompt: str) -> None:
    request = resolve(backend, prompt=prompt, negative_prompt="\x00" + "n" * 5000)
    [image] = run(backend, request)
    data = image.png_bytes()
    assert read_png_parameters(data) == image.parameters
    assert "\x00" not in image.parameters


def test_parameters_follow_the_web_ui_format(backend: DiffusersBackend) -> None:
    request = resolve(backend, negative_prompt="blurry", scheduler="dpmpp_2m_karras", guidance=7.5)
    [image] = run(backend, request)
    lines = image.parameters.split("\n")
    assert lines[0] == "a red fox in snow"
    assert lines[1] == "Negative prompt: blurry"
    assert lines[2].startswith("Steps: 4, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 42, ")
    assert "Size: 64x64, Model: tiny" in lines[2]
    assert "Schedule type: Karras" in lines[2]
    upscale = resolve(backend, operation=Operation.UPSCALE, init_image=IMAGE)
    [bigger] = run(backend, upscale)
    assert "Size: 128x128" in bigger.parameters
    assert "Denoising strength: 0.3" in bigger.parameters


# --- outpaint geometry ----------------------------------------------------------------------


def test_outpaint_padding_and_geometry() -> None:
    assert outpaint_padding((), 64) == (64, 64, 64, 64)
    assert outpaint_padding(("left", "top"), 32) == (32, 32, 0, 0)
    inner, canvas = outpaint_geometry((512, 512), (), 128, min_size=256, max_size=1024)
    assert (inner, canvas) == ((512, 512), (768, 768))
    inner, canvas = outpaint_geometry((1024, 512), ("right",), 256, min_size=256, max_size=1024)
    assert canvas[0] <= 1024 and inner[0] % 8 == 0 and canvas == (inner[0] + 256, inner[1])
    inner, canvas = outpaint_geometry((40, 40), ("top",), 64, min_size=256, max_size=1024)
    assert canvas[1] >= 256  # small inputs grow to the model's minimum


def test_outpaint_mask_covers_the_new_area_and_a_seam() -> None:
    image = Image.new("RGB", (64, 64), (200, 10, 10))
    canvas, mask = pad_for_outpaint(image, (32, 0, 0, 0))
    assert canvas.size == mask.size == (96, 64)
    assert canvas.getpixel((0, 10)) == (200, 10, 10)  # padded with the edge colour
    assert mask.getpixel((0, 0)) == 255 and mask.getpixel((32 + 7, 30)) == 255
    assert mask.getpixel((32 + 8, 30)) == 0 and mask.getpixel((95, 63)) == 0


# --- upscaling ------------------------------------------------------------------------------


def test_large_upscales_tile_the_vae_only_for_that_call(
    backend: DiffusersBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ops.common, "VAE_TILING_MIN_PIXELS", 64 * 64)
    vae = backend.manager.get(backend.registry.get("tiny")).pipe.vae
    seen: list[bool] = []
    original = vae.decode
    monkeypatch.setattr(
        vae, "decode", lambda *a, **k: seen.append(vae.use_tiling) or original(*a, **k)
    )
    run(backend, resolve(backend, operation=Operation.UPSCALE, init_image=IMAGE))
    assert seen == [True]
    assert vae.use_tiling is False


def tiny_x4_upscaler(folder: Path) -> Path:
    """A random-weight StableDiffusionUpscalePipeline (x4), saved as a diffusers folder."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionUpscalePipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel

    from engine.tiny import _text_config, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            sample_size=16,
            in_channels=7,  # latents plus the low-resolution image
            out_channels=4,
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            num_class_embeds=1000,  # the noise level is a class label
        )
        vae = AutoencoderKL(
            block_out_channels=(32, 32, 32),  # 4x: the upscaler's VAE does the enlarging
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            latent_channels=4,
            layers_per_block=1,
            scaling_factor=0.08333,
        )
        text_encoder = CLIPTextModel(_text_config(tokenizer))
    StableDiffusionUpscalePipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        low_res_scheduler=DDPMScheduler(),
        scheduler=DDIMScheduler(prediction_type="v_prediction"),
        max_noise_level=350,
    ).save_pretrained(folder)
    return folder


def test_a_configured_upscaler_model_does_the_enlarging(tmp_path: Path) -> None:
    upscaler = tiny_x4_upscaler(tmp_path / "x4")
    registry = ModelRegistry.loads(
        f'[models.tiny-up]\nsource = "builtin:tiny"\nupscaler = "{upscaler}"\nupscaler_steps = 2\n',
        base_dir=tmp_path,
    )
    backend = DiffusersBackend(registry, ModelManager(LoaderOptions(device="cpu")))
    small = png(noise_image((32, 32), seed=3))
    request = resolve(backend, model="tiny-up", operation=Operation.UPSCALE, init_image=small)
    assert (request.width, request.height) == (64, 64)
    recorder = StepRecorder()
    [image] = run(backend, request, on_step=recorder)
    assert image.image.size == (64, 64)
    assert [info.step for info in recorder.steps] == [1, 2]
    with pytest.raises(Interrupted):
        run(backend, request, on_step=StepRecorder(cancel=frozenset({"job"})))


# --- out of memory --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"),
    ],
)
def test_device_out_of_memory_becomes_a_user_safe_error(
    backend: DiffusersBackend, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    def exhausted(_context: OpContext) -> list:
        raise error

    monkeypatch.setitem(ops.OPERATIONS, Operation.TXT2IMG, exhausted)
    with pytest.raises(OutOfMemory) as caught:
        run(backend, resolve(backend))
    assert "too large" in str(caught.value)


def test_other_runtime_errors_are_not_disguised(
    backend: DiffusersBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_context: OpContext) -> list:
        raise RuntimeError("shape mismatch")

    monkeypatch.setitem(ops.OPERATIONS, Operation.TXT2IMG, broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        run(backend, resolve(backend))


def test_an_empty_slot_list_runs_nothing(backend: DiffusersBackend) -> None:
    assert backend.run(resolve(backend), [], never_cancel) == []
    slot = ImageSlot(job_id="j", index=0, prompt="p", negative_prompt="", seed=1)
    assert backend.run(resolve(backend), [slot], never_cancel)[0] is not None
