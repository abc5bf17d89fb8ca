"""Loading: device and dtype, sources (built-in, folder, single file, hub), sharing, LRU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from engine.backend import DiffusersBackend
from engine.errors import ModelLoadError, ModelNotFoundError, UnsafeCheckpointError
from engine.images import sampler_to_scheduler
from engine.loader import (
    LoaderOptions,
    ModelManager,
    PipelineKind,
    estimate_weight_bytes,
    make_scheduler,
    module_bytes,
    only_variant,
    pick_device,
    pick_dtype,
    progress_reporter,
    select_pipeline_files,
)
from engine.registry import SCHEDULERS, ModelRegistry, ModelSpec, RegistryError, SourceKind
from engine.tiny import build_tiny_by_name
from engine.types import Family, GenerationRequest
from tests.engine.helpers import max_pixel_difference, never_cancel
from tests.engine.ldm_export import save_single_file

# --- device and dtype ---------------------------------------------------------------------


def test_cpu_gets_float32_and_gpus_get_half_precision() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_dtype(torch.device("cpu")) is torch.float32
    assert pick_dtype(torch.device("cuda")) is torch.float16
    assert pick_dtype(torch.device("mps")) is torch.float16
    assert pick_dtype(torch.device("cuda"), "bf16") is torch.bfloat16
    with pytest.raises(ModelLoadError, match="Unknown dtype"):
        pick_dtype(torch.device("cpu"), "float8")


def test_default_device_is_the_best_available() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available() and torch.backends.mps.is_available():
        expected = "mps"
    assert pick_device().type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_a_gpu_explains_what_to_do() -> None:
    with pytest.raises(ModelLoadError, match="CUDA build of PyTorch"):
        pick_device("cuda")
    with pytest.raises(ModelLoadError, match="Unknown device"):
        pick_device("gpu please")


# --- built-in models, sharing and memory ------------------------------------------------------


def test_derived_pipelines_share_the_loaded_modules(
    manager: ModelManager, registry: ModelRegistry
) -> None:
    for name in ("tiny", "tiny-xl"):
        model = manager.get(registry.get(name))
        base = model.pipe
        for kind in (PipelineKind.IMG2IMG, PipelineKind.INPAINT):
            derived = manager.pipeline(model, kind)
            assert manager.pipeline(model, kind) is derived  # built once
            for component, module in base.components.items():
                if isinstance(module, torch.nn.Module):
                    assert getattr(derived, component) is module, (name, kind, component)
            assert derived._progress_bar_config.get("disable") is True
            assert derived.dtype == base.dtype == manager.dtype
        # from_pipe must not have cast the shared modules.
        assert module_bytes(base) == model.size_bytes


def test_models_load_lazily_and_the_lru_keeps_within_the_budget(registry: ModelRegistry) -> None:
    tiny_bytes = module_bytes(
        ModelManager(LoaderOptions(device="cpu")).get(registry.get("tiny")).pipe
    )
    manager = ModelManager(LoaderOptions(device="cpu", memory_budget_bytes=int(tiny_bytes * 1.5)))
    assert manager.loaded_names() == []
    manager.get(registry.get("tiny"))
    assert manager.is_loaded("tiny")
    manager.get(registry.get("tiny-xl"))
    assert manager.loaded_names() == ["tiny-xl"]  # tiny was evicted to make room
    assert manager.loaded_bytes() == manager.get(registry.get("tiny-xl")).size_bytes

    roomy = ModelManager(LoaderOptions(device="cpu", memory_budget_bytes=tiny_bytes * 10))
    first = roomy.get(registry.get("tiny"))
    roomy.get(registry.get("tiny-xl"))
    assert roomy.get(registry.get("tiny")) is first  # cached, not reloaded
    assert roomy.loaded_names() == ["tiny-xl", "tiny"]  # least recently used first
    roomy.unload_all()
    assert roomy.loaded_names() == []


def test_every_scheduler_name_builds_its_class(
    manager: ModelManager, registry: ModelRegistry
) -> None:
    config = manager.get(registry.get("tiny")).scheduler_config
    for name in SCHEDULERS:
        scheduler = make_scheduler(name, config)
        assert scheduler.config.num_train_timesteps == 1000
    assert type(make_scheduler("euler_a", config)).__name__ == "EulerAncestralDiscreteScheduler"
    assert make_scheduler("dpmpp_2m_karras", config).config.use_karras_sigmas is True
    assert make_scheduler("dpmpp_2m", config).config.use_karras_sigmas is False
    trailing = make_scheduler("euler_trailing", config)
    assert trailing.config.timestep_spacing == "trailing"
    trailing.set_timesteps(4)
    assert trailing.timesteps[0] == 999  # starts from pure noise, as few-step models need


# --- local folders and single files ----------------------------------------------------------


# The presets of the built-in tiny models, for registry entries that hold them as files.
TINY_PRESETS = "width = 64\nheight = 64\nmin_size = 32\nsteps = 4\nguidance = 5.0\n"


def registry_for(tmp_path: Path, entries: str) -> ModelRegistry:
    file = tmp_path / "models.toml"
    file.write_text(entries)
    return ModelRegistry.load(file)


def first_image(backend: DiffusersBackend, model: str):
    request = backend.resolve(GenerationRequest(prompt="a red fox", model=model, seed=5))
    [image] = backend.run(request, request.slots("job"), never_cancel)
    assert image is not None
    return image.image


def assert_same_weights(first: torch.nn.Module, second: torch.nn.Module) -> None:
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_a_local_diffusers_folder_loads_through_the_registry(
    tmp_path: Path, tiny_folders: dict[str, Path], backend: DiffusersBackend
) -> None:
    registry = registry_for(
        tmp_path,
        f'[models.folder]\nsource = "{tiny_folders["tiny"]}"\n{TINY_PRESETS}'
        f'[models.folder-xl]\nsource = "{tiny_folders["tiny-xl"]}"\n{TINY_PRESETS}',
    )
    assert registry.get("folder").source_kind is SourceKind.FOLDER
    assert registry.get("folder").family is Family.SD15  # detected from model_index.json
    assert registry.get("folder-xl").family is Family.SDXL
    manager = ModelManager(LoaderOptions(device="cpu"))
    local = DiffusersBackend(registry, manager)
    loaded = manager.get(registry.get("folder"))
    builtin = backend.manager.get(backend.registry.get("tiny"))
    for name in ("unet", "vae", "text_encoder"):
        assert_same_weights(getattr(loaded.pipe, name), getattr(builtin.pipe, name))
    # Same weights and scheduler config: the same image as the built-in model.
    assert max_pixel_difference(first_image(local, "folder"), first_image(backend, "tiny")) == 0
    manager.get(registry.get("folder-xl"))
    assert manager.loaded_names() == ["folder", "folder-xl"]


@pytest.mark.parametrize("name", ["tiny", "tiny-xl"])
def test_a_single_safetensors_file_loads_with_a_config_folder(
    name: str, tmp_path: Path, tiny_folders: dict[str, Path], backend: DiffusersBackend
) -> None:
    builtin = backend.manager.get(backend.registry.get(name))
    checkpoint = save_single_file(builtin.pipe, tmp_path / "model.safetensors")
    registry = registry_for(
        tmp_path,
        f'[models.file]\nsource = "model.safetensors"\nconfig = "{tiny_folders[name]}"\n'
        + TINY_PRESETS,
    )
    spec = registry.get("file")
    assert spec.source == str(checkpoint)
    assert spec.source_kind is SourceKind.SINGLE_FILE
    assert spec.family is builtin.family  # detected from the checkpoint's key names
    single = DiffusersBackend(registry, ModelManager(LoaderOptions(device="cpu")))
    loaded = single.manager.get(spec)
    components = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if name == "tiny-xl" else [])
    for component in components:
        assert_same_weights(getattr(loaded.pipe, component), getattr(builtin.pipe, component))
    assert max_pixel_difference(first_image(single, "file"), first_image(backend, name)) <= 1


def test_a_single_file_without_a_config_explains_what_to_set(tmp_path: Path) -> None:
    from engine.tiny import build_tiny_sd15

    save_single_file(build_tiny_sd15(), tmp_path / "model.safetensors")
    registry = registry_for(tmp_path, '[models.file]\nsource = "model.safetensors"\n')
    manager = ModelManager(
        LoaderOptions(device="cpu", local_files_only=True, hf_cache_dir=tmp_path / "empty-cache")
    )
    with pytest.raises(ModelLoadError) as caught:
        manager.get(registry.get("file"))
    assert "'config'" in str(caught.value)
    assert "model.safetensors" in str(caught.value)


def test_missing_local_weights_say_what_to_check(tmp_path: Path) -> None:
    registry = registry_for(
        tmp_path,
        '[models.gone]\nsource = "./gone"\nfamily = "sd15"\n'
        '[models.gone-file]\nsource = "./gone.safetensors"\nfamily = "sd15"\n',
    )
    manager = ModelManager(LoaderOptions(device="cpu"))
    with pytest.raises(ModelNotFoundError, match=r"does not exist.*Check 'source'"):
        manager.get(registry.get("gone"))
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        manager.get(registry.get("gone-file"))
    (tmp_path / "gone").mkdir()
    with pytest.raises(ModelNotFoundError, match="not a diffusers folder"):
        manager.get(registry.get("gone"))


def test_an_uncached_hub_model_without_downloads_says_how_to_get_it(tmp_path: Path) -> None:
    registry = registry_for(
        tmp_path, '[models.remote]\nsource = "someone/some-model"\nfamily = "sd15"\n'
    )
    manager = ModelManager(
        LoaderOptions(device="cpu", local_files_only=True, hf_cache_dir=tmp_path / "cache")
    )
    with pytest.raises(ModelNotFoundError) as caught:
        manager.get(registry.get("remote"))
    message = str(caught.value)
    assert "hf download someone/some-model" in message
    assert "HF_HOME" in message
    assert manager.tokenizer_for(registry.get("remote")) is None


def test_the_loader_refuses_pickles_even_without_the_registry(tmp_path: Path) -> None:
    spec = ModelRegistry.load().get("tiny")
    from dataclasses import replace

    pickled = replace(spec, source=str(tmp_path / "x.ckpt"), source_kind=SourceKind.SINGLE_FILE)
    with pytest.raises(UnsafeCheckpointError):
        ModelManager(LoaderOptions(device="cpu")).get(pickled)


def test_tokenizers_are_found_without_loading_weights(
    tmp_path: Path, tiny_folders: dict[str, Path]
) -> None:
    registry = registry_for(tmp_path, f'[models.folder]\nsource = "{tiny_folders["tiny"]}"\n')
    manager = ModelManager(LoaderOptions(device="cpu"))
    tokenizer = manager.tokenizer_for(registry.get("folder"))
    assert tokenizer is not None and tokenizer.model_max_length == 77
    assert len(tokenizer) == 514
    assert not manager.is_loaded("folder")
    assert manager.tokenizer_for(ModelRegistry.load().get("tiny")) is not None


# --- hub downloads (offline parts) ----------------------------------------------------------

SD15_REPO_FILES = [
    ".gitattributes",
    "README.md",
    "model_index.json",
    "v1-5-pruned.ckpt",
    "v1-5-pruned.safetensors",
    "feature_extractor/preprocessor_config.json",
    "safety_checker/config.json",
    "safety_checker/model.safetensors",
    "safety_checker/model.fp16.safetensors",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder/model.fp16.safetensors",
    "text_encoder/pytorch_model.bin",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.non_ema.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.fp16.safetensors",
    "vae/diffusion_pytorch_model.bin",
]
SD15_COMPONENTS = [
    "feature_extractor", "safety_checker", "scheduler", "text_encoder", "tokenizer", "unet", "vae",
]  # fmt: skip


def test_downloads_fetch_one_set_of_safetensors_weights_per_component() -> None:
    selected = select_pipeline_files(SD15_REPO_FILES, SD15_COMPONENTS, variant="fp16")
    assert selected == [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.fp16.safetensors",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.fp16.safetensors",
    ]
    plain = select_pipeline_files(SD15_REPO_FILES, SD15_COMPONENTS, variant=None)
    assert "unet/diffusion_pytorch_model.safetensors" in plain
    assert not any(".fp16." in file or ".non_ema." in file for file in plain)
    assert not any(file.endswith((".ckpt", ".bin")) for file in plain)


def test_download_progress_is_forwarded_as_text() -> None:
    messages: list[str] = []
    progress_class = progress_reporter(messages.append, "sd15")
    bar = progress_class(total=4 * 2**30, unit="B", unit_scale=True, desc="Downloading bytes")
    bar.update(2**30)
    bar.update(3 * 2**30)
    bar.close()
    assert messages, "no progress reported"
    assert messages[-1].startswith("Downloading sd15: ")
    assert "(100%)" in messages[-1]


def test_a_known_size_makes_room_before_loading(
    tmp_path: Path, tiny_folders: dict[str, Path]
) -> None:
    registry = registry_for(
        tmp_path,
        f'[models.folder]\nsource = "{tiny_folders["tiny"]}"\n{TINY_PRESETS}'
        f'[models.folder-xl]\nsource = "{tiny_folders["tiny-xl"]}"\n{TINY_PRESETS}',
    )
    on_disk = estimate_weight_bytes(registry.get("folder"))
    assert on_disk > 0
    manager = ModelManager(LoaderOptions(device="cpu", memory_budget_bytes=int(on_disk * 1.2)))
    manager.get(registry.get("folder-xl"))
    evicted_before: list[list[str]] = []
    original_load = manager._load

    def observing_load(spec: ModelSpec, report: object) -> object:
        evicted_before.append(manager.loaded_names())
        return original_load(spec, report)  # type: ignore[arg-type]

    manager._load = observing_load  # type: ignore[method-assign]
    manager.get(registry.get("folder"))
    assert evicted_before == [[]]  # the xl model left before the new one was loaded


def test_running_out_of_memory_while_loading_unloads_the_others_and_retries(
    registry: ModelRegistry,
) -> None:
    manager = ModelManager(LoaderOptions(device="cpu"))
    manager.get(registry.get("tiny-xl"))
    original_load = manager._load
    attempts: list[list[str]] = []

    def flaky_load(spec: ModelSpec, report: object) -> object:
        attempts.append(manager.loaded_names())
        if len(attempts) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return original_load(spec, report)  # type: ignore[arg-type]

    manager._load = flaky_load  # type: ignore[method-assign]
    manager.get(registry.get("tiny"))
    assert attempts == [["tiny-xl"], []]
    assert manager.loaded_names() == ["tiny"]

    def always_oom(spec: ModelSpec, report: object) -> object:
        raise torch.OutOfMemoryError("CUDA out of memory")

    manager._load = always_oom  # type: ignore[method-assign]
    with pytest.raises(ModelLoadError, match="Not enough memory to load 'tiny-xl'"):
        manager.get(registry.get("tiny-xl"))


def test_resolve_uses_its_own_tokenizer_instance(
    manager: ModelManager, registry: ModelRegistry
) -> None:
    model = manager.get(registry.get("tiny"))
    tokenizer = manager.tokenizer_for(registry.get("tiny"))
    assert tokenizer is not None and tokenizer is not model.tokenizer
    assert manager.tokenizer_for(registry.get("tiny")) is tokenizer  # cached


# --- speed settings -----------------------------------------------------------------------


def test_fused_qkv_projections_draw_the_same_image(
    registry: ModelRegistry, backend: DiffusersBackend
) -> None:
    manager = ModelManager(LoaderOptions(device="cpu", fuse_qkv=True))
    fused = DiffusersBackend(registry, manager)
    pipe = manager.get(registry.get("tiny")).pipe
    processors = {type(p).__name__ for p in pipe.unet.attn_processors.values()}
    assert processors == {"FusedAttnProcessor2_0"}
    # One matmul instead of three: the same numbers up to float rounding.
    assert max_pixel_difference(first_image(fused, "tiny"), first_image(backend, "tiny")) <= 1


def test_compiled_models_are_warmed_at_load_for_each_batch_size(
    registry: ModelRegistry, backend: DiffusersBackend
) -> None:
    # The eager backend runs dynamo's tracing (graphs, guards, recompiles) without generating
    # code, so this checks the wiring in seconds; inductor's speed is for bench/gpu.sh.
    options = LoaderOptions(
        device="cpu", torch_compile=True, compile_backend="eager", warmup_batches=(1, 2)
    )
    manager = ModelManager(options)
    compiled = DiffusersBackend(registry, manager)
    reports: list[str] = []
    loaded = manager.get(registry.get("tiny"), reports.append)
    assert reports[-2:] == ["compiling for 1 image", "compiling for 2 images"]
    for module in (loaded.pipe.unet, loaded.pipe.vae.decoder):
        assert module._compiled_call_impl is not None
    assert type(loaded.pipe.unet).__name__ == "UNet2DConditionModel"  # from_pipe still works
    assert max_pixel_difference(first_image(compiled, "tiny"), first_image(backend, "tiny")) == 0


# --- folders as other tools save them -------------------------------------------------------


def test_a_folder_with_only_fp16_weights_loads_without_naming_the_variant(
    tmp_path: Path, backend: DiffusersBackend
) -> None:
    build_tiny_by_name("tiny").save_pretrained(tmp_path / "half", variant="fp16")
    assert only_variant(tmp_path / "half") == "fp16"
    registry = registry_for(tmp_path, f'[models.half]\nsource = "./half"\n{TINY_PRESETS}')
    local = DiffusersBackend(registry, ModelManager(LoaderOptions(device="cpu")))
    assert max_pixel_difference(first_image(local, "half"), first_image(backend, "tiny")) == 0


def test_only_variant_reads_the_weight_file_names(tmp_path: Path) -> None:
    def folder(*names: str) -> Path:
        path = tmp_path / str(len(list(tmp_path.iterdir()))) / "unet"
        path.mkdir(parents=True)
        for name in names:
            (path / name).touch()
        return path.parent

    assert only_variant(folder("diffusion_pytorch_model.safetensors")) is None
    assert only_variant(folder("diffusion_pytorch_model.fp16.safetensors")) == "fp16"
    sharded = folder(
        "diffusion_pytorch_model.bf16-00001-of-00002.safetensors",
        "diffusion_pytorch_model.safetensors.index.bf16.json",
    )
    assert only_variant(sharded) == "bf16"
    plain_shards = folder(
        "diffusion_pytorch_model-00001-of-00002.safetensors",
        "diffusion_pytorch_model.safetensors.index.json",
    )
    assert only_variant(plain_shards) is None
    both = folder("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")
    assert only_variant(both) is None  # plain weights win: no variant needed
    assert only_variant(tmp_path / "missing") is None


def test_a_tokenizer_saved_without_a_length_limit_is_held_to_its_encoder(
    tmp_path: Path, tiny_folders: dict[str, Path], backend: DiffusersBackend
) -> None:
    folder = tmp_path / "nolimit"
    shutil.copytree(tiny_folders["tiny"], folder)
    config_file = folder / "tokenizer" / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.pop("model_max_length", None)
    config_file.write_text(json.dumps(config))
    registry = registry_for(tmp_path, f'[models.nolimit]\nsource = "./nolimit"\n{TINY_PRESETS}')
    manager = ModelManager(LoaderOptions(device="cpu"))
    local = DiffusersBackend(registry, manager)
    pipe = manager.get(registry.get("nolimit")).pipe
    assert pipe.tokenizer.model_max_length == pipe.text_encoder.config.max_position_embeddings
    assert max_pixel_difference(first_image(local, "nolimit"), first_image(backend, "tiny")) == 0


def test_an_sdxl_checkpoint_diffusers_cannot_map_is_refused_clearly(tmp_path: Path) -> None:
    # diffusers' converter tells the two text encoders apart by width; with equal widths
    # (as in diffusers' own test models) it leaves part of the second one empty.
    pipe = build_tiny_by_name("tiny-xl")
    pipe.register_modules(
        text_encoder_2=CLIPTextModelWithProjection(
            CLIPTextConfig(**{**pipe.text_encoder.config.to_dict(), "projection_dim": 64})
        )
    )
    pipe.save_pretrained(tmp_path / "config")
    save_single_file(pipe, tmp_path / "model.safetensors")
    registry = registry_for(
        tmp_path,
        f'[models.file]\nsource = "model.safetensors"\nconfig = "./config"\n{TINY_PRESETS}',
    )
    manager = ModelManager(LoaderOptions(device="cpu"))
    with pytest.raises(ModelLoadError, match=r"text_encoder_2 without weights.*diffusers folder"):
        manager.get(registry.get("file"))


# --- a UNet from another file (few-step models) ------------------------------------------------


def write_unet(model: str, path: Path, *, shift: float) -> dict[str, torch.Tensor]:
    """The tiny model's UNet weights, moved by ``shift``, as a .safetensors file."""
    from safetensors.torch import save_file

    weights = {
        key: value + shift if value.is_floating_point() else value
        for key, value in build_tiny_by_name(model).unet.state_dict().items()
    }
    save_file(weights, str(path))
    return weights


def test_a_registry_unet_replaces_the_base_models_unet(
    tmp_path: Path, backend: DiffusersBackend
) -> None:
    weights = write_unet("tiny-xl", tmp_path / "fast-unet.safetensors", shift=0.01)
    registry = registry_for(
        tmp_path,
        '[models.fast-xl]\nsource = "builtin:tiny-xl"\nunet = "./fast-unet.safetensors"\n'
        'steps = 4\nguidance = 0.0\nscheduler = "euler_trailing"\n',
    )
    spec = registry.get("fast-xl")
    assert spec.unet == str(tmp_path / "fast-unet.safetensors") and spec.presets.steps == 4
    fast = DiffusersBackend(registry, ModelManager(LoaderOptions(device="cpu")))
    unet = fast.manager.get(spec).pipe.unet
    assert all(torch.equal(unet.state_dict()[key], value) for key, value in weights.items())
    request = fast.resolve(GenerationRequest(prompt="a red fox", model="fast-xl", seed=5))
    assert request.scheduler == "euler_trailing" and request.guidance == 0.0
    [image] = fast.run(request, request.slots("job"), never_cancel)
    assert image is not None and "Sampler: Euler SGM Uniform" in image.parameters
    assert max_pixel_difference(image.image, first_image(backend, "tiny-xl")) > 8


def test_a_unet_that_does_not_fit_is_a_clear_load_error(tmp_path: Path) -> None:
    write_unet("tiny", tmp_path / "sd15-unet.safetensors", shift=0.0)
    registry = registry_for(
        tmp_path, '[models.odd]\nsource = "builtin:tiny-xl"\nunet = "./sd15-unet.safetensors"\n'
    )
    manager = ModelManager(LoaderOptions(device="cpu"))
    with pytest.raises(ModelLoadError, match=r"does not fit 'odd'.*same architecture"):
        manager.get(registry.get("odd"))
    missing = registry_for(
        tmp_path, '[models.gone]\nsource = "builtin:tiny"\nunet = "./gone.safetensors"\n'
    )
    with pytest.raises(ModelNotFoundError, match=r"gone\.safetensors"):
        manager.get(missing.get("gone"))
    offline = ModelManager(LoaderOptions(device="cpu", local_files_only=True))
    hub = registry_for(
        tmp_path,
        '[models.hub]\nsource = "builtin:tiny"\nunet = "someone/fast-unet"\n'
        'unet_weight_name = "unet.safetensors"\n',
    )
    with pytest.raises(ModelLoadError, match=r"unet.safetensors in someone/fast-unet.*download"):
        offline.get(hub.get("hub"))


@pytest.mark.parametrize(
    ("entry", "error", "message"),
    [
        ('unet = "./fast.ckpt"', UnsafeCheckpointError, "pickled"),
        ('unet = "someone/fast"\nunet_weight_name = "unet.bin"', UnsafeCheckpointError, "pickled"),
        ('unet = "someone/fast"', RegistryError, "unet_weight_name names"),
        ('unet_weight_name = "unet.safetensors"', RegistryError, "needs 'unet'"),
        ('unet = "./folder/"', RegistryError, "must be a .safetensors file"),
    ],
)
def test_the_registry_checks_unet_entries(
    tmp_path: Path, entry: str, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        registry_for(tmp_path, f'[models.x]\nsource = "builtin:tiny"\n{entry}\n')


def test_the_bundled_few_step_model_names_its_unet_and_sampler() -> None:
    spec = ModelRegistry.load().get("sdxl-lightning")
    assert spec.unet == "ByteDance/SDXL-Lightning"
    assert spec.unet_weight_name == "sdxl_lightning_4step_unet.safetensors"
    assert (spec.presets.steps, spec.presets.guidance, spec.presets.scheduler) == (
        4, 0.0, "euler_trailing",
    )  # fmt: skip
    assert "RAIL++" in spec.license
    # The web UI writes this sampler as Euler with the SGM Uniform schedule; both read back.
    assert sampler_to_scheduler("Euler", "SGM Uniform") == "euler_trailing"
    assert sampler_to_scheduler("Euler SGM Uniform") == "euler_trailing"
