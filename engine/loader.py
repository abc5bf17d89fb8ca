"""Loading models: device and dtype choice, sources, derived pipelines, and an LRU by memory.

``ModelManager`` turns a registry ``ModelSpec`` into a ``LoadedModel`` the first time it is
needed and keeps recently used models while they fit a memory budget. Derived pipelines
(img2img, inpaint) are built from the loaded modules with ``from_pipe``, so the weights are
in memory once whatever operations run.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import io
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import (
    DiffusionPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.models.attention_processor import AttnProcessor2_0
from tqdm.std import tqdm
from transformers import CLIPTokenizer

from engine import cuda_graphs
from engine.errors import (
    HubUnreachableError,
    ModelLoadError,
    ModelNotFoundError,
    UnsafeCheckpointError,
)
from engine.quantize import quantize_fp8
from engine.registry import PICKLED_SUFFIXES, SCHEDULERS, LoraSpec, ModelSpec, SourceKind
from engine.tiny import build_tiny_by_name, tiny_tokenizer
from engine.types import DEFAULT_BATCH_IMAGES, Family, LoadCallback

log = logging.getLogger(__name__)
TOKENIZER_ENCODERS = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))

# name -> (diffusers class name, config overrides). The overrides pin every option that a
# model's own scheduler config might have set differently (Karras sigmas, solver type).
SCHEDULER_CLASSES: dict[str, tuple[str, dict[str, Any]]] = {
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {"use_karras_sigmas": False}),
    "euler_trailing": (
        "EulerDiscreteScheduler",
        {"use_karras_sigmas": False, "timestep_spacing": "trailing"},
    ),
    "ddim": ("DDIMScheduler", {}),
    "dpmpp_2m": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False},
    ),
    "dpmpp_2m_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "unipc": ("UniPCMultistepScheduler", {"use_karras_sigmas": False}),
    "lcm": ("LCMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
}
assert set(SCHEDULER_CLASSES) >= set(SCHEDULERS), "every registry scheduler needs a class"

# Fraction of device memory the LRU may fill with weights when no budget is set: the rest
# is working memory for activations and the VAE decode.
DEFAULT_GPU_BUDGET_FRACTION = 0.7
DEFAULT_CPU_BUDGET_FRACTION = 0.5
DOWNLOAD_REPORT_INTERVAL_S = 1.0
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")  # either one holds a vocabulary
SAFETY_CHECKER_COMPONENTS = frozenset({"safety_checker", "feature_extractor", "image_encoder"})


class PipelineKind(StrEnum):
    TXT2IMG = "txt2img"
    IMG2IMG = "img2img"
    INPAINT = "inpaint"


PIPELINE_CLASSES: dict[Family, dict[PipelineKind, type[DiffusionPipeline]]] = {
    Family.SD15: {
        PipelineKind.TXT2IMG: StableDiffusionPipeline,
        PipelineKind.IMG2IMG: StableDiffusionImg2ImgPipeline,
        PipelineKind.INPAINT: StableDiffusionInpaintPipeline,
    },
    Family.SDXL: {
        PipelineKind.TXT2IMG: StableDiffusionXLPipeline,
        PipelineKind.IMG2IMG: StableDiffusionXLImg2ImgPipeline,
        PipelineKind.INPAINT: StableDiffusionXLInpaintPipeline,
    },
}

_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float32": torch.float32,
    "fp32": torch.float32,
}


@dataclass(frozen=True, slots=True)
class LoaderOptions:
    device: str | None = None  # None: cuda, then mps, then cpu
    dtype: str | None = None  # None: float16 on a GPU, float32 on the CPU
    channels_last: bool = False
    # torch.compile the UNet and the VAE decoder, then warm them up at load (see _warm_up).
    torch_compile: bool = False
    compile_backend: str = "inductor"  # tests use "eager": dynamo traces, nothing is generated
    compile_mode: str | None = None  # inductor's mode: None (default), "max-autotune", ...
    # Inductor's and Triton's caches (compiled kernels): a later start reuses them. None:
    # torch's default, a folder under the system's temporary directory.
    compile_cache_dir: Path | None = None
    # Replay the UNet's steps as CUDA graphs (engine/cuda_graphs.py); ignored off CUDA.
    # None (auto): for UNets without SDXL's size conditioning, whose steps are launch-bound.
    cuda_graphs: bool | None = None
    fp8: bool = False  # the UNet's large linear layers in float8 (engine/quantize.py)
    # Batch sizes compiled at load; None: 1 and the family's default batch size.
    warmup_batches: tuple[int, ...] | None = None
    fuse_qkv: bool = False  # one matmul for attention's query, key and value projections
    vae_tiling: bool = False  # always tile the VAE (upscales tile large outputs regardless)
    vae_slicing: bool = False  # decode a batch one image at a time
    cpu_offload: bool = False  # keep idle modules in RAM: fits SDXL in ~6 GB of VRAM
    memory_budget_bytes: int | None = None  # None: a share of the device's memory
    hf_cache_dir: Path | None = None  # None: the Hugging Face default ($HF_HOME)
    local_files_only: bool = False  # never download; a missing hub model is an error


@dataclass(eq=False, slots=True)
class LoadedModel:
    spec: ModelSpec
    pipe: DiffusionPipeline  # the txt2img pipeline; it owns the modules
    device: torch.device
    dtype: torch.dtype
    size_bytes: int
    load_s: float
    scheduler_config: dict[str, Any]
    derived: dict[PipelineKind, DiffusionPipeline] = field(default_factory=dict)
    offload_owner: PipelineKind | None = None  # which pipeline holds the offload hooks
    loras: set[str] = field(default_factory=set)  # adapters loaded into the modules
    active_loras: tuple[tuple[str, float], ...] = ()  # as set for the last pipeline call

    @property
    def family(self) -> Family:
        return self.spec.family

    @property
    def tokenizer(self) -> CLIPTokenizer:
        return self.pipe.tokenizer


def dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """The dtype argument for from_pretrained / from_single_file / from_pipe.

    Newer diffusers call it ``dtype`` and deprecate ``torch_dtype``; older ones only know
    ``torch_dtype`` and would ignore ``dtype``.
    """
    from diffusers.utils import deprecation_utils

    if hasattr(deprecation_utils, "_resolve_dtype"):
        return {"dtype": dtype}
    return {"torch_dtype": dtype}


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise ModelLoadError(
                f"Unknown device {requested!r}; use 'cuda', 'cuda:1', 'mps' or 'cpu'."
            ) from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError(
                "The device is set to CUDA but PyTorch sees no CUDA GPU. Install a CUDA build "
                "of PyTorch (https://pytorch.org/get-started/locally/) or unset the device."
            )
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ModelLoadError("The device is set to 'mps' but Apple MPS is not available.")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device, requested: str | None = None) -> torch.dtype:
    if requested:
        dtype = _DTYPES.get(requested.lower())
        if dtype is None:
            raise ModelLoadError(
                f"Unknown dtype {requested!r}; use 'float16', 'bfloat16' or 'float32'."
            )
        return dtype
    # Half precision halves memory and is what these models are shipped in; CPUs compute
    # float16 slowly or not at all, so they get float32.
    return torch.float32 if device.type == "cpu" else torch.float16


def module_bytes(pipe: DiffusionPipeline) -> int:
    """Bytes of parameters and buffers across a pipeline's modules (shared ones once)."""
    seen: set[int] = set()
    total = 0
    for component in pipe.components.values():
        if not isinstance(component, torch.nn.Module):
            continue
        for tensor in (*component.parameters(), *component.buffers()):
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total


def estimate_weight_bytes(spec: ModelSpec) -> int:
    """Bytes of a local model's weight files (what loading it will roughly take); 0 when
    unknown (hub models, built-ins). Only used to evict before loading: after loading the
    real size counts."""
    path = spec.source_path
    if path is None:
        return 0
    if path.is_file():
        return path.stat().st_size
    if not path.is_dir():
        return 0
    files = [str(file.relative_to(path)) for file in path.glob("*/*.safetensors")]
    components = {file.split("/", 1)[0] for file in files}
    return sum(
        (path / file).stat().st_size
        for file in select_pipeline_files(files, components, spec.variant)
        if file.endswith(".safetensors")
    )


def make_scheduler(name: str, base_config: dict[str, Any]) -> Any:
    """A fresh scheduler for one pipeline call, built on the model's own noise schedule."""
    try:
        class_name, overrides = SCHEDULER_CLASSES[name]
    except KeyError:
        raise ValueError(f"Unknown scheduler {name!r}") from None
    scheduler_class = getattr(diffusers, class_name)
    # Overrides go in as keyword arguments: merged into the dict, they would be dropped for
    # keys the model's config lists under "_use_default_values".
    return scheduler_class.from_config(base_config, **overrides)


def default_memory_budget(device: torch.device) -> int:
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return int(total * DEFAULT_GPU_BUDGET_FRACTION)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 16 * 2**30
    return int(total * DEFAULT_CPU_BUDGET_FRACTION)


class ModelManager:
    """Loads models lazily and keeps the recently used ones within a memory budget.

    Thread-safe: the engine's worker thread runs pipelines while another thread may ask
    whether a model is loaded or load one.
    """

    def __init__(self, options: LoaderOptions | None = None) -> None:
        self.options = options or LoaderOptions()
        self.device = pick_device(self.options.device)
        self.dtype = pick_dtype(self.device, self.options.dtype)
        self.memory_budget = self.options.memory_budget_bytes or default_memory_budget(self.device)
        if self.options.compile_cache_dir is not None:
            # Read by inductor whenever it compiles; Triton's cache goes inside it.
            self.options.compile_cache_dir.mkdir(parents=True, exist_ok=True)
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(self.options.compile_cache_dir)
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._known_sizes: dict[str, int] = {}  # bytes of models loaded before
        self._upscalers: OrderedDict[str, DiffusionPipeline] = OrderedDict()
        self._tokenizers: dict[str, CLIPTokenizer] = {}
        # _lock guards the dictionaries and is only held briefly; _load_lock serialises
        # loading, which can take minutes (downloads), so queries never wait on it.
        self._lock = threading.RLock()
        self._load_lock = threading.RLock()

    # --- queries --------------------------------------------------------------------------

    @property
    def on_cpu(self) -> bool:
        return self.device.type == "cpu"

    def is_loaded(self, name: str) -> bool:
        with self._lock:
            return name in self._loaded

    def loaded_names(self) -> list[str]:
        """Loaded models, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def loaded_bytes(self) -> int:
        with self._lock:
            return sum(model.size_bytes for model in self._loaded.values())

    # --- loading --------------------------------------------------------------------------

    def get(self, spec: ModelSpec, on_progress: LoadCallback | None = None) -> LoadedModel:
        """The loaded model for ``spec``, loading it (and evicting others) if needed."""
        loaded = self._cached(spec)
        if loaded is not None:
            return loaded
        with self._load_lock:
            loaded = self._cached(spec)  # another thread may have loaded it meanwhile
            if loaded is not None:
                return loaded
            self.unload(spec.name)  # an older registry entry under the same name
            self._make_room_for(spec)
            report = on_progress or _ignore_progress
            try:
                loaded = self._load(spec, report)
            except torch.OutOfMemoryError:
                if not self.loaded_names():
                    raise ModelLoadError(
                        f"Not enough memory to load {spec.name!r}. Enable cpu_offload, lower "
                        "the dtype to float16, or use a smaller model."
                    ) from None
                log.warning("out of memory loading %s; unloading every other model", spec.name)
                for name in self.loaded_names():
                    self.unload(name)
                try:
                    loaded = self._load(spec, report)
                except torch.OutOfMemoryError:
                    raise ModelLoadError(
                        f"Not enough memory to load {spec.name!r}, even alone. Enable "
                        "cpu_offload or use a smaller model."
                    ) from None
            with self._lock:
                self._loaded[spec.name] = loaded
                self._known_sizes[spec.name] = loaded.size_bytes
                self._evict_over_budget(keep=spec.name)
            if self.options.cpu_offload:
                self._activate_offload(loaded, PipelineKind.TXT2IMG)
            if self.options.torch_compile or cuda_graphs.graphs_of(loaded.pipe.unet):
                self._warm_up(loaded, report)
            return loaded

    def unload(self, name: str) -> None:
        with self._lock:
            model = self._loaded.pop(name, None)
            if model is None:
                return
            model.derived.clear()
            del model
            self._release_memory()

    def unload_all(self) -> None:
        with self._lock:
            for name in list(self._loaded):
                self.unload(name)
            self._upscalers.clear()
            self._release_memory()

    def pipeline(self, model: LoadedModel, kind: PipelineKind) -> DiffusionPipeline:
        """The pipeline for ``kind``, sharing ``model``'s modules (built once, then cached)."""
        with self._lock:
            if kind is PipelineKind.TXT2IMG:
                pipe = model.pipe
            else:
                pipe = model.derived.get(kind)
                if pipe is None:
                    pipeline_class = PIPELINE_CLASSES[model.family][kind]
                    # from_pipe casts to float32 unless told the dtype, which would also
                    # cast the shared modules under the txt2img pipeline.
                    with _quiet_dtype_cast_warning():
                        pipe = pipeline_class.from_pipe(model.pipe, **dtype_kwargs(model.dtype))
                    # from_pipe pipelines start with the default progress-bar settings.
                    pipe.set_progress_bar_config(disable=True)
                    model.derived[kind] = pipe
            if self.options.cpu_offload:
                self._activate_offload(model, kind)
            return pipe

    def tokenizer_for(self, spec: ModelSpec) -> CLIPTokenizer | None:
        """A tokenizer like the model's first one, without loading weights; None when its
        files are not on disk. Used to measure prompts when a request is resolved.

        It is a separate instance from the pipeline's: a fast tokenizer must not be used by
        two threads at once, and the worker thread uses the pipeline's. Callers that share
        the returned instance between threads must serialise their calls.
        """
        cache_key = f"{spec.name}\0{spec.source}\0{spec.config}"
        with self._lock:
            tokenizer = self._tokenizers.get(cache_key)
            loaded = self._loaded.get(spec.name)
        if tokenizer is not None:
            return tokenizer
        tokenizer = self._find_tokenizer(spec)
        if tokenizer is None and loaded is not None:
            tokenizer = copy.deepcopy(loaded.tokenizer)
        if tokenizer is not None:
            with self._lock:
                tokenizer = self._tokenizers.setdefault(cache_key, tokenizer)
        return tokenizer

    def upscaler(self, source: str, on_progress: LoadCallback | None = None) -> DiffusionPipeline:
        """A dedicated upscaler pipeline (x2 latent or x4), loaded once and kept."""
        with self._lock:
            pipe = self._upscalers.get(source)
            if pipe is not None:
                self._upscalers.move_to_end(source)
                return pipe
        with self._load_lock:
            with self._lock:
                pipe = self._upscalers.get(source)
            if pipe is not None:
                return pipe
            path = Path(source)
            report = on_progress or _ignore_progress
            if path.is_absolute() or path.exists():
                if not (path / "model_index.json").is_file():
                    raise ModelNotFoundError(
                        f"The upscaler folder {path} is missing or is not a diffusers folder "
                        "(no model_index.json). Check 'upscaler' in the model registry."
                    )
                pipe = self._from_pretrained(DiffusionPipeline, str(path), None, local=True)
            else:
                pipe = self._load_hub(DiffusionPipeline, source, None, report, label=source)
            self._prepare(pipe)
            with self._lock:
                self._upscalers[source] = pipe
            return pipe

    # --- internals ------------------------------------------------------------------------

    def _cached(self, spec: ModelSpec) -> LoadedModel | None:
        with self._lock:
            loaded = self._loaded.get(spec.name)
            if loaded is None or loaded.spec != spec:
                return None
            self._loaded.move_to_end(spec.name)
            return loaded

    def _load(self, spec: ModelSpec, report: LoadCallback) -> LoadedModel:
        started = time.perf_counter()
        pipe = self._load_pipeline(spec, report)
        if spec.unet is not None:
            self._replace_unet(pipe, spec)
        self._prepare(pipe)
        size = module_bytes(pipe)
        loaded = LoadedModel(
            spec=spec,
            pipe=pipe,
            device=self.device,
            dtype=self.dtype,
            size_bytes=size,
            load_s=time.perf_counter() - started,
            scheduler_config=dict(pipe.scheduler.config),
        )
        log.info(
            "loaded %s (%s, %.0f MB) on %s in %.1fs",
            spec.name, spec.source, size / 2**20, self.device, loaded.load_s,
        )  # fmt: skip
        return loaded

    def _replace_unet(self, pipe: DiffusionPipeline, spec: ModelSpec) -> None:
        """Load ``spec.unet``'s weights into the pipeline's UNet (same architecture)."""
        assert spec.unet is not None
        location = Path(spec.unet)
        if spec.unet_weight_name is not None:  # a hub id
            from huggingface_hub import hf_hub_download

            try:
                location = Path(
                    hf_hub_download(
                        spec.unet,
                        spec.unet_weight_name,
                        cache_dir=self.options.hf_cache_dir,
                        local_files_only=self.options.local_files_only,
                    )
                )
            except Exception as error:  # every hub failure gets the same advice
                raise ModelLoadError(
                    f"The UNet of {spec.name!r} ({spec.unet_weight_name} in {spec.unet}) could "
                    f"not be downloaded ({_first_line(error)}). Check the network, or download "
                    "the file and point 'unet' at it."
                ) from None
        if not location.is_file():
            raise ModelNotFoundError(f"The UNet file {location} of {spec.name!r} does not exist.")
        from safetensors.torch import load_file

        try:
            weights = load_file(str(location))
            pipe.unet.load_state_dict(weights, strict=True)
        except (OSError, RuntimeError, ValueError) as error:
            raise ModelLoadError(
                f"The UNet file {location.name} does not fit {spec.name!r}'s "
                f"{spec.family.value} UNet ({_first_line(error)}). It must be a diffusers-format "
                "UNet of the same architecture."
            ) from None
        log.info("%s: UNet weights from %s", spec.name, location.name)

    def _make_room_for(self, spec: ModelSpec) -> None:
        """Evict least recently used models that a new one would not fit beside, judging
        by its size when it was loaded before, or by its weight files on disk."""
        needed = self._known_sizes.get(spec.name) or estimate_weight_bytes(spec)
        with self._lock:
            while self._loaded and self.loaded_bytes() + needed > self.memory_budget:
                victim = next(iter(self._loaded))
                log.info("unloading %s to make room for %s", victim, spec.name)
                self.unload(victim)

    def _load_pipeline(self, spec: ModelSpec, report: LoadCallback) -> DiffusionPipeline:
        pipeline_class = PIPELINE_CLASSES[spec.family][PipelineKind.TXT2IMG]
        if spec.source_kind is SourceKind.BUILTIN:
            return build_tiny_by_name(spec.builtin_name)
        if spec.source_kind is SourceKind.FOLDER:
            folder = Path(spec.source)
            if not (folder / "model_index.json").is_file():
                what = "does not exist" if not folder.exists() else "is not a diffusers folder"
                raise ModelNotFoundError(
                    f"The folder {folder} for model {spec.name!r} {what} (it needs a "
                    "model_index.json). Check 'source' in the model registry, or download the "
                    "model with `hf download OWNER/NAME --local-dir FOLDER`."
                )
            return self._from_pretrained(pipeline_class, str(folder), spec, local=True)
        if spec.source_kind is SourceKind.SINGLE_FILE:
            return self._load_single_file(pipeline_class, spec)
        return self._load_hub(pipeline_class, spec.source, spec, report, label=spec.name)

    def _pipeline_kwargs(self, spec: ModelSpec | None, pipeline_class: type) -> dict[str, Any]:
        kwargs: dict[str, Any] = dtype_kwargs(self.dtype)
        known_layout = pipeline_class is not DiffusionPipeline
        if known_layout and spec is not None and spec.family is Family.SD15:
            # Filtering images is the bot's policy decision, not the loader's; never download
            # the 1.2 GB checker as a side effect.
            kwargs.update(
                safety_checker=None, feature_extractor=None, requires_safety_checker=False
            )
        return kwargs

    def _from_pretrained(
        self, pipeline_class: type, location: str, spec: ModelSpec | None, *, local: bool
    ) -> DiffusionPipeline:
        kwargs = self._pipeline_kwargs(spec, pipeline_class)
        variant = spec.variant if spec is not None else None
        if variant is None and local:
            variant = only_variant(Path(location))
        if variant:
            kwargs["variant"] = variant
        name = spec.name if spec is not None else location
        try:
            return pipeline_class.from_pretrained(  # type: ignore[attr-defined]
                location,
                local_files_only=True,
                cache_dir=self.options.hf_cache_dir,
                **kwargs,
            )
        except (OSError, ValueError) as error:
            if spec is not None and spec.variant and "variant" in str(error).lower():
                # The files on disk have no such variant: the plain weights will do.
                kwargs.pop("variant")
                with contextlib.suppress(OSError, ValueError):
                    return pipeline_class.from_pretrained(  # type: ignore[attr-defined]
                        location, local_files_only=True, cache_dir=self.options.hf_cache_dir,
                        **kwargs,
                    )  # fmt: skip
            if not local:
                raise
            raise ModelLoadError(
                f"The model {name!r} could not be loaded from {location}: {_first_line(error)}. "
                "Check that the folder holds a complete diffusers model (model_index.json and "
                "one folder per component) and that its family is right in the registry."
            ) from None

    def _load_single_file(self, pipeline_class: type, spec: ModelSpec) -> DiffusionPipeline:
        path = Path(spec.source)
        if path.suffix.lower() in PICKLED_SUFFIXES:  # the registry refuses these too
            raise UnsafeCheckpointError(
                f"{path.name} is a pickled checkpoint and is refused; convert it to .safetensors."
            )
        if not path.is_file():
            raise ModelNotFoundError(
                f"The checkpoint file {path} for model {spec.name!r} does not exist. Check "
                "'source' in the model registry."
            )
        kwargs = self._pipeline_kwargs(spec, pipeline_class)
        config = spec.config
        config_is_local = config is not None and Path(config).is_dir()
        try:
            pipe = pipeline_class.from_single_file(  # type: ignore[attr-defined]
                str(path),
                config=config,
                local_files_only=self.options.local_files_only or config_is_local,
                cache_dir=self.options.hf_cache_dir,
                **kwargs,
            )
        except torch.OutOfMemoryError:
            raise  # ModelManager.get makes room and retries
        except Exception as error:  # diffusers raises many types for a bad or foreign file
            hint = (
                f"the configs come from {config!r}: check that it is a diffusers folder or a "
                "downloaded hub id of the same architecture"
                if config
                else "set 'config' in the registry entry to a diffusers folder or hub id of the "
                "same architecture (for example 'stable-diffusion-v1-5/stable-diffusion-v1-5' "
                "or 'stabilityai/stable-diffusion-xl-base-1.0'); offline it must be cached"
            )
            raise ModelLoadError(
                f"The checkpoint {path.name} for model {spec.name!r} could not be loaded "
                f"({_first_line(error)}); {hint}."
            ) from None
        # diffusers' converter tells SDXL's two text encoders apart by their widths; a
        # checkpoint where they are equal leaves parts of one empty ("meta") instead of failing.
        empty = [
            name
            for name, module in pipe.components.items()
            if isinstance(module, torch.nn.Module) and any(p.is_meta for p in module.parameters())
        ]
        if empty:
            raise ModelLoadError(
                f"The checkpoint {path.name} for model {spec.name!r} left {', '.join(empty)} "
                "without weights: diffusers could not map its layout. Convert it to a diffusers "
                "folder (save_pretrained) and use that folder as the source."
            )
        return pipe

    def _load_hub(
        self,
        pipeline_class: type,
        repo_id: str,
        spec: ModelSpec | None,
        report: LoadCallback,
        *,
        label: str,
    ) -> DiffusionPipeline:
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            return self._from_pretrained(pipeline_class, repo_id, spec, local=False)
        except (LocalEntryNotFoundError, FileNotFoundError, OSError):
            pass  # not in the cache (or incomplete): download below
        except ValueError as error:
            raise ModelLoadError(
                f"The cached files of {label!r} ({repo_id}) could not be loaded: "
                f"{_first_line(error)}. Delete the model from the Hugging Face cache "
                "(`hf cache rm`) and try again."
            ) from None
        if self.options.local_files_only:
            raise ModelNotFoundError(
                f"The model {label!r} ({repo_id}) is not in the Hugging Face cache and downloads "
                f"are disabled. Download it with `hf download {repo_id}`, point "
                "HF_HOME (or the cache setting) at the cache that holds it, or allow downloads."
            )
        report(f"Downloading {label} from the Hugging Face hub (first use; this can take minutes)")
        folder = download_pipeline(
            repo_id,
            variant=spec.variant if spec is not None else None,
            cache_dir=self.options.hf_cache_dir,
            report=report,
            label=label,
        )
        report(f"Loading {label}")
        return self._from_pretrained(pipeline_class, folder, spec, local=True)

    def _find_tokenizer(self, spec: ModelSpec) -> CLIPTokenizer | None:
        if spec.source_kind is SourceKind.BUILTIN:
            return tiny_tokenizer()
        folder: Path | None = None
        if spec.source_kind is SourceKind.FOLDER:
            folder = Path(spec.source) / "tokenizer"
        elif spec.source_kind is SourceKind.SINGLE_FILE and spec.config:
            folder = (
                Path(spec.config) / "tokenizer"
                if Path(spec.config).is_dir()
                else _cached_hub_folder(spec.config, "tokenizer", self.options.hf_cache_dir)
            )
        elif spec.source_kind is SourceKind.HUB:
            folder = _cached_hub_folder(spec.source, "tokenizer", self.options.hf_cache_dir)
        # transformers quietly builds an empty tokenizer from a folder without its files, so
        # check for a vocabulary first.
        if folder is None or not any((folder / name).is_file() for name in TOKENIZER_FILES):
            return None
        try:
            return CLIPTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError):
            return None

    def _prepare(self, pipe: DiffusionPipeline) -> None:
        pipe.set_progress_bar_config(disable=True)
        limit_tokenizers_to_their_encoders(pipe)
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                component.eval().requires_grad_(False)
        with _quiet_dtype_cast_warning():
            if pipe.dtype != self.dtype:
                pipe.to(dtype=self.dtype)
            if not self.options.cpu_offload:
                pipe.to(self.device)
        for name in ("unet", "vae"):
            module = getattr(pipe, name, None)
            if module is None or not hasattr(module, "attn_processors"):
                continue
            # torch 2's fused scaled-dot-product attention; diffusers picks it by default,
            # but a model saved with another processor keeps it unless told.
            if not all(isinstance(p, AttnProcessor2_0) for p in module.attn_processors.values()):
                with contextlib.suppress(ValueError, TypeError):
                    module.set_attn_processor(AttnProcessor2_0())
        if self.options.fuse_qkv and hasattr(pipe, "fuse_qkv_projections"):
            pipe.fuse_qkv_projections()
        vae = getattr(pipe, "vae", None)
        if vae is not None:
            if self.options.vae_tiling and hasattr(vae, "enable_tiling"):
                vae.enable_tiling()
            if self.options.vae_slicing and hasattr(vae, "enable_slicing"):
                vae.enable_slicing()
        unet = getattr(pipe, "unet", None)
        if unet is not None and self.options.channels_last:
            unet.to(memory_format=torch.channels_last)
        if unet is not None and self.options.fp8:
            quantize_fp8(unet, self.device)
        options = self.options
        compile_options = {"backend": options.compile_backend}
        if options.compile_mode and options.compile_backend == "inductor":
            compile_options["mode"] = options.compile_mode
        graphed = isinstance(unet, torch.nn.Module) and self._install_graphs(unet)
        if options.torch_compile:
            # In place, so the modules keep their classes and from_pipe still accepts them.
            for module in (None if graphed else unet, getattr(vae, "decoder", None)):
                if isinstance(module, torch.nn.Module):
                    module.compile(**compile_options)

    def _install_graphs(self, unet: torch.nn.Module) -> bool:
        """CUDA graphs for the UNet (compiled inside them when torch.compile is on)."""
        options = self.options
        wanted = options.cuda_graphs
        if wanted is None:
            # Measured on an H200 (BENCHMARKS.md): SD 1.5 at 512 px gains 1.06-4.3x; SDXL's
            # steps keep the GPU busy, so graphs would only hold memory for it.
            wanted = (
                self.device.type == "cuda"
                and not options.cpu_offload
                and getattr(unet.config, "addition_embed_type", None) != "text_time"
            )
        if not wanted:
            return False
        if options.cpu_offload:
            # Offloading moves the weights between devices; a graph replays fixed addresses.
            log.warning("CUDA_GRAPHS is ignored with CPU_OFFLOAD")
            return False
        if self.device.type != "cuda":
            log.warning("CUDA_GRAPHS is on but the device is %s: ignored", self.device.type)
            return False
        largest_batch = max(options.warmup_batches or DEFAULT_BATCH_IMAGES.values())
        cuda_graphs.install(
            unet,
            cuda_graphs.graph_rows(largest_batch),
            compile_with=options.compile_backend if options.torch_compile else None,
            compile_mode=options.compile_mode,
        )
        return True

    def _warm_up(self, model: LoadedModel, report: LoadCallback) -> None:
        """Run the compiled model once per warm-up batch size at its default size, so that
        compiling (minutes with inductor) happens while the model loads, not in a user's job.
        After a second batch size, dynamo treats the batch dimension as dynamic, so the sizes
        in between reuse the same compiled graphs."""
        presets = model.spec.presets
        for batch in self._warmup_batches(DEFAULT_BATCH_IMAGES[model.family]):
            report(f"compiling for {batch} image{'s' if batch > 1 else ''}")
            started = time.perf_counter()
            model.pipe(
                prompt="warm-up",
                num_inference_steps=2,
                num_images_per_prompt=batch,
                width=presets.width,
                height=presets.height,
                guidance_scale=presets.guidance,
                output_type="pil",
            )
            log.info(
                "%s: compiled for %d images in %.1fs",
                model.spec.name, batch, time.perf_counter() - started,
            )  # fmt: skip

    def _warmup_batches(self, family_default: int) -> tuple[int, ...]:
        return tuple(dict.fromkeys(self.options.warmup_batches or (1, family_default)))

    def _activate_offload(self, model: LoadedModel, kind: PipelineKind) -> None:
        # Offload hooks live on the shared modules and chain one pipeline's components; when
        # another pipeline over the same modules runs, it installs its own chain.
        if model.offload_owner is kind or self.device.type == "cpu":
            return
        pipe = model.pipe if kind is PipelineKind.TXT2IMG else model.derived[kind]
        pipe.enable_model_cpu_offload(device=self.device)
        model.offload_owner = kind

    def _evict_over_budget(self, keep: str) -> None:
        while self.loaded_bytes() > self.memory_budget and len(self._loaded) > 1:
            victim = next(name for name in self._loaded if name != keep)
            log.info("unloading %s to stay within the memory budget", victim)
            self.unload(victim)
        if self.loaded_bytes() > self.memory_budget:
            log.warning(
                "%s alone (%.0f MB) exceeds the memory budget (%.0f MB)",
                keep, self.loaded_bytes() / 2**20, self.memory_budget / 2**20,
            )  # fmt: skip

    def _release_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        elif self.device.type == "mps":
            torch.mps.empty_cache()


def load_lora(pipe: DiffusionPipeline, lora: LoraSpec, *, local_files_only: bool) -> None:
    """Load ``lora`` into ``pipe``'s modules as the adapter named after it (safetensors
    only: a pickled file could run code). Raises ModelLoadError with what to fix."""
    source = Path(lora.source)
    kwargs: dict[str, Any] = {"adapter_name": lora.name}
    if source.is_file():
        location: str = str(source)
    elif source.is_dir() or source.is_absolute():
        location = str(source)
        kwargs["weight_name"] = lora.weight_name
    else:  # a hub id
        location = lora.source
        kwargs.update(weight_name=lora.weight_name, local_files_only=local_files_only)
    if not location.lower().endswith(".safetensors") and kwargs.get("weight_name") is None:
        kwargs["use_safetensors"] = True
    if source.is_absolute() and not source.exists():
        raise ModelLoadError(f"The LoRA {lora.name}'s file {source} does not exist.")
    try:
        pipe.load_lora_weights(location, **{k: v for k, v in kwargs.items() if v is not None})
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelLoadError(
            f"The LoRA {lora.name} could not be loaded ({_first_line(error)}). Check that it "
            f"is a {lora.family.value} LoRA in .safetensors form."
        ) from None
    log.info("loaded the LoRA %s", lora.name)


def limit_tokenizers_to_their_encoders(pipe: DiffusionPipeline) -> None:
    """A tokenizer saved without ``model_max_length`` claims a practically endless length,
    and the pipeline then pads to it and fails; its text encoder's positions are the limit."""
    for tokenizer_name, encoder_name in TOKENIZER_ENCODERS:
        tokenizer = getattr(pipe, tokenizer_name, None)
        encoder = getattr(pipe, encoder_name, None)
        positions = getattr(getattr(encoder, "config", None), "max_position_embeddings", None)
        if tokenizer is not None and isinstance(positions, int):
            tokenizer.model_max_length = min(tokenizer.model_max_length, positions)


def only_variant(folder: Path) -> str | None:
    """The weight variant (``fp16``…) of a diffusers folder that holds nothing else: such a
    folder loads only when the variant is named."""
    unet = folder / "unet"
    if not unet.is_dir():
        return None
    variants = set()
    for path in unet.glob("diffusion_pytorch_model*"):
        # Weights: diffusion_pytorch_model[.VARIANT][-00001-of-00002].safetensors
        # Shard index: diffusion_pytorch_model.safetensors.index[.VARIANT].json
        name = path.name
        if ".index." in name:
            variant = name.split(".index.", 1)[1].removesuffix("json").rstrip(".")
        else:
            parts = name.split(".")
            variant = parts[1].split("-")[0] if len(parts) > 2 else ""
        if not variant:
            return None  # plain weights are there
        variants.add(variant)
    return min(variants) if variants else None


@contextlib.contextmanager
def _quiet_dtype_cast_warning() -> Iterator[None]:
    # diffusers warns about "modules that should be kept in float32" on every dtype cast,
    # even when that list is empty (as for all Stable Diffusion models).
    modeling_logger = logging.getLogger("diffusers.models.modeling_utils")
    previous = modeling_logger.level
    modeling_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        modeling_logger.setLevel(previous)


def _ignore_progress(_detail: str) -> None:
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


def _cached_hub_folder(repo_id: str, subfolder: str, cache_dir: Path | None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for name in TOKENIZER_FILES:
        try:
            cached = try_to_load_from_cache(
                repo_id, f"{subfolder}/{name}", cache_dir=str(cache_dir) if cache_dir else None
            )
        except Exception:  # a malformed id or cache just means "not available"
            return None
        if isinstance(cached, str):
            return Path(cached).parent
    return None


# --- downloads ----------------------------------------------------------------------------

_VARIANT_MARKERS = (".fp16.", ".bf16.", ".fp32.", ".ema.", ".non_ema.")
_SKIPPED_SUFFIXES = (
    ".ckpt", ".bin", ".pt", ".pth", ".msgpack", ".h5", ".onnx", ".onnx_data", ".pb", ".png",
    ".jpg", ".md",
)  # fmt: skip


def select_pipeline_files(
    repo_files: Iterable[str],
    components: Iterable[str],
    variant: str | None,
) -> list[str]:
    """The files of a diffusers repository that loading needs: model_index.json, each
    component's configs and tokenizer files, and one set of .safetensors weights per
    component (the variant where it exists, else the plain weights).

    Root-level single-file checkpoints, pickled weights, ONNX/Flax exports and the safety
    checker are left out: they can be many gigabytes.
    """
    wanted_components = set(components) - SAFETY_CHECKER_COMPONENTS
    selected = ["model_index.json"]
    weights: dict[str, list[str]] = {}
    for file in repo_files:
        folder, _, name = file.rpartition("/")
        if folder not in wanted_components or "/" in folder:
            continue
        lowered = name.lower()
        if lowered.endswith(".safetensors"):
            weights.setdefault(folder, []).append(file)
        elif not lowered.endswith(_SKIPPED_SUFFIXES):
            selected.append(file)
    marker = f".{variant}." if variant else None
    for files in weights.values():
        variant_files = [f for f in files if marker and _has_variant(f, marker)]
        plain_files = [f for f in files if not any(_has_variant(f, m) for m in _VARIANT_MARKERS)]
        selected.extend(variant_files or plain_files or files)
    return sorted(set(selected))


def _has_variant(file: str, marker: str) -> bool:
    # Sharded weights spell the variant "model.fp16-00001-of-00002.safetensors".
    name = file.rsplit("/", 1)[-1]
    return marker in name or marker.rstrip(".") + "-" in name


def progress_reporter(report: LoadCallback, label: str) -> type[tqdm]:
    """A tqdm class that prints nothing and forwards throttled progress text to ``report``."""
    last_report = [0.0]

    class ForwardingProgress(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)
            kwargs["disable"] = False
            kwargs["file"] = io.StringIO()
            super().__init__(*args, **kwargs)

        def display(self, msg: str | None = None, pos: int | None = None) -> None:
            now = time.monotonic()
            total = self.total or 0
            if now - last_report[0] < DOWNLOAD_REPORT_INTERVAL_S and self.n < total:
                return
            if self.unit == "B" and total > 0:
                percent = 100 * self.n / total
                done = tqdm.format_sizeof(self.n, "B", 1024)
                whole = tqdm.format_sizeof(total, "B", 1024)
                report(f"Downloading {label}: {done} of {whole} ({percent:.0f}%)")
                last_report[0] = now
            elif self.unit != "B" and total > 0:
                report(f"Downloading {label}: {int(self.n)} of {int(total)} files")
                last_report[0] = now

    return ForwardingProgress


def download_pipeline(
    repo_id: str,
    *,
    variant: str | None,
    cache_dir: Path | None,
    report: LoadCallback,
    label: str,
) -> str:
    """Download what a diffusers repository needs into the cache; returns the snapshot
    folder. Errors become ModelNotFoundError / ModelLoadError with what to do."""
    import httpx2
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    cache = str(cache_dir) if cache_dir else None
    try:
        # One request without retries first: the calls below retry a refused connection
        # for about 24 s before they give up, which only delays "no network".
        check_hub_reachable(repo_id, label)
        repo_files = HfApi().list_repo_files(repo_id)
        index_path = hf_hub_download(repo_id, "model_index.json", cache_dir=cache)
        index = json.loads(Path(index_path).read_text(encoding="utf-8"))
        components = [k for k, v in index.items() if isinstance(v, list) and v[0] is not None]
        files = select_pipeline_files(repo_files, components, variant)
        return snapshot_download(
            repo_id,
            allow_patterns=files,
            cache_dir=cache,
            tqdm_class=progress_reporter(report, label),
        )
    except GatedRepoError:
        raise ModelNotFoundError(
            f"{repo_id} is a gated model: accept its licence on https://huggingface.co/{repo_id} "
            "and log in with `hf auth login` (or set HF_TOKEN), then try again."
        ) from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(
            f"The Hugging Face hub has no model {repo_id!r} (or it is private). Check 'source' "
            "in the model registry."
        ) from None
    except OfflineModeIsEnabled:
        raise ModelNotFoundError(
            f"The model {label!r} ({repo_id}) is not downloaded and HF_HUB_OFFLINE is set. "
            f"Download it on a connected machine with `hf download {repo_id}` and "
            "copy the Hugging Face cache ($HF_HOME), or unset HF_HUB_OFFLINE."
        ) from None
    except httpx2.TransportError as error:
        raise hub_unreachable(repo_id, label, error) from None
    except (HfHubHTTPError, OSError, ValueError) as error:
        raise ModelLoadError(
            f"Downloading {repo_id} failed ({_first_line(error)}). Check the network connection "
            f"and free disk space, or download it yourself with `hf download {repo_id}` and "
            "set HF_HOME to that cache."
        ) from None


# Seconds to wait for the hub to answer the first request of a download.
HUB_CHECK_TIMEOUT_S = 15.0


def check_hub_reachable(repo_id: str, label: str) -> None:
    """Ask the hub about ``repo_id`` once, without retries. Raises HubUnreachableError when
    the connection fails; answers (a missing or gated repository, offline mode) are left to
    the download calls that follow."""
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        HfApi().model_info(repo_id, timeout=HUB_CHECK_TIMEOUT_S)
    except httpx2.TransportError as error:
        raise hub_unreachable(repo_id, label, error) from None
    except (HfHubHTTPError, OfflineModeIsEnabled):
        pass


def hub_unreachable(repo_id: str, label: str, error: BaseException) -> HubUnreachableError:
    from huggingface_hub import constants

    reason = f"{constants.ENDPOINT}: {_first_line(error)}"
    return HubUnreachableError(
        f"Cannot reach the Hugging Face hub ({reason}) to download "
        f"{label!r} ({repo_id}). Check the network connection (and HTTPS_PROXY behind a "
        "proxy). If the model is already in the Hugging Face cache, set HF_HUB_OFFLINE=1 to "
        "use it without the network; to try things without any download, use the built-in "
        "'tiny' model (random weights).",
        repo_id=repo_id,
        label=label,
        reason=reason,
    )
