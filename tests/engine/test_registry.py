"""The model registry: TOML parsing, sources, family detection, presets, aspect sizes."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from engine.errors import ModelNotFoundError, UnsafeCheckpointError
from engine.registry import (
    ASPECT_RATIOS,
    NATIVE_SIZES,
    ModelRegistry,
    RegistryError,
    SourceKind,
    check_safetensors,
    custom_model_spec,
    family_of_keys,
    family_of_safetensors,
)
from engine.types import Family


def registry_from(text: str, base_dir: Path, default_name: str | None = None) -> ModelRegistry:
    return ModelRegistry.loads(text, base_dir=base_dir, default_name=default_name)


# --- the bundled registry ------------------------------------------------------------------


def test_bundled_registry_offers_real_models_and_the_tiny_ones() -> None:
    registry = ModelRegistry.load()
    assert registry.default_name == "sd-turbo"
    assert {"sd-turbo", "sdxl-turbo", "sd15", "sdxl", "tiny", "tiny-xl"} <= set(registry.names())
    assert registry.get("sd15").source == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert registry.get("sdxl").source == "stabilityai/stable-diffusion-xl-base-1.0"
    assert registry.get("sdxl").family is Family.SDXL
    assert registry.get("sdxl-turbo").family is Family.SDXL
    assert registry.get("sd-turbo").family is Family.SD15
    for spec in registry.specs():
        assert spec.license and spec.license != "unspecified", spec.name
        assert spec.description, spec.name


def test_tiny_models_say_their_images_are_noise() -> None:
    registry = ModelRegistry.load()
    for name, family in (("tiny", Family.SD15), ("tiny-xl", Family.SDXL)):
        spec = registry.get(name)
        assert spec.is_builtin and spec.source_kind is SourceKind.BUILTIN
        assert spec.family is family
        assert "noise" in spec.description.lower()
        assert (spec.presets.width, spec.presets.height) == (64, 64)


def test_builtin_description_gets_the_noise_warning_even_if_the_toml_omits_it(
    tmp_path: Path,
) -> None:
    registry = registry_from('[models.mine]\nsource = "tiny"\ndescription = "Mine."', tmp_path)
    spec = registry.get("mine")
    assert spec.source == "builtin:tiny"
    assert "noise" in spec.description


def test_unknown_model_lists_the_available_names() -> None:
    registry = ModelRegistry.load()
    with pytest.raises(ModelNotFoundError) as caught:
        registry.get("nope")
    message = str(caught.value)
    assert "'nope'" in message
    for name in registry.names():
        assert name in message


def test_get_none_is_the_default_and_the_default_can_be_overridden() -> None:
    assert ModelRegistry.load().get(None).name == "sd-turbo"
    registry = ModelRegistry.load(default_name="tiny")
    assert registry.default_name == "tiny"
    assert registry.get(None).name == "tiny"
    with pytest.raises(RegistryError, match="not in the registry"):
        ModelRegistry.load(default_name="missing")


def test_registry_module_does_not_import_torch() -> None:
    code = "import sys, engine.registry; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


# --- sources ---------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin", ".CKPT"])
def test_pickled_checkpoints_are_refused_with_advice(tmp_path: Path, suffix: str) -> None:
    text = f'[models.old]\nsource = "models/old{suffix}"\nfamily = "sd15"'
    with pytest.raises(UnsafeCheckpointError) as caught:
        registry_from(text, tmp_path)
    message = str(caught.value)
    assert "safetensors" in message
    assert "arbitrary code" in message
    assert "[models.old]" in message


def test_sources_are_classified(tmp_path: Path) -> None:
    (tmp_path / "models" / "local").mkdir(parents=True)
    text = """
        [models.hub]
        source = "stabilityai/sd-turbo"
        [models.folder]
        source = "models/local"
        [models.absolute]
        source = "/nowhere/model"
        [models.file]
        source = "weights/model.safetensors"
        family = "sdxl"
        config = "./configs/sdxl"
        [models.builtin]
        source = "builtin:tiny-xl"
    """
    registry = registry_from(text, tmp_path)
    assert registry.get("hub").source_kind is SourceKind.HUB
    folder = registry.get("folder")
    assert folder.source_kind is SourceKind.FOLDER
    assert folder.source == str(tmp_path / "models" / "local")  # relative to the TOML
    assert registry.get("absolute").source_kind is SourceKind.FOLDER
    single = registry.get("file")
    assert single.source_kind is SourceKind.SINGLE_FILE
    assert single.source == str(tmp_path / "weights" / "model.safetensors")
    assert single.config == str(tmp_path / "configs" / "sdxl")
    assert registry.get("builtin").family is Family.SDXL


def test_unknown_builtin_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="unknown built-in"):
        registry_from('[models.x]\nsource = "builtin:huge"', tmp_path)


# --- family detection -----------------------------------------------------------------------


def write_model_index(folder: Path, index: dict[str, object], unet: dict[str, object]) -> None:
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps(index))
    (folder / "unet" / "config.json").write_text(json.dumps(unet))


def test_family_is_detected_from_a_diffusers_folder(tmp_path: Path) -> None:
    write_model_index(
        tmp_path / "xl",
        {"_class_name": "StableDiffusionXLPipeline", "text_encoder_2": ["transformers", "X"]},
        {},
    )
    write_model_index(
        tmp_path / "xl-by-unet",
        {"_class_name": "CustomPipeline"},
        {"addition_embed_type": "text_time"},
    )
    write_model_index(
        tmp_path / "sd",
        {"_class_name": "StableDiffusionPipeline", "text_encoder_2": [None, None]},
        {"addition_embed_type": None},
    )
    text = """
        [models.xl]
        source = "./xl"
        [models.xl-by-unet]
        source = "./xl-by-unet"
        [models.sd]
        source = "./sd"
    """
    registry = registry_from(text, tmp_path)
    assert registry.get("xl").family is Family.SDXL and registry.get("xl").family_detected
    assert registry.get("xl-by-unet").family is Family.SDXL
    assert registry.get("sd").family is Family.SD15


def test_family_is_detected_from_safetensors_key_names(tmp_path: Path) -> None:
    tensor = np.zeros((1,), dtype=np.float32)
    save_file(
        {"conditioner.embedders.1.model.positional_embedding": tensor}, tmp_path / "xl.safetensors"
    )
    save_file({"cond_stage_model.transformer.text_model.x": tensor}, tmp_path / "sd.safetensors")
    assert family_of_safetensors(tmp_path / "xl.safetensors") is Family.SDXL
    assert family_of_safetensors(tmp_path / "sd.safetensors") is Family.SD15
    registry = registry_from('[models.f]\nsource = "xl.safetensors"', tmp_path)
    assert registry.get("f").family is Family.SDXL


def test_explicit_family_wins_and_is_validated(tmp_path: Path) -> None:
    registry = registry_from('[models.a]\nsource = "x/y"\nfamily = "sdxl"', tmp_path)
    assert registry.get("a").family is Family.SDXL
    assert not registry.get("a").family_detected
    with pytest.raises(RegistryError, match="family must be one of"):
        registry_from('[models.a]\nsource = "x/y"\nfamily = "sd3"', tmp_path)


# --- presets and validation -----------------------------------------------------------------


def test_presets_fall_back_to_family_defaults(tmp_path: Path) -> None:
    text = """
        [models.xl]
        source = "a/b"
        family = "sdxl"
        steps = 8
        negative_prefix = "blurry"
    """
    presets = registry_from(text, tmp_path).get("xl").presets
    assert presets.steps == 8
    assert presets.negative_prefix == "blurry"
    assert (presets.width, presets.height) == (1024, 1024)
    assert presets.guidance == 6.0


@pytest.mark.parametrize(
    ("sample_size", "vae_blocks", "expected"),
    [
        (32, 2, (64, 32, 128)),  # diffusers' own test models: 64 px
        (96, 4, (768, 384, 1536)),  # SD 2 at 768 px
        (64, 4, (512, 256, 1024)),  # SD 1.5: the family's presets as they are
        ([48, 48], 3, (192, 96, 384)),
    ],
)
def test_presets_centre_on_the_size_a_folder_model_was_built_for(
    tmp_path: Path, sample_size: object, vae_blocks: int, expected: tuple[int, int, int]
) -> None:
    folder = tmp_path / "model"
    write_model_index(
        folder, {"_class_name": "StableDiffusionPipeline"}, {"sample_size": sample_size}
    )
    (folder / "vae").mkdir()
    (folder / "vae" / "config.json").write_text(
        json.dumps({"block_out_channels": [32] * vae_blocks})
    )
    registry = registry_from('[models.m]\nsource = "./model"', tmp_path)
    presets = registry.get("m").presets
    assert (presets.width, presets.min_size, presets.max_size) == expected
    assert presets.height == presets.width
    wide = registry.get("m").size_for_aspect("16:9")
    assert wide[0] > wide[1] and expected[1] <= min(wide) and max(wide) <= expected[2]
    # What the registry file says still wins.
    width = expected[0] + 8
    explicit = registry_from(f'[models.m]\nsource = "./model"\nwidth = {width}', tmp_path)
    assert explicit.get("m").presets.width == width


def test_presets_without_readable_configs_are_the_familys(tmp_path: Path) -> None:
    write_model_index(tmp_path / "m", {"_class_name": "StableDiffusionPipeline"}, {})
    presets = registry_from('[models.m]\nsource = "./m"', tmp_path).get("m").presets
    assert (presets.width, presets.min_size) == (512, 256)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('scheduler = "magic"', "scheduler must be one of"),
        ("width = 500", "multiple of 8"),
        ("min_size = 1024\nmax_size = 512", "min_size must not exceed"),
        ("steps = 60\nmax_steps = 50", "steps must be between"),
        ("steps = true", "'steps' must be int"),
        ('colour = "red"', "unknown keys"),
        ("guidance = -1", "guidance must not be negative"),
    ],
)
def test_bad_entries_are_reported_with_the_entry_name(
    tmp_path: Path, extra: str, message: str
) -> None:
    with pytest.raises(RegistryError) as caught:
        registry_from(f'[models.bad]\nsource = "a/b"\nfamily = "sd15"\n{extra}', tmp_path)
    assert message in str(caught.value)
    assert "[models.bad]" in str(caught.value)


def test_malformed_files_are_reported(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="not valid TOML"):
        registry_from("[models.x", tmp_path)
    with pytest.raises(RegistryError, match="lists no models"):
        registry_from('default = "x"', tmp_path)
    with pytest.raises(RegistryError, match="'source' is required"):
        registry_from("[models.x]\nfamily = 'sd15'", tmp_path)
    with pytest.raises(RegistryError, match="does not exist"):
        ModelRegistry.load(tmp_path / "missing.toml")


def test_a_registry_file_is_read_with_paths_relative_to_it(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    file = tmp_path / "models.toml"
    file.write_text('default = "mine"\n[models.mine]\nsource = "./weights"\nfamily = "sd15"\n')
    registry = ModelRegistry.load(file)
    assert registry.get(None).source == str(tmp_path / "weights")


# --- aspect ratios ------------------------------------------------------------------------


def test_aspect_ratios_map_to_native_sizes() -> None:
    registry = ModelRegistry.load()
    assert registry.get("sd15").aspect_sizes() == NATIVE_SIZES[Family.SD15]
    assert registry.get("sdxl").aspect_sizes() == NATIVE_SIZES[Family.SDXL]
    assert registry.get("sdxl").size_for_aspect("16:9") == (1344, 768)
    assert registry.get("sd15").size_for_aspect("2:3") == (512, 768)


@pytest.mark.parametrize("name", ["tiny", "tiny-xl", "sdxl-turbo", "sd-turbo"])
def test_scaled_aspect_sizes_keep_shape_and_multiples_of_8(name: str) -> None:
    spec = ModelRegistry.load().get(name)
    for aspect in ASPECT_RATIOS:
        width, height = spec.size_for_aspect(aspect)
        assert width % 8 == 0 and height % 8 == 0
        assert spec.presets.min_size <= width <= spec.presets.max_size
        assert spec.presets.min_size <= height <= spec.presets.max_size
        ratio_w, ratio_h = (int(part) for part in aspect.split(":"))
        assert (width >= height) == (ratio_w >= ratio_h)
        assert abs(width / height - ratio_w / ratio_h) < 0.2
    assert spec.size_for_aspect("1:1") == (spec.presets.width, spec.presets.height)


def test_unknown_aspect_is_refused() -> None:
    with pytest.raises(ValueError, match="aspect ratio"):
        ModelRegistry.load().get("tiny").size_for_aspect("4:3")


# --- custom models: added and removed at run time -------------------------------------------


def test_custom_models_join_and_leave_a_running_registry(tmp_path: Path) -> None:
    registry = registry_from('[models.base]\nsource = "org/base"\nfamily = "sd15"\n', tmp_path)
    save_file(
        {"conditioner.embedders.1.model.x": np.zeros((2, 2), dtype=np.float32)},
        tmp_path / "xl.safetensors",
    )
    spec = custom_model_spec(
        "mine", str(tmp_path / "xl.safetensors"), family=Family.SDXL, description="from a link"
    )
    assert spec.source_kind is SourceKind.SINGLE_FILE and spec.presets.width == 1024
    names_before = registry.names()
    registry.add(spec)
    assert registry.get("mine") is spec and "mine" in registry
    assert registry.names() == ["base", "mine"] and names_before == ["base"]
    assert registry.is_custom("mine") and not registry.is_custom("base")
    assert registry.custom_names() == ["mine"]
    with pytest.raises(RegistryError, match="exists already"):
        registry.add(spec)
    with pytest.raises(RegistryError, match="not a custom model"):
        registry.remove("base")
    hub = custom_model_spec("hub-one", "org/other", family=Family.SD15)
    assert hub.source_kind is SourceKind.HUB
    registry.add(hub)
    assert registry.remove("mine") is spec
    assert "mine" not in registry and registry.names() == ["base", "hub-one"]
    assert not registry.is_custom("mine") and registry.custom_names() == ["hub-one"]
    with pytest.raises(ModelNotFoundError):
        registry.get("mine")
    with pytest.raises(RegistryError, match="valid model name"):
        registry.add(dataclasses.replace(hub, name="not ok!"))


def test_a_file_must_be_a_whole_safetensors_file_to_pass(tmp_path: Path) -> None:
    good = tmp_path / "good.safetensors"
    save_file({"a": np.zeros((4,), dtype=np.float32), "b": np.ones((2,), np.int64)}, good)
    assert sorted(check_safetensors(good)) == ["a", "b"]
    whole = good.read_bytes()
    cases = {
        "pickle": b"\x80\x04\x95" + b"\0" * 64,  # what torch.save writes first
        "zip": b"PK\x03\x04" + b"\0" * 64,  # torch.save's zip container
        "short": b"\1\0",
        "truncated": whole[:-4],
        "trailing": whole + b"\0" * 8,
        "not-json": (8).to_bytes(8, "little") + b"{nope!!}" + b"\0" * 8,
        "no-tensors": (2).to_bytes(8, "little") + b"{}",
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(data)
        with pytest.raises(ValueError):
            check_safetensors(path)
    assert family_of_keys(["model.diffusion_model.label_emb.0.0.weight"]) is Family.SDXL
    assert family_of_keys(["cond_stage_model.transformer.x"]) is Family.SD15
