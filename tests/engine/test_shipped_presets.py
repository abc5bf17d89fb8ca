"""Every operation, every button, on every shipped model's presets (tiny random weights).

The bundled registry's models are too large to load in tests, but what breaks a derived job
is the presets (2 steps on the turbo models, a preview every 5 steps), not the weights. Each
shipped entry is copied with its steps, max_steps, guidance and scheduler onto the tiny
model of its family.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from engine.backend import DiffusersBackend, denoising_steps
from engine.loader import ModelManager
from engine.registry import ModelRegistry
from engine.types import Family, GenerationRequest, Operation, ResolvedRequest, preview_due
from tests.engine.helpers import StepRecorder, centre_mask, noise_image, png

SHIPPED = [spec for spec in ModelRegistry.load().specs() if not spec.is_builtin]
SHIPPED_NAMES = [spec.name for spec in SHIPPED]
IMAGE = png(noise_image((64, 64), seed=5))
MASK = png(centre_mask((64, 64)))
# The bot's default PREVIEW_EVERY.
PREVIEW_EVERY = 5

# What each button sends (bot/actions.py _derive and the slash commands): the operation and
# its inputs; the parent's model, steps, guidance and scheduler are added per test.
BUTTONS: dict[str, dict[str, object]] = {
    "upscale (U1-U4)": {"operation": Operation.UPSCALE, "init_image": IMAGE},
    "vary subtle": {"operation": Operation.VARIATION, "variation": "subtle", "init_image": IMAGE},
    "vary strong": {"operation": Operation.VARIATION, "variation": "strong", "init_image": IMAGE},
    "img2img": {"operation": Operation.IMG2IMG, "init_image": IMAGE},
    "img2img 0.3": {"operation": Operation.IMG2IMG, "init_image": IMAGE, "strength": 0.3},
    "inpaint": {"operation": Operation.INPAINT, "init_image": IMAGE, "mask_image": MASK},
    "outpaint": {"operation": Operation.OUTPAINT, "init_image": IMAGE, "outpaint_pixels": 16},
}


def shipped_on_tiny() -> ModelRegistry:
    entries = []
    for spec in SHIPPED:
        presets = spec.presets
        tiny = "builtin:tiny-xl" if spec.family is Family.SDXL else "builtin:tiny"
        entries.append(
            f"[models.{spec.name}]\n"
            f'source = "{tiny}"\n'
            f"steps = {presets.steps}\n"
            f"max_steps = {presets.max_steps}\n"
            f"guidance = {presets.guidance}\n"
            f'scheduler = "{presets.scheduler}"\n'
            f'negative_prefix = "{presets.negative_prefix}"\n'
        )
    return ModelRegistry.loads("\n".join(entries), base_dir=Path.cwd())


@pytest.fixture(scope="module")
def shipped(manager: ModelManager) -> DiffusersBackend:
    # The session's manager: the tiny weights are built once for every test.
    return DiffusersBackend(shipped_on_tiny(), manager)


def test_the_copies_carry_the_shipped_presets() -> None:
    registry = shipped_on_tiny()
    assert SHIPPED_NAMES  # the bundled registry has real models to check
    for spec in SHIPPED:
        copy = registry.get(spec.name).presets
        assert (copy.steps, copy.max_steps, copy.guidance, copy.scheduler) == (
            spec.presets.steps,
            spec.presets.max_steps,
            spec.presets.guidance,
            spec.presets.scheduler,
        )
    assert registry.get("sd-turbo").presets.steps == 2


def _parent(backend: DiffusersBackend, model: str) -> ResolvedRequest:
    return backend.resolve(GenerationRequest(prompt="a lighthouse", model=model, seed=11))


@pytest.mark.parametrize("button", list(BUTTONS))
@pytest.mark.parametrize("model", SHIPPED_NAMES)
@pytest.mark.parametrize("steps_from", ["presets", "parent job"])
def test_every_button_works_on_every_shipped_model(
    shipped: DiffusersBackend, model: str, button: str, steps_from: str
) -> None:
    parent = _parent(shipped, model)
    request = GenerationRequest(
        prompt=parent.prompt,
        model=model,
        seed=12,
        # The bot passes the parent's stored settings on (bot/actions.py _derive).
        steps=parent.steps if steps_from == "parent job" else None,
        guidance=parent.guidance if steps_from == "parent job" else None,
        scheduler=parent.scheduler if steps_from == "parent job" else None,
        **BUTTONS[button],  # type: ignore[arg-type]
    )
    resolved = shipped.resolve(request)
    assert resolved.strength is not None
    assert denoising_steps(resolved.steps, resolved.strength) >= 1
    assert resolved.steps <= shipped.registry.get(model).presets.max_steps
    assert resolved.steps >= parent.steps  # raised if need be, never lowered
    recorder = StepRecorder()
    [image] = shipped.run(resolved, resolved.slots("job"), recorder)
    assert image is not None
    assert image.image.size == (resolved.width, resolved.height)
    assert len(recorder.steps) == denoising_steps(resolved.steps, resolved.strength)
    assert f"Steps: {resolved.steps}," in image.parameters


@pytest.mark.parametrize("model", SHIPPED_NAMES)
def test_a_turbo_upscale_raises_its_steps_only_as_far_as_needed(
    shipped: DiffusersBackend, model: str
) -> None:
    presets = shipped.registry.get(model).presets
    upscale = shipped.resolve(
        GenerationRequest(
            prompt="a lighthouse",
            model=model,
            steps=presets.steps,
            operation=Operation.UPSCALE,
            init_image=IMAGE,
        )
    )
    # Strength 0.3: 2 steps run none, 4 run one; 25 or 30 steps already run 7 or 9.
    expected = 4 if presets.steps * 0.3 < 1 else presets.steps
    assert upscale.steps == expected


# --- previews ---------------------------------------------------------------------------------


@pytest.mark.parametrize("every", [1, 2, 5, 1000])
@pytest.mark.parametrize("total", [1, 2, 3, 4, 5, 8, 25])
def test_preview_cadence_previews_before_the_last_step(total: int, every: int) -> None:
    due = [step for step in range(1, total + 1) if preview_due(step, total, every)]
    if total >= 2:
        assert any(step < total for step in due), due
    if every < total:  # an uncapped cadence is kept as asked
        assert due == [step for step in range(1, total + 1) if step % every == 0]
    assert not any(preview_due(step, total, 0) for step in range(1, total + 1))


@pytest.mark.parametrize("model", SHIPPED_NAMES)
def test_every_shipped_model_shows_a_preview_before_the_image(
    shipped: DiffusersBackend, model: str
) -> None:
    request = dataclasses.replace(_parent(shipped, model), preview_every=PREVIEW_EVERY)
    recorder = StepRecorder()
    shipped.run(request, request.slots("job"), recorder)
    total = recorder.steps[-1].total
    assert total >= 2
    early = [info.step for info in recorder.steps if info.previews and info.step < total]
    assert early, f"{model}: no preview before step {total}"
    for info in recorder.steps:
        for preview in info.previews.values():
            assert preview.size == (request.width, request.height)
