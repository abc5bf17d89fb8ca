"""The model registry: which models are offered, where their weights come from, and presets.

The registry is a TOML file (see docs/models.md). This module imports neither torch nor
diffusers, so the bot can list models and validate settings without the machine-learning
stack. Loading the weights is engine/loader.py's job.
"""

from __future__ import annotations

import json
import math
import re
import struct
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from engine.errors import N_, EngineError, ModelNotFoundError, UnsafeCheckpointError
from engine.types import Family

BUNDLED_REGISTRY = Path(__file__).with_name("models.toml")

# Built-in random-weight models (engine/tiny.py). "builtin:" is the canonical spelling; the
# bare names are accepted because that is what people type.
BUILTIN_FAMILIES: dict[str, Family] = {"tiny": Family.SD15, "tiny-xl": Family.SDXL}
BUILTIN_PREFIX = "builtin:"

# Loading any of these runs Python's unpickler, which can execute arbitrary code.
PICKLED_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")

ASPECT_RATIOS: tuple[str, ...] = ("1:1", "2:3", "3:2", "9:16", "16:9")

# Sizes each family was trained around; other base sizes (SDXL-Turbo at 512, the tiny
# models at 64) scale this table. Multiples of 64 keep every latent size even.
NATIVE_BASE: dict[Family, int] = {Family.SD15: 512, Family.SDXL: 1024}
NATIVE_SIZES: dict[Family, dict[str, tuple[int, int]]] = {
    Family.SD15: {
        "1:1": (512, 512),
        "2:3": (512, 768),
        "3:2": (768, 512),
        "9:16": (512, 896),
        "16:9": (896, 512),
    },
    Family.SDXL: {
        "1:1": (1024, 1024),
        "2:3": (832, 1216),
        "3:2": (1216, 832),
        "9:16": (768, 1344),
        "16:9": (1344, 768),
    },
}

# Scheduler names accepted in the registry and in requests, with the label the AUTOMATIC1111
# web UI writes as "Sampler:" (engine/loader.py maps the names to diffusers classes).
SCHEDULERS: dict[str, str] = {
    "euler_a": "Euler a",
    "euler": "Euler",
    # Euler with trailing timesteps: what few-step models (SDXL-Lightning, Hyper-SD) need.
    "euler_trailing": "Euler SGM Uniform",
    "ddim": "DDIM",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_karras": "DPM++ 2M Karras",
    "unipc": "UniPC",
    "lcm": "LCM",
    "pndm": "PLMS",
}

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")
_HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SAFETENSORS_HEADER_LIMIT = 100 * 1024 * 1024


class RegistryError(EngineError):
    """The registry file is malformed; the message names the file, the entry and the fix."""


class SourceKind(StrEnum):
    BUILTIN = "builtin"
    HUB = "hub"
    FOLDER = "folder"
    SINGLE_FILE = "single_file"


@dataclass(frozen=True, slots=True)
class Presets:
    """Per-model defaults and limits. Unset keys in the TOML take the family's values."""

    steps: int
    max_steps: int
    guidance: float
    width: int
    height: int
    min_size: int
    max_size: int
    scheduler: str
    negative_prefix: str = ""


FAMILY_PRESETS: dict[Family, Presets] = {
    Family.SD15: Presets(
        steps=25, max_steps=50, guidance=7.0, width=512, height=512,
        min_size=256, max_size=1024, scheduler="euler_a",
    ),
    Family.SDXL: Presets(
        steps=30, max_steps=50, guidance=6.0, width=1024, height=1024,
        min_size=512, max_size=1536, scheduler="euler_a",
    ),
}  # fmt: skip

# The tiny models are for tests: small and fast whatever the caller forgets to set.
TINY_PRESETS = Presets(
    steps=4, max_steps=50, guidance=5.0, width=64, height=64,
    min_size=32, max_size=256, scheduler="euler_a",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    source: str  # hub id, absolute path, or "builtin:tiny" / "builtin:tiny-xl"
    source_kind: SourceKind
    family: Family
    description: str
    license: str
    presets: Presets
    config: str | None = None  # single files: diffusers folder or hub id with the configs
    variant: str | None = None  # hub downloads: weight variant such as "fp16"
    upscaler: str | None = None  # hub id or folder of a dedicated 2x/4x upscaler pipeline
    upscaler_steps: int = 20
    family_detected: bool = False  # family came from the weights, not from the TOML
    # A UNet that replaces the source's (a distilled few-step UNet over its base model):
    # a .safetensors file, or a hub id with unet_weight_name naming the file in it.
    unet: str | None = None
    unet_weight_name: str | None = None

    @property
    def is_builtin(self) -> bool:
        return self.source_kind is SourceKind.BUILTIN

    @property
    def builtin_name(self) -> str:
        return self.source.removeprefix(BUILTIN_PREFIX)

    @property
    def source_path(self) -> Path | None:
        if self.source_kind in (SourceKind.FOLDER, SourceKind.SINGLE_FILE):
            return Path(self.source)
        return None

    def size_for_aspect(self, aspect: str) -> tuple[int, int]:
        """(width, height) for an aspect ratio at this model's preset resolution."""
        if aspect not in ASPECT_RATIOS:
            choices = ", ".join(ASPECT_RATIOS)
            raise ValueError(f"Unknown aspect ratio {aspect!r}; choose one of {choices}.")
        native_width, native_height = NATIVE_SIZES[self.family][aspect]
        base = math.sqrt(self.presets.width * self.presets.height)
        scale = base / NATIVE_BASE[self.family]
        width, height = native_width * scale, native_height * scale
        # Scale both sides together into the allowed range, so the ratio survives.
        fit = min(1.0, self.presets.max_size / max(width, height))
        fit = max(fit, self.presets.min_size / min(width, height))
        return (
            _clamp_size(width * fit, self.presets),
            _clamp_size(height * fit, self.presets),
        )

    def aspect_sizes(self) -> dict[str, tuple[int, int]]:
        return {aspect: self.size_for_aspect(aspect) for aspect in ASPECT_RATIOS}


MAX_LORA_WEIGHT = 4.0  # beyond this a LoRA only breaks the image


@dataclass(frozen=True, slots=True)
class LoraSpec:
    """A LoRA the deployment offers: ``<lora:NAME:weight>`` in a prompt, or /imagine's
    ``lora`` option. Kept loaded beside its model once used, switched per pipeline call."""

    name: str
    source: str  # a .safetensors file, a folder, or a hub id
    family: Family  # the models it fits
    weight_name: str | None = None  # the file inside a folder or hub repository
    weight: float = 0.8  # when the prompt or option gives none
    triggers: tuple[str, ...] = ()  # words it was trained on, added to prompts that lack them
    description: str = ""
    license: str = "unspecified"


MAX_UPSCALE_SIDE = 4096  # beyond this, an upscale would not fit Discord or most screens


def upscale_limit(presets: Presets) -> int:
    """The longest side an upscale may reach on a model: up to 4x its largest drawing, in
    tiles beyond ``max_size`` (see ``engine.ops.upscale``), and never over 4096 pixels."""
    return max(presets.max_size, min(MAX_UPSCALE_SIDE, presets.max_size * 4))


def _clamp_size(value: float, presets: Presets) -> int:
    rounded = max(8, math.floor(value / 8 + 0.5) * 8)
    return min(max(rounded, presets.min_size), presets.max_size)


class ModelRegistry:
    """The models a deployment offers: those of the TOML file, plus the custom models the
    bot's owners add at run time (``add``/``remove``; the core keeps them in its database).

    Every front door and the engine share one registry, so a model added is offered at once
    everywhere. Changes replace the name table rather than edit it, so a reader in another
    thread (the engine's worker) always sees a whole table, before or after.
    """

    def __init__(
        self,
        specs: Iterable[ModelSpec],
        default_name: str | None = None,
        *,
        origin: str = "<registry>",
        loras: Iterable[LoraSpec] = (),
    ) -> None:
        self._loras = {lora.name: lora for lora in loras}
        self._specs: dict[str, ModelSpec] = {}
        for spec in specs:
            if spec.name in self._specs:
                raise RegistryError(f"{origin}: the model name {spec.name!r} is used twice.")
            self._specs[spec.name] = spec
        if not self._specs:
            raise RegistryError(f"{origin}: the registry lists no models; add a [models.NAME].")
        if default_name is None:
            default_name = next(iter(self._specs))
        if default_name not in self._specs:
            raise RegistryError(
                f"{origin}: the default model {default_name!r} is not in the registry "
                f"(available: {', '.join(self._specs)})."
            )
        self.default_name = default_name
        self.origin = origin
        self._custom: frozenset[str] = frozenset()

    @classmethod
    def load(cls, path: Path | str | None = None, default_name: str | None = None) -> ModelRegistry:
        """Read a registry file; ``None`` reads the bundled one. ``default_name`` overrides
        the file's ``default`` key (for example from a bot setting)."""
        file = Path(path).expanduser() if path is not None else BUNDLED_REGISTRY
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RegistryError(
                f"The model registry file {file} does not exist. Check the path, or leave the "
                "setting empty to use the bundled registry."
            ) from None
        except OSError as error:
            raise RegistryError(f"The model registry file {file} cannot be read: {error}") from None
        return cls.loads(text, base_dir=file.parent, default_name=default_name, origin=str(file))

    @classmethod
    def loads(
        cls,
        text: str,
        *,
        base_dir: Path | None = None,
        default_name: str | None = None,
        origin: str = "<registry>",
    ) -> ModelRegistry:
        """Parse registry TOML text; relative paths are taken from ``base_dir``."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise RegistryError(f"{origin} is not valid TOML: {error}") from None
        unknown = set(data) - {"default", "models", "loras"}
        if unknown:
            raise RegistryError(
                f"{origin}: unknown top-level keys {sorted(unknown)}; expected 'default', "
                "[models.NAME] and [loras.NAME] tables."
            )
        models = data.get("models", {})
        if not isinstance(models, dict):
            raise RegistryError(f"{origin}: 'models' must be a table of [models.NAME] entries.")
        base = base_dir if base_dir is not None else Path.cwd()
        specs = [
            _parse_entry(name, entry, base_dir=base, origin=origin)
            for name, entry in models.items()
        ]
        file_default = data.get("default")
        if file_default is not None and not isinstance(file_default, str):
            raise RegistryError(f"{origin}: 'default' must be a model name (a string).")
        loras = data.get("loras", {})
        if not isinstance(loras, dict):
            raise RegistryError(f"{origin}: 'loras' must be a table of [loras.NAME] entries.")
        return cls(
            specs,
            default_name or file_default,
            origin=origin,
            loras=[
                _parse_lora(name, entry, base_dir=base, origin=origin)
                for name, entry in loras.items()
            ],
        )

    def get(self, name: str | None) -> ModelSpec:
        """The spec for ``name`` (None: the default model), or ModelNotFoundError."""
        if name is None:
            name = self.default_name
        spec = self._specs.get(name)
        if spec is None:
            raise ModelNotFoundError(
                N_("Unknown model {name}. Available models: {models}."),
                name=repr(name),
                models=", ".join(self._specs),
            )
        return spec

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __len__(self) -> int:
        return len(self._specs)

    def names(self) -> list[str]:
        return list(self._specs)

    def specs(self) -> list[ModelSpec]:
        return list(self._specs.values())

    def is_custom(self, name: str) -> bool:
        """Whether ``name`` is a model added at run time (and so may be removed)."""
        return name in self._custom

    def custom_names(self) -> list[str]:
        return [name for name in self._specs if name in self._custom]

    def add(self, spec: ModelSpec) -> None:
        """Offer a custom model from now on. RegistryError when the name is taken."""
        if not is_valid_model_name(spec.name):
            raise RegistryError(f"{spec.name!r} is not a valid model name.")
        if spec.name in self._specs:
            raise RegistryError(f"A model called {spec.name!r} exists already.")
        self._specs = {**self._specs, spec.name: spec}
        self._custom = self._custom | {spec.name}

    def remove(self, name: str) -> ModelSpec:
        """Stop offering a custom model; the TOML file's models cannot be removed."""
        if name not in self._custom:
            raise RegistryError(f"{name!r} is not a custom model, so it cannot be removed.")
        spec = self._specs[name]
        self._specs = {key: value for key, value in self._specs.items() if key != name}
        self._custom = self._custom - {name}
        return spec

    def loras(self, family: Family | None = None) -> list[LoraSpec]:
        """The LoRAs offered (those for ``family`` only, when given)."""
        return [lora for lora in self._loras.values() if family in (None, lora.family)]

    def lora(self, name: str) -> LoraSpec | None:
        return self._loras.get(name)


# --- parsing ------------------------------------------------------------------------------


def is_hub_id(text: str) -> bool:
    """``owner/name``, as the Hugging Face hub spells a repository."""
    return bool(_HUB_ID_PATTERN.match(text))


def is_valid_model_name(name: str) -> bool:
    """1 to 40 letters, digits, '.', '_' or '-', starting with a letter or digit."""
    return bool(_NAME_PATTERN.match(name))


def custom_model_spec(
    name: str,
    source: str,
    *,
    family: Family,
    config: str | None = None,
    description: str = "",
) -> ModelSpec:
    """The spec of a model added at run time: a hub id, or a downloaded .safetensors file
    (an absolute path) with ``config`` (a diffusers folder or hub id of its architecture;
    None lets diffusers pick the family's default configs from the hub). Presets are the
    family's, re-centred on the size the configs give, as for a TOML entry."""
    entry: dict[str, Any] = {"source": source, "family": family.value, "description": description}
    if config is not None:
        entry["config"] = config
    return _parse_entry(name, entry, base_dir=Path("/"), origin="custom models")


_ENTRY_KEYS = {
    "source", "family", "description", "license", "config", "variant", "upscaler", "upscaler_steps",
    "steps", "max_steps", "guidance", "width", "height", "min_size", "max_size",
    "scheduler", "negative_prefix", "unet", "unet_weight_name",
}  # fmt: skip


def _checked_table(
    table: str, noun: str, name: str, entry: Any, allowed: set[str], origin: str
) -> str:
    """Where ``[table.name]`` is, for messages, once it is a table with a valid name and
    only ``allowed`` keys."""
    where = f"{origin}, [{table}.{name}]"
    if not isinstance(entry, dict):
        raise RegistryError(f"{where}: must be a table.")
    if not _NAME_PATTERN.match(name):
        raise RegistryError(
            f"{where}: a {noun} name is 1 to 40 letters, digits, '.', '_' or '-', starting "
            "with a letter or digit."
        )
    unknown = set(entry) - allowed
    if unknown:
        raise RegistryError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}.")
    return where


def _parse_entry(name: str, entry: Any, *, base_dir: Path, origin: str) -> ModelSpec:
    where = _checked_table("models", "model", name, entry, _ENTRY_KEYS, origin)
    raw_source = _get(entry, "source", str, where)
    if raw_source is None or not raw_source.strip():
        raise RegistryError(f"{where}: 'source' is required (a hub id, a folder or a file).")
    source, kind = classify_source(raw_source.strip(), base_dir, where)
    config = _get(entry, "config", str, where)
    if config is not None and _looks_like_path(config, base_dir):
        config = str(_resolve_path(config, base_dir))
    upscaler = _get(entry, "upscaler", str, where)
    if upscaler is not None and _looks_like_path(upscaler, base_dir):
        upscaler = str(_resolve_path(upscaler, base_dir))

    family_value = _get(entry, "family", str, where)
    if family_value is not None:
        try:
            family = Family(family_value)
        except ValueError:
            raise RegistryError(
                f"{where}: family must be one of {[f.value for f in Family]}, not {family_value!r}."
            ) from None
        detected = False
    else:
        detected_family = detect_family(source, kind)
        detected = detected_family is not None
        family = detected_family or (Family.SDXL if "xl" in name.lower() else Family.SD15)

    if kind is SourceKind.BUILTIN:
        base_presets = TINY_PRESETS
    else:
        base_presets = FAMILY_PRESETS[family]
        native = native_size(source, kind, config)
        if native is not None:
            base_presets = presets_for_size(base_presets, native)
    overrides: dict[str, Any] = {}
    for preset_field in fields(Presets):
        expected: type = str if preset_field.name in ("scheduler", "negative_prefix") else int
        if preset_field.name == "guidance":
            expected = float
        value = _get(entry, preset_field.name, expected, where)
        if value is not None:
            overrides[preset_field.name] = value
    presets = replace(base_presets, **overrides)
    _check_presets(presets, where)

    upscaler_steps = _get(entry, "upscaler_steps", int, where) or 20
    if not 1 <= upscaler_steps <= 200:
        raise RegistryError(f"{where}: upscaler_steps must be between 1 and 200.")
    unet, unet_weight_name = _parse_unet(entry, base_dir, where)

    description = _get(entry, "description", str, where) or ""
    if kind is SourceKind.BUILTIN and "noise" not in description.lower():
        # Whoever lists a built-in model must learn that it draws noise, whatever the TOML says.
        description = (description + " " if description else "") + (
            "Random weights: its images are noise (for tests and trying the bot)."
        )
    return ModelSpec(
        name=name,
        source=source,
        source_kind=kind,
        family=family,
        description=description,
        license=_get(entry, "license", str, where) or "unspecified",
        presets=presets,
        config=config,
        variant=_get(entry, "variant", str, where),
        upscaler=upscaler,
        upscaler_steps=upscaler_steps,
        family_detected=detected,
        unet=unet,
        unet_weight_name=unet_weight_name,
    )


def _parse_unet(
    entry: Mapping[str, Any], base_dir: Path, where: str
) -> tuple[str | None, str | None]:
    unet = _get(entry, "unet", str, where)
    weight_name = _get(entry, "unet_weight_name", str, where)
    if unet is None:
        if weight_name is not None:
            raise RegistryError(f"{where}: unet_weight_name needs 'unet' (the hub id it is in).")
        return None, None
    unet = unet.strip()
    for name in (unet, weight_name or ""):
        if name.lower().endswith(PICKLED_SUFFIXES):
            raise UnsafeCheckpointError(
                f"{where}: {name!r} is a pickled file; loading it could run arbitrary code, so "
                "it is refused. Use the UNet's .safetensors file."
            )
    if _looks_like_path(unet, base_dir) or unet.lower().endswith(".safetensors"):
        if not unet.lower().endswith(".safetensors"):
            raise RegistryError(f"{where}: 'unet' must be a .safetensors file or a hub id.")
        return str(_resolve_path(unet, base_dir)), None
    if not is_hub_id(unet) or not (weight_name or "").endswith(".safetensors"):
        raise RegistryError(
            f"{where}: 'unet' is a .safetensors file or a hub id; with a hub id, "
            "unet_weight_name names the .safetensors file in it."
        )
    return unet, weight_name


_LORA_KEYS = {
    "source", "family", "weight_name", "weight", "triggers", "description", "license",
}  # fmt: skip


def _parse_lora(name: str, entry: Any, *, base_dir: Path, origin: str) -> LoraSpec:
    where = _checked_table("loras", "LoRA", name, entry, _LORA_KEYS, origin)
    raw_source = _get(entry, "source", str, where)
    if raw_source is None or not raw_source.strip():
        raise RegistryError(
            f"{where}: 'source' is required (a .safetensors file, a folder or a hub id)."
        )
    source = raw_source.strip()
    if source.lower().endswith(PICKLED_SUFFIXES):
        raise UnsafeCheckpointError(
            f"{where}: {source!r} is a pickled file; loading it could run arbitrary code, so "
            "it is refused. Use the LoRA's .safetensors file."
        )
    # A file or folder (relative to the registry), else a hub id ("org/name").
    if (
        _looks_like_path(source, base_dir)
        or source.lower().endswith(".safetensors")
        or (base_dir / source).exists()
    ):
        source = str(_resolve_path(source, base_dir))
    family_value = _get(entry, "family", str, where)
    try:
        family = Family(family_value)
    except ValueError:
        raise RegistryError(
            f"{where}: family (the models it fits) must be one of {[f.value for f in Family]}, "
            f"not {family_value!r}."
        ) from None
    weight = _get(entry, "weight", float, where)
    if weight is not None and not -MAX_LORA_WEIGHT <= weight <= MAX_LORA_WEIGHT:
        raise RegistryError(
            f"{where}: weight must be between -{MAX_LORA_WEIGHT:g} and {MAX_LORA_WEIGHT:g}."
        )
    triggers = entry.get("triggers", [])
    if not isinstance(triggers, list) or not all(isinstance(t, str) for t in triggers):
        raise RegistryError(f"{where}: triggers must be a list of words (strings).")
    return LoraSpec(
        name=name,
        source=source,
        family=family,
        weight_name=_get(entry, "weight_name", str, where),
        weight=0.8 if weight is None else weight,
        triggers=tuple(t.strip() for t in triggers if t.strip()),
        description=_get(entry, "description", str, where) or "",
        license=_get(entry, "license", str, where) or "unspecified",
    )


def _get(entry: Mapping[str, Any], key: str, expected: type, where: str) -> Any:
    value = entry.get(key)
    if value is None:
        return None
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or isinstance(value, bool):
        raise RegistryError(f"{where}: {key!r} must be {expected.__name__}, not {value!r}.")
    return value


def _check_presets(presets: Presets, where: str) -> None:
    problems = []
    if presets.scheduler not in SCHEDULERS:
        problems.append(f"scheduler must be one of {sorted(SCHEDULERS)}, not {presets.scheduler!r}")
    for key in ("width", "height", "min_size", "max_size"):
        value = getattr(presets, key)
        if value <= 0 or value % 8:
            problems.append(f"{key} must be a positive multiple of 8, not {value}")
    if presets.min_size > presets.max_size:
        problems.append("min_size must not exceed max_size")
    for key in ("width", "height"):
        if not presets.min_size <= getattr(presets, key) <= presets.max_size:
            problems.append(f"{key} must lie between min_size and max_size")
    if not 1 <= presets.steps <= presets.max_steps:
        problems.append("steps must be between 1 and max_steps")
    if presets.guidance < 0:
        problems.append("guidance must not be negative")
    if problems:
        raise RegistryError(f"{where}: " + "; ".join(problems) + ".")


def classify_source(source: str, base_dir: Path, where: str = "") -> tuple[str, SourceKind]:
    """Normalise a source string and say what it is; refuse pickled checkpoints."""
    builtin = source.removeprefix(BUILTIN_PREFIX)
    if builtin in BUILTIN_FAMILIES and (source.startswith(BUILTIN_PREFIX) or source == builtin):
        return BUILTIN_PREFIX + builtin, SourceKind.BUILTIN
    if source.startswith(BUILTIN_PREFIX):
        raise RegistryError(
            f"{where}: unknown built-in model {source!r}; built-ins are "
            f"{', '.join(BUILTIN_PREFIX + n for n in BUILTIN_FAMILIES)}."
        )
    lowered = source.lower()
    if lowered.endswith(PICKLED_SUFFIXES):
        raise UnsafeCheckpointError(
            f"{where}: {source!r} is a pickled checkpoint; loading it could run arbitrary code, "
            "so it is refused. Convert it to .safetensors (for example with the 'Convert to "
            "Safetensors' Space or `safetensors.torch.save_file` on a trusted machine) and "
            "point 'source' at the .safetensors file, or use the model's diffusers folder."
        )
    if lowered.endswith(".safetensors"):
        return str(_resolve_path(source, base_dir)), SourceKind.SINGLE_FILE
    if _looks_like_path(source, base_dir):
        return str(_resolve_path(source, base_dir)), SourceKind.FOLDER
    if is_hub_id(source):
        return source, SourceKind.HUB
    return str(_resolve_path(source, base_dir)), SourceKind.FOLDER


def _looks_like_path(value: str, base_dir: Path) -> bool:
    if value.startswith(("/", "./", "../", "~", ".\\", "..\\")):
        return True
    if re.match(r"^[A-Za-z]:[\\/]", value):  # a Windows drive
        return True
    return _resolve_path(value, base_dir).exists()


def _resolve_path(value: str, base_dir: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()


# --- family detection ---------------------------------------------------------------------


def native_size(source: str, kind: SourceKind, config: str | None = None) -> int | None:
    """The image size a model was built for, from its diffusers configs: the UNet's latent
    ``sample_size`` times the VAE's downscale factor. None where no configs can be read
    here (hub models, single files without a config folder)."""
    if kind is SourceKind.FOLDER:
        folder = Path(source)
    elif kind is SourceKind.SINGLE_FILE and config is not None and Path(config).is_dir():
        folder = Path(config)
    else:
        return None
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
        vae = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    sample = unet.get("sample_size")
    if isinstance(sample, list | tuple) and sample:
        sample = sample[0]
    blocks = vae.get("block_out_channels")
    if not isinstance(sample, int) or not isinstance(blocks, list | tuple) or not blocks:
        return None
    size = sample * 2 ** (len(blocks) - 1)
    return size if size > 0 and size % 8 == 0 else None


def presets_for_size(base: Presets, size: int) -> Presets:
    """The family's presets re-centred on a model's own size (a 768 px SD 2 model, a 64 px
    test model): half to twice that size, rather than sizes it was never trained for."""
    if size == base.width == base.height:
        return base
    return replace(
        base, width=size, height=size, min_size=max(8, size // 16 * 8), max_size=size * 2
    )


def detect_family(source: str, kind: SourceKind) -> Family | None:
    """Best-effort family from the weights' own files; None when nothing can be read."""
    if kind is SourceKind.BUILTIN:
        return BUILTIN_FAMILIES[source.removeprefix(BUILTIN_PREFIX)]
    if kind is SourceKind.FOLDER:
        return family_of_diffusers_folder(Path(source))
    if kind is SourceKind.SINGLE_FILE:
        try:
            return family_of_safetensors(Path(source))
        except (OSError, ValueError):
            return None
    return _family_of_cached_hub_model(source)


def family_of_diffusers_folder(folder: Path) -> Family | None:
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return _family_of_model_index(index, folder)


def _family_of_model_index(index: Mapping[str, Any], folder: Path | None) -> Family:
    second_encoder = index.get("text_encoder_2")
    if isinstance(second_encoder, list) and second_encoder[0] is not None:
        return Family.SDXL
    if "XL" in str(index.get("_class_name", "")):
        return Family.SDXL
    if folder is not None:
        try:
            unet = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return Family.SD15
        if unet.get("addition_embed_type") == "text_time":
            return Family.SDXL
    return Family.SD15


def safetensors_keys(path: Path) -> list[str]:
    """Tensor names from a .safetensors header, read without loading any tensor."""
    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) != 8:
            raise ValueError(f"{path} is too short to be a .safetensors file")
        (header_length,) = struct.unpack("<Q", prefix)
        if header_length > _SAFETENSORS_HEADER_LIMIT:
            raise ValueError(f"{path} has an implausible .safetensors header")
        header = json.loads(file.read(header_length))
    if not isinstance(header, dict):
        raise ValueError(f"{path} has a malformed .safetensors header")
    return [key for key in header if key != "__metadata__"]


def check_safetensors(path: Path) -> list[str]:
    """Tensor names of a whole, well-formed .safetensors file; ValueError (saying what is
    wrong) for anything else, a pickle under another name included. Reads the header only:
    every tensor must have a dtype, a shape and offsets inside the data, and the offsets
    must cover the data exactly (the format allows no holes and no trailing bytes)."""
    size = path.stat().st_size
    with path.open("rb") as file:
        prefix = file.read(8)
        if len(prefix) != 8:
            raise ValueError("the file is too short to be a .safetensors file")
        (header_length,) = struct.unpack("<Q", prefix)
        if not 2 <= header_length <= min(_SAFETENSORS_HEADER_LIMIT, size - 8):
            raise ValueError("the file does not start with a .safetensors header")
        raw = file.read(header_length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise ValueError("the file's .safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise ValueError("the file's .safetensors header is not a table of tensors")
    data_size = size - 8 - header_length
    end = 0
    names = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (
            not isinstance(info, dict)
            or not isinstance(info.get("dtype"), str)
            or not isinstance(info.get("shape"), list)
            or not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_size
        ):
            raise ValueError(f"the tensor {name!r} in the .safetensors header is malformed")
        end = max(end, offsets[1])
        names.append(name)
    if not names:
        raise ValueError("the .safetensors file holds no tensors")
    if end != data_size:
        raise ValueError("the .safetensors file's data does not match its header")
    return names


def family_of_keys(keys: Iterable[str]) -> Family:
    """The family of an original-layout checkpoint, from its tensor names."""
    keys = list(keys)
    if any(key.startswith("conditioner.embedders.1.") for key in keys):
        return Family.SDXL
    if any("label_emb.0.0.weight" in key for key in keys):  # SDXL's size conditioning
        return Family.SDXL
    return Family.SD15


def family_of_safetensors(path: Path) -> Family:
    return family_of_keys(safetensors_keys(path))


def _family_of_cached_hub_model(repo_id: str) -> Family | None:
    # Only the local cache is consulted: registry loading must not touch the network.
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        cached = try_to_load_from_cache(repo_id, "model_index.json")
    except Exception:  # any cache oddity just means "not known"
        return None
    if not isinstance(cached, str):
        return None
    try:
        index = json.loads(Path(cached).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return _family_of_model_index(index, None)
