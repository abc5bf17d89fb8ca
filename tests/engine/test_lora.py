"""LoRA adapters from the registry: loaded offline from tiny random-weight LoRAs, switched
per pipeline call, refused clearly when unknown or made for the other family."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.backend import DiffusersBackend
from engine.errors import ModelLoadError, UnsafeCheckpointError, ValidationError
from engine.loader import LoaderOptions, ModelManager
from engine.prompt_syntax import extract_loras
from engine.registry import ModelRegistry, RegistryError
from engine.types import GenerationRequest, ResolvedRequest
from tests.engine.helpers import max_pixel_difference, never_cancel, write_tiny_lora

REGISTRY = """
default = "tiny"
[models.tiny]
source = "builtin:tiny"
[models.tiny-xl]
source = "builtin:tiny-xl"
[loras.ink]
source = "./ink.safetensors"
family = "sd15"
weight = 0.9
triggers = ["inky"]
license = "MIT (made by the tests)"
[loras.ink-xl]
source = "./ink-xl.safetensors"
family = "sdxl"
[loras.film]
source = "./film.safetensors"
family = "sd15"
[loras.ink-folder]
source = "."
weight_name = "ink.safetensors"
family = "sd15"
weight = 0.9
"""


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> DiffusersBackend:
    folder = tmp_path_factory.mktemp("loras")
    write_tiny_lora("tiny", folder / "ink.safetensors", seed=1)
    write_tiny_lora("tiny", folder / "film.safetensors", seed=2)
    write_tiny_lora("tiny-xl", folder / "ink-xl.safetensors", seed=3)
    registry = ModelRegistry.loads(REGISTRY, base_dir=folder)
    return DiffusersBackend(registry, ModelManager(LoaderOptions(device="cpu")))


def resolve(backend: DiffusersBackend, prompt: str, **fields: object) -> ResolvedRequest:
    return backend.resolve(GenerationRequest(prompt=prompt, seed=7, steps=2, **fields))  # type: ignore[arg-type]


def image(backend: DiffusersBackend, request: ResolvedRequest):  # type: ignore[no-untyped-def]
    return backend.run(request, request.slots("j"), never_cancel)[0]


def test_tags_are_read_out_of_the_prompt() -> None:
    assert extract_loras("a fox <lora:ink:0.6> in snow <LORA:film>") == (
        "a fox in snow",
        [("ink", 0.6), ("film", None)],
    )
    assert extract_loras("a <lora:x:not-a-number>") == ("a <lora:x:not-a-number>", [])


def test_a_lora_changes_the_pixels_and_is_switched_off_after(backend: DiffusersBackend) -> None:
    plain = resolve(backend, "a fox inky")
    before = image(backend, plain)
    inked = resolve(backend, "a fox <lora:ink>")
    assert inked.loras == (("ink", 0.9),) and inked.prompt == "a fox, inky"  # trigger added
    assert inked.batch_key != plain.batch_key  # adapters are set per call
    with_lora = image(backend, inked)
    assert max_pixel_difference(with_lora.image, before.image) > 8
    assert "<lora:ink:0.9>" in with_lora.parameters.split("\n")[0]
    # A later call without a LoRA is untouched by it; weight 0 is the model alone.
    assert image(backend, plain).image.tobytes() == before.image.tobytes()
    zero = image(backend, resolve(backend, "a fox inky <lora:ink:0>"))
    assert max_pixel_difference(zero.image, before.image) <= 2
    # Two at once, from the option and the prompt, differ from either alone.
    both = resolve(backend, "a fox inky <lora:film:0.7>", loras=(("ink", None),))
    assert both.loras == (("film", 0.7), ("ink", 0.9))
    assert max_pixel_difference(image(backend, both).image, with_lora.image) > 8


def test_unknown_and_mismatched_loras_are_refused(backend: DiffusersBackend) -> None:
    with pytest.raises(ValidationError, match=r"no LoRA called 'oil'.*ink, film"):
        resolve(backend, "a fox <lora:oil>")
    with pytest.raises(ValidationError, match=r"made for SDXL models; tiny is SD 1\.5"):
        resolve(backend, "a fox <lora:ink-xl>")
    with pytest.raises(ValidationError, match="between -4 and 4"):
        resolve(backend, "a fox <lora:ink:9>")
    with pytest.raises(ValidationError, match="outside the"):
        resolve(backend, "a {fox|owl}", prompts=("a fox <lora:ink>", "an owl"), count=2)
    xl = image(backend, resolve(backend, "a fox <lora:ink-xl:1>", model="tiny-xl"))
    assert "<lora:ink-xl:1>" in xl.parameters


def test_the_registry_checks_lora_entries(tmp_path: Path) -> None:
    base = '[models.tiny]\nsource = "builtin:tiny"\n'
    with pytest.raises(RegistryError, match="family"):
        ModelRegistry.loads(base + '[loras.x]\nsource = "./x.safetensors"\n', base_dir=tmp_path)
    with pytest.raises(UnsafeCheckpointError, match="pickled"):
        ModelRegistry.loads(
            base + '[loras.x]\nsource = "./x.ckpt"\nfamily = "sd15"\n', base_dir=tmp_path
        )
    with pytest.raises(RegistryError, match="unknown keys"):
        ModelRegistry.loads(
            base + '[loras.x]\nsource = "a/b"\nfamily = "sd15"\nstrength = 1\n',
            base_dir=tmp_path,
        )
    registry = ModelRegistry.loads(
        base
        + '[loras.x]\nsource = "org/some-lora"\nfamily = "sdxl"\nweight_name = "x.safetensors"\n',
        base_dir=tmp_path,
    )
    lora = registry.lora("x")
    assert lora is not None and lora.source == "org/some-lora" and lora.weight == 0.8
    assert registry.loras(lora.family) == [lora] and registry.loras(None) == [lora]


def test_a_missing_lora_file_is_a_clear_load_error(tmp_path: Path) -> None:
    registry = ModelRegistry.loads(
        '[models.tiny]\nsource = "builtin:tiny"\n'
        '[loras.gone]\nsource = "./gone.safetensors"\nfamily = "sd15"\n',
        base_dir=tmp_path,
    )
    backend = DiffusersBackend(registry, ModelManager(LoaderOptions(device="cpu")))
    request = backend.resolve(GenerationRequest(prompt="a fox <lora:gone>", steps=1))
    with pytest.raises(ModelLoadError, match=r"LoRA gone's file .* does not exist"):
        backend.run(request, request.slots("j"), never_cancel)


def test_a_lora_in_a_folder_is_the_same_lora(backend: DiffusersBackend) -> None:
    from_file = image(backend, resolve(backend, "a fox, inky <lora:ink>"))
    from_folder = image(backend, resolve(backend, "a fox, inky <lora:ink-folder>"))
    assert from_folder.image.tobytes() == from_file.image.tobytes()
