"""``diffusion-chat doctor``: check a deployment before (or instead of) starting it.

Each check prints one line with ✔ (fine), ⚠ (works, but read this), ✘ (will not work) or
· (information), and a fix under every problem. The exit code is 1 when any check failed.
Nothing here connects to the network or changes a file: it is safe to run next to a live
bot, and it never prints the token.
"""

from __future__ import annotations

import base64
import binascii
import enum
import importlib.util
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

from dotenv import dotenv_values

from core.config import TOKEN_SHAPE, Settings, SettingsError, load_settings
from core.image_storage import describe_image_store
from core.storage import DATABASE_FILE, IMAGES_DIR

GIB = 1024**3
LOW_DISK_BYTES = 5 * GIB

# Rough download sizes of the diffusers weights (what from_pretrained fetches), by family
# and by whether the fp16 variant is used. Good enough to warn about disk space.
DOWNLOAD_GB = {("sd15", True): 2.7, ("sd15", False): 5.5, ("sdxl", True): 7.0, ("sdxl", False): 14}
# Rough VRAM an fp16 pipeline needs at its native size, by family.
VRAM_GB = {"sd15": 4.0, "sdxl": 8.0}


class Level(enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    INFO = "info"


SYMBOLS = {Level.OK: "✔", Level.WARN: "⚠", Level.FAIL: "✘", Level.INFO: "·"}
ASCII_SYMBOLS = {Level.OK: "[ok]", Level.WARN: "[!!]", Level.FAIL: "[XX]", Level.INFO: "[--]"}


@dataclass(frozen=True, slots=True)
class Check:
    level: Level
    text: str
    fix: str | None = None


@dataclass(slots=True)
class Section:
    title: str
    checks: list[Check] = field(default_factory=list)

    def ok(self, text: str) -> None:
        self.checks.append(Check(Level.OK, text))

    def info(self, text: str) -> None:
        self.checks.append(Check(Level.INFO, text))

    def warn(self, text: str, fix: str | None = None) -> None:
        self.checks.append(Check(Level.WARN, text, fix))

    def fail(self, text: str, fix: str | None = None) -> None:
        self.checks.append(Check(Level.FAIL, text, fix))


@dataclass(frozen=True, slots=True)
class TorchInfo:
    version: str | None = None  # None: torch is not installed
    cuda_build: str | None = None  # torch.version.cuda: None for CPU builds
    gpus: tuple[tuple[str, int], ...] = ()  # (name, total memory in bytes)
    mps: bool = False
    error: str | None = None  # torch is installed but importing it failed


def probe_torch() -> TorchInfo:
    if importlib.util.find_spec("torch") is None:
        return TorchInfo()
    try:
        import torch
    except Exception as error:  # missing or mismatched CUDA libraries and the like
        return TorchInfo(version="?", error=f"{type(error).__name__}: {error}")
    gpus: tuple[tuple[str, int], ...] = ()
    try:
        if torch.cuda.is_available():
            gpus = tuple(
                (torch.cuda.get_device_name(i), torch.cuda.get_device_properties(i).total_memory)
                for i in range(torch.cuda.device_count())
            )
    except Exception as error:
        return TorchInfo(version=torch.__version__, error=f"CUDA: {error}")
    mps_backend: Any = getattr(torch.backends, "mps", None)
    mps = bool(mps_backend is not None and mps_backend.is_available())
    return TorchInfo(torch.__version__, torch.version.cuda, gpus, mps)


def run_doctor(
    environ: Mapping[str, str] | None = None,
    env_file: Path | None = Path(".env"),
    *,
    out: TextIO | None = None,
    torch_probe: Callable[[], TorchInfo] = probe_torch,
) -> int:
    """Run every check, print the report to ``out`` (stdout), return the exit code."""
    stream = out if out is not None else sys.stdout
    env = dict(os.environ if environ is None else environ)
    values: dict[str, str] = {}
    if env_file is not None and env_file.is_file():
        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    values.update(env)  # the environment wins over .env, as in load_settings

    sections = list(_sections(values, env, env_file, torch_probe))
    _print(sections, stream, env_file)
    checks = [check for section in sections for check in section.checks]
    return 1 if any(check.level is Level.FAIL for check in checks) else 0


def _sections(
    values: dict[str, str],
    environ: dict[str, str],
    env_file: Path | None,
    torch_probe: Callable[[], TorchInfo],
) -> Iterator[Section]:
    settings_section = Section("Settings")
    api_only = not values.get("DISCORD_TOKEN", "").strip() and values.get(
        "API_PORT", ""
    ).strip() not in ("", "0")
    if api_only:
        settings_section.info("DISCORD_TOKEN is not set: only the HTTP API runs")
    else:
        _check_token(settings_section, values.get("DISCORD_TOKEN", ""))
    settings: Settings | None
    try:
        settings = load_settings(environ, env_file, require_token=False)
    except SettingsError as error:
        settings = None
        lines = str(error).splitlines()[1:] or [str(error)]
        for line in lines:
            settings_section.fail(line.removeprefix("- "), "edit .env (see .env.example)")
    else:
        settings_section.ok("every other setting is valid")
        if settings.metrics_port:
            settings_section.info(
                f"metrics and /healthz on http://{settings.metrics_host}:{settings.metrics_port}"
            )
        else:
            settings_section.info("metrics are off (set METRICS_PORT to serve /metrics, /healthz)")
        if settings.api_port:
            settings_section.info(
                f"HTTP API on http://{settings.api_host}:{settings.api_port}/api/docs"
                + (
                    " (anonymous use from this machine allowed)"
                    if settings.api_allow_anonymous
                    else ""
                )
            )
    yield settings_section

    hardware = Section("Hardware")
    torch_info = _check_torch(hardware, torch_probe(), settings)
    yield hardware

    yield _check_models(values, settings, torch_info)

    data_dir = settings.data_dir if settings else Path(values.get("DATA_DIR", "").strip() or "data")
    storage = Section(f"Storage ({data_dir})")
    _check_data_dir(storage, data_dir)
    if settings and settings.database_url:
        from core.storage.dialect import redact_url

        # Not contacted here: `diffusion-chat migrate` connects and reports.
        storage.ok(f"database: PostgreSQL at {redact_url(settings.database_url)} (DATABASE_URL)")
    else:
        _check_database(storage, settings.database_path if settings else data_dir / DATABASE_FILE)
    if settings is not None and settings.s3_bucket:
        _check_image_bucket(storage, settings)
    yield storage


def _check_image_bucket(section: Section, settings: Settings) -> None:
    """S3_*: what is set, without contacting the bucket (the bot checks it at start)."""
    section.info(f"images in {describe_image_store(settings)} (not contacted here)")
    if importlib.util.find_spec("boto3") is None:
        section.fail("S3_BUCKET is set but boto3 is not installed", "pip install -e .")
    has_id, has_secret = bool(settings.s3_access_key_id), bool(settings.s3_secret_access_key)
    if has_id != has_secret:
        section.fail(
            "only one of S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY is set",
            "set both, or neither to use boto3's usual sources (AWS_* variables, an instance role)",
        )
    elif not has_id:
        section.info("S3 keys not set: boto3's usual sources are used (AWS_* variables, roles)")


# --- settings -------------------------------------------------------------------------------


def _check_token(section: Section, raw: str) -> None:
    token = raw.strip()
    if not token:
        section.fail(
            "DISCORD_TOKEN is not set",
            "copy the token from https://discord.com/developers/applications > your app > Bot "
            "> Reset Token, and put it in .env as DISCORD_TOKEN=...",
        )
        return
    shown = f"{len(token)} characters"
    if len(token) >= 40:  # only a long value can spare its last four characters
        shown += f", ending in …{token[-4:]}"
    if token.lower().startswith("bot "):
        section.fail(
            f"DISCORD_TOKEN starts with 'Bot ' ({shown})",
            "remove the 'Bot ' prefix: the bot adds it itself",
        )
    elif token[0] in "'\"" or token[-1] in "'\"":
        section.fail(f"DISCORD_TOKEN is wrapped in quotes ({shown})", "remove the quotes")
    elif not TOKEN_SHAPE.match(token):
        section.fail(
            f"DISCORD_TOKEN does not look like a bot token ({shown})",
            "a bot token is three parts joined by dots; copy it again from Application > Bot "
            "> Reset Token (the client secret and the public key are not the token)",
        )
    else:
        bot_id = _token_user_id(token)
        who = f"; bot user id {bot_id}" if bot_id else ""
        section.ok(f"DISCORD_TOKEN is set and shaped like a bot token ({shown}{who})")


def _token_user_id(token: str) -> str | None:
    """The bot's user id, which the token's first part encodes (in base64)."""
    head = token.split(".", 1)[0]
    try:
        decoded = base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return decoded if decoded.isdigit() else None


# --- hardware -------------------------------------------------------------------------------


def _check_torch(section: Section, info: TorchInfo, settings: Settings | None) -> TorchInfo:
    section.info(
        f"Python {platform.python_version()}; "
        + ", ".join(f"{name} {_version(name)}" for name in ("discord.py", "diffusers"))
    )
    if info.version is None:
        section.fail(
            "torch is not installed",
            "install the build for your GPU first (https://pytorch.org/get-started/locally/), "
            "for example: pip install torch --index-url https://download.pytorch.org/whl/cu124",
        )
        return info
    if info.error:
        section.fail(
            f"torch {info.version} is installed but does not work: {info.error}",
            "reinstall torch for your CUDA driver (nvidia-smi shows the driver's CUDA version)",
        )
        return info
    device = settings.device if settings else "auto"
    if info.gpus:
        for index, (name, memory) in enumerate(info.gpus):
            section.ok(
                f"torch {info.version} sees GPU {index}: {name}, {memory / GIB:.1f} GiB "
                f"(CUDA {info.cuda_build})"
            )
        if device in ("mps", "cpu"):
            section.info(f"DEVICE={device}: the GPU will not be used")
        return info
    if info.mps:
        section.ok(f"torch {info.version} sees an Apple GPU (MPS)")
        if device == "cuda":
            section.fail("DEVICE=cuda, but there is no CUDA GPU", "set DEVICE=auto or DEVICE=mps")
        return info
    if device in ("cuda", "mps"):
        section.fail(
            f"DEVICE={device}, but torch {info.version} sees no such GPU",
            "set DEVICE=auto (or cpu), or fix the GPU set-up as below",
        )
    fix = "the built-in tiny models work on a CPU; real models take minutes per image"
    if info.cuda_build is None and shutil.which("nvidia-smi"):
        fix = (
            "this is a CPU-only build of torch but an NVIDIA GPU is present: install the CUDA "
            "build, e.g. pip install torch --index-url https://download.pytorch.org/whl/cu124"
        )
    elif info.cuda_build is not None:
        fix = (
            "torch was built for CUDA but sees no GPU: check the driver (nvidia-smi); in "
            "Docker, install the NVIDIA Container Toolkit and give the container the GPU"
        )
    section.warn(f"torch {info.version} sees no GPU: generation runs on the CPU", fix)
    return info


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


# --- models ---------------------------------------------------------------------------------


def hub_cache_dir(values: Mapping[str, str]) -> Path:
    """Where huggingface_hub keeps downloads, by the same rules it uses."""
    if values.get("HF_HUB_CACHE"):
        return Path(values["HF_HUB_CACHE"]).expanduser()
    if values.get("HF_HOME"):
        return Path(values["HF_HOME"]).expanduser() / "hub"
    xdg = values.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def _check_models(
    values: Mapping[str, str], settings: Settings | None, torch_info: TorchInfo
) -> Section:
    from engine.errors import EngineError
    from engine.registry import ModelRegistry, SourceKind

    if settings is None:
        section = Section("Models")
        section.info("skipped: fix the settings above first")
        return section
    origin = str(settings.models_file) if settings.models_file else "the bundled registry"
    section = Section(f"Models ({origin})")
    try:
        registry = ModelRegistry.load(settings.models_file, default_name=settings.default_model)
    except EngineError as error:
        section.fail(
            str(error), "fix MODELS_FILE or DEFAULT_MODEL (docs/models.md shows the format)"
        )
        return section
    section.info(f"default model: {registry.default_name}")

    cache = hub_cache_dir(values)
    offline = values.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    cached_sizes = _cached_repo_sizes(cache)
    to_download = 0.0
    vram = min((memory for _, memory in torch_info.gpus), default=0) / GIB
    for spec in registry.specs():
        label = f"{spec.name}: "
        if spec.source_kind is SourceKind.BUILTIN:
            section.ok(label + f"{spec.source}, built in (random noise, for testing)")
            if spec.unet:
                _check_unet(section, label, spec.unet, spec.unet_weight_name, cache)
            continue
        if spec.source_kind is SourceKind.HUB:
            to_download += _check_hub_model(section, label, spec, cache, cached_sizes, offline)
        else:
            _check_local_model(section, label, spec.source_kind, Path(spec.source))
        if spec.upscaler:
            _check_upscaler(section, label, spec.upscaler, cache)
        if spec.unet:
            _check_unet(section, label, spec.unet, spec.unet_weight_name, cache)
        needed = VRAM_GB.get(spec.family.value, 0.0)
        if vram and vram < needed and not settings.cpu_offload:
            section.warn(
                label + f"{spec.family.value} models want about {needed:.0f} GB of VRAM; this "
                f"GPU has {vram:.1f} GiB",
                "set CPU_OFFLOAD=true (slower, far less VRAM) and VAE_TILING=true, or offer "
                "a smaller model",
            )
    _check_image_check(section, settings.nsfw_model, cache, offline)
    if to_download:
        free = _free_bytes(cache)
        if free is not None and free < to_download * GIB:
            section.warn(
                f"the models still to download need about {to_download:.0f} GB; {cache} has "
                f"{free / GIB:.1f} GiB free",
                "free some space, or point HF_HOME at a larger disk",
            )
    return section


def _cached_repo_sizes(cache: Path) -> dict[str, int]:
    if not cache.is_dir():
        return {}
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir(cache)
    except Exception:  # an odd cache only costs us the sizes
        return {}
    return {repo.repo_id: repo.size_on_disk for repo in info.repos if repo.repo_type == "model"}


def _cached_file(repo_id: str, filename: str, cache: Path) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache)
    except Exception:
        return False
    return isinstance(found, str)


def _check_hub_model(
    section: Section,
    label: str,
    spec: Any,
    cache: Path,
    cached_sizes: Mapping[str, int],
    offline: bool,
) -> float:
    """Report a hub model's download state; return the GB still to download."""
    repo = spec.source
    fp16 = spec.variant == "fp16"
    if _cached_file(repo, "model_index.json", cache):
        weights = "diffusion_pytorch_model" + (".fp16" if fp16 else "") + ".safetensors"
        size = cached_sizes.get(repo)
        shown = f" ({size / GIB:.1f} GiB)" if size else ""
        if _cached_file(repo, f"unet/{weights}", cache):
            section.ok(label + f"{repo} is downloaded{shown}")
            return 0.0
        section.warn(
            label + f"{repo} is only partly downloaded{shown}",
            "the rest downloads on first use; or fetch it now: " + _download_command(repo, fp16),
        )
        return 0.0
    gb = DOWNLOAD_GB.get((spec.family.value, fp16), 7.0)
    if offline:
        section.fail(
            label + f"{repo} is not downloaded, and HF_HUB_OFFLINE is set",
            "download it on a machine with internet access: " + _download_command(repo, fp16),
        )
        return 0.0
    section.warn(
        label + f"{repo} is not downloaded yet: it downloads on first use (about {gb:g} GB)",
        "or fetch it now: " + _download_command(repo, fp16),
    )
    return gb


def _check_image_check(section: Section, source: str, cache: Path, offline: bool) -> None:
    """NSFW_MODEL: without it loaded, images are posted unchecked (the bot still runs)."""
    label = "image check: "
    if source.lower() == "off":
        section.warn(
            label + "off (NSFW_MODEL=off): images are posted without being checked",
            "set NSFW_MODEL to an image classifier (the default is "
            "Falconsai/nsfw_image_detection) for servers that need it",
        )
        return
    folder = Path(source).expanduser()
    if folder.is_absolute() or source.startswith((".", "~")):
        if (folder / "config.json").is_file():
            section.ok(label + f"{source}")
        else:
            section.fail(
                label + f"{source} is not a transformers model folder (no config.json)",
                "fix NSFW_MODEL, or set it to off; until then images are posted unchecked",
            )
        return
    if _cached_file(source, "config.json", cache):
        section.ok(label + f"{source} is downloaded")
    elif offline:
        section.fail(
            label + f"{source} is not downloaded, and HF_HUB_OFFLINE is set; images would be "
            "posted unchecked",
            f"download it on a machine with internet access: hf download {source}",
        )
    else:
        section.warn(
            label + f"{source} is not downloaded yet: it downloads at start (about 0.35 GB)",
            f"or fetch it now: hf download {source}",
        )


def _check_unet(
    section: Section, label: str, unet: str, weight_name: str | None, cache: Path
) -> None:
    """The UNet that replaces the model's own (a few-step model's): a file, or a hub file."""
    if weight_name is None:
        if not Path(unet).is_file():
            section.fail(
                label + f"its UNet file {unet} does not exist", "fix 'unet' in the registry"
            )
        return
    if not _cached_file(unet, weight_name, cache):
        section.warn(
            label + f"its UNet {weight_name} ({unet}) is not downloaded yet: it downloads on "
            "first use (about 5 GB)",
            f"or fetch it now: hf download {unet} {weight_name}",
        )


def _download_command(repo: str, fp16: bool) -> str:
    # Only what diffusers loads: a plain `hf download` would also fetch the single-file
    # checkpoints that many repositories carry next to the diffusers folders.
    command = f'hf download {repo} --include "*.json" --include "*.txt"'
    if fp16:
        return command + ' --include "*.fp16.safetensors"'
    return command + ' --include "*/*.safetensors" --exclude "*.fp16.safetensors"'


def _check_local_model(section: Section, label: str, kind: Any, path: Path) -> None:
    from engine.registry import SourceKind

    if kind is SourceKind.SINGLE_FILE:
        if path.is_file():
            section.ok(label + f"{path} ({path.stat().st_size / GIB:.1f} GiB)")
        else:
            section.fail(
                label + f"{path} does not exist",
                "fix 'source' in MODELS_FILE, or copy the .safetensors file there",
            )
        return
    if not path.exists():
        section.fail(
            label + f"the folder {path} does not exist",
            "fix 'source' in MODELS_FILE, or put a diffusers folder there (for example "
            "`hf download <hub id> --local-dir <folder>`)",
        )
    elif not (path / "model_index.json").is_file():
        section.fail(
            label + f"{path} is not a diffusers folder (no model_index.json)",
            "point 'source' at the folder that holds model_index.json, or at a .safetensors file",
        )
    else:
        section.ok(label + f"{path}")


def _check_upscaler(section: Section, label: str, upscaler: str, cache: Path) -> None:
    looks_local = upscaler.startswith(("/", ".", "~")) or Path(upscaler).exists()
    if looks_local:
        if not Path(upscaler).expanduser().exists():
            section.warn(
                label + f"the upscaler {upscaler} does not exist",
                "fix 'upscaler' in MODELS_FILE; upscales fall back to the model itself",
            )
    elif not _cached_file(upscaler, "model_index.json", cache):
        section.info(label + f"the upscaler {upscaler} downloads on first use")


# --- storage --------------------------------------------------------------------------------


def _existing_ancestor(path: Path) -> Path | None:
    for candidate in (path, *path.absolute().parents):
        if candidate.exists():
            return candidate
    return None


def _free_bytes(path: Path) -> int | None:
    existing = _existing_ancestor(path)
    if existing is None:
        return None
    try:
        return shutil.disk_usage(existing).free
    except OSError:
        return None


def _check_data_dir(section: Section, data_dir: Path) -> None:
    if data_dir.exists() and not data_dir.is_dir():
        section.fail(f"DATA_DIR {data_dir} is a file", "point DATA_DIR at a directory")
        return
    if data_dir.is_dir():
        try:
            with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".doctor-"):
                pass
        except OSError as error:
            section.fail(
                f"DATA_DIR {data_dir} is not writable ({error.strerror})",
                "give the bot's user write access (in Docker: the volume must belong to uid "
                "1000), or point DATA_DIR elsewhere",
            )
            return
        section.ok(f"DATA_DIR {data_dir} is writable")
    else:
        parent = _existing_ancestor(data_dir)
        if parent is None or not os.access(parent, os.W_OK):
            section.fail(
                f"DATA_DIR {data_dir} does not exist and cannot be created",
                f"create it (mkdir -p {data_dir}) and let the bot's user write to it",
            )
            return
        section.ok(f"DATA_DIR {data_dir} does not exist yet; it will be created at first start")
    free = _free_bytes(data_dir)
    if free is None:
        return
    if free < LOW_DISK_BYTES:
        section.warn(
            f"only {free / GIB:.1f} GiB free for DATA_DIR (images and the database)",
            "free some space, run `diffusion-chat cleanup --older-than-days 30`, or move DATA_DIR",
        )
    else:
        section.ok(f"{free / GIB:.0f} GiB free for DATA_DIR")


def _check_database(section: Section, path: Path) -> None:
    from core.storage.migrations import APPLICATION_ID, LATEST_VERSION

    images = path.parent / IMAGES_DIR
    holds_images = any(not file.name.startswith(".") for file in images.glob("*/*/*"))
    if not path.exists() or path.stat().st_size == 0:
        if holds_images:
            section.fail(
                f"database {path} is empty or missing, but {images} holds stored images",
                "restore the database from a backup (<name>.v<version>.bak next to it, or "
                "your own); the bot refuses to start on it",
            )
        else:
            section.ok(f"database {path.name}: will be created at first start")
        return
    try:
        conn = sqlite3.connect(_read_only_uri(path), uri=True, timeout=5)
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
            tables = int(
                conn.execute("SELECT count(*) FROM sqlite_schema WHERE type = 'table'").fetchone()[
                    0
                ]
            )
            problems = [
                str(row[0])
                for row in conn.execute("PRAGMA quick_check(3)").fetchall()
                if row[0] != "ok"
            ]
        finally:
            conn.close()
    except sqlite3.Error as error:
        section.fail(
            f"database {path} cannot be read: {error}",
            "is it an SQLite file? Restore a backup (<name>.v<version>.bak) or move it away",
        )
        return
    if app_id not in (0, APPLICATION_ID) or (app_id == 0 and (version or tables)):
        section.fail(
            f"{path} is not a Diffusion Chat database",
            "point DATA_DIR at a directory of its own",
        )
    elif problems:
        section.fail(
            f"database {path} is damaged ({'; '.join(problems)})",
            "restore it from a backup (<name>.v<version>.bak next to it, or your own)",
        )
    elif version > LATEST_VERSION:
        section.fail(
            f"database schema version {version} is newer than this code knows "
            f"({LATEST_VERSION}): it was written by a newer Diffusion Chat",
            "run the newer version that wrote it, or restore the backup made before the "
            "upgrade (<name>.v<version>.bak next to the database)",
        )
    elif version < LATEST_VERSION:
        section.warn(
            f"database schema version {version}; this code needs {LATEST_VERSION}",
            "it is migrated at the next start (after a backup), or run `diffusion-chat migrate`",
        )
    else:
        section.ok(f"database schema is up to date (version {version})")


def _read_only_uri(path: Path) -> str:
    """A URI that reads ``path`` without writing anything next to it.

    Even a ``mode=ro`` connection creates the ``-wal`` and ``-shm`` files of a WAL database
    and leaves them behind. With no ``-wal`` file nobody has the database open (SQLite keeps
    one while any connection is open), so ``immutable`` is safe and touches nothing; with one,
    the bot is running and ``mode=ro`` shares its files.
    """
    uri = path.absolute().as_uri()
    wal = path.with_name(path.name + "-wal")
    return f"{uri}?mode=ro" if wal.exists() else f"{uri}?immutable=1"


# --- output ---------------------------------------------------------------------------------


def _symbols(stream: TextIO) -> dict[Level, str]:
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        "".join(SYMBOLS.values()).encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return ASCII_SYMBOLS
    return SYMBOLS


def _print(sections: list[Section], stream: TextIO, env_file: Path | None) -> None:
    symbols = _symbols(stream)
    source = f" (settings from the environment and {env_file})" if env_file else ""
    print(f"Diffusion Chat doctor{source}", file=stream)
    for section in sections:
        print(f"\n{section.title}", file=stream)
        for check in section.checks:
            print(f"  {symbols[check.level]} {check.text}", file=stream)
            if check.fix:
                print(f"      fix: {check.fix}", file=stream)
    checks = [check for section in sections for check in section.checks]
    failed = sum(check.level is Level.FAIL for check in checks)
    warned = sum(check.level is Level.WARN for check in checks)
    if failed:
        verdict = f"{failed} problem{'s' * (failed != 1)} to fix before the bot can run"
    else:
        verdict = "ready to run"
    if warned:
        verdict += f" ({warned} warning{'s' * (warned != 1)})"
    print(f"\n{verdict}.", file=stream)
