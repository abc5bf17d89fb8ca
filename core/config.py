"""Settings from the environment and ``.env``, validated with messages that say how to fix them.

Every setting is listed in ``.env.example``; keep the two in step.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from dotenv import dotenv_values

T = TypeVar("T")

DISCORD_API = "https://discord.com/api/v10"
DISCORD_GATEWAY = "wss://gateway.discord.gg/"
# An image the image check scores at least this likely to be sexual content is flagged.
DEFAULT_NSFW_THRESHOLD = 0.7
# A bot token is three base64url parts separated by dots.
TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{20,}$")


class SettingsError(Exception):
    """One or more settings are wrong; the message lists each with its fix."""


@dataclass(frozen=True)
class Settings:
    discord_token: str = field(repr=False)
    discord_api_base_url: str = DISCORD_API
    discord_gateway_url: str = DISCORD_GATEWAY
    dev_guild_id: int | None = None
    data_dir: Path = Path("data")
    # PostgreSQL for several front processes; None: the SQLite file in DATA_DIR. Holds a
    # password: never shown (repr, logs, error messages).
    database_url: str | None = field(default=None, repr=False)
    models_file: Path | None = None
    default_model: str | None = None
    # engine
    max_queued: int = 200
    max_queued_per_user: int = 5
    max_batch_images: int = 0
    affinity_max_wait_s: float = 30.0
    cache_entries: int = 64
    cache_mb: int = 512
    preview_every: int = 5
    progress_edit_interval_s: float = 1.5
    result_save_give_up_s: float = 300.0
    attachment_hosts: tuple[str, ...] | None = None  # None: Discord's CDN hosts
    link_test_hosts: tuple[str, ...] = ()  # tests only: host:port links may use, over http too
    # custom models (/model add): who may add them, and the largest download accepted
    owner_ids: tuple[int, ...] = ()
    model_max_bytes: int = 8 * 2**30
    # loader
    device: str = "auto"
    dtype: str = "auto"
    channels_last: bool = False
    torch_compile: bool = False
    compile_mode: str = "default"
    compile_cache_dir: Path | None = None  # None: <DATA_DIR>/compile-cache
    cuda_graphs: str = "auto"  # auto: for the launch-bound SD 1.x/2.x UNets on CUDA
    unet_fp8: bool = False
    fuse_qkv: bool = False
    vae_tiling: bool = False
    vae_slicing: bool = False
    cpu_offload: bool = False
    model_memory_budget_gb: float = 0.0  # 0: a share of the device's memory (the loader's)
    # where pipelines run: "local" (this process's device) or "ray" (replicas on a cluster)
    engine: str = "local"
    ray_address: str | None = None  # None: a cluster on this machine ("auto")
    ray_replicas: int = 0  # 0: one per GPU in the cluster
    ray_gpus_per_replica: float = 1.0
    ray_cpus_per_replica: float = 1.0
    ray_namespace: str = "diffusion-chat"
    ray_torch_threads: int = 0  # 0: torch's default
    # Environment variables the replicas get from this process (hub access, caches).
    ray_forward_env: tuple[str, ...] = ("HF_TOKEN", "HF_HOME", "HF_HUB_OFFLINE", "HF_ENDPOINT")
    # quotas
    default_daily_images: int | None = 200
    default_concurrent_jobs: int | None = 2
    # operations
    log_level: str = "INFO"
    log_format: str = "text"
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    # the HTTP API
    api_port: int = 0  # 0: off
    api_host: str = "127.0.0.1"
    api_allow_anonymous: bool = False
    api_cors_origins: tuple[str, ...] = ()
    api_requests_per_minute: int = 60
    api_max_body_mb: int = 20
    # Where people reach the API from outside (behind the TLS proxy), for share links; None:
    # no links, sharing only posts to a server's gallery channel.
    api_public_url: str | None = None
    # Where the web chat sends its API calls when it is served elsewhere; None: its origin.
    web_api_base_url: str | None = None
    # "Log in with Discord" on the web chat: the application's OAuth2 client (both needed).
    discord_client_id: int | None = None
    discord_client_secret: str = field(default="", repr=False)
    # Error tracking and traces, both off unless set.
    sentry_dsn: str | None = None
    sentry_environment: str = "production"
    sentry_send_prompts: bool = False
    otel_endpoint: str | None = None
    otel_service_name: str = "diffusion-chat"
    # Conversational refinement: an OpenAI-compatible chat endpoint, else the rule.
    llm_base_url: str | None = None
    llm_model: str = "default"
    llm_api_key: str | None = field(default=None, repr=False)
    llm_timeout_s: float = 8.0
    # object detection (/analyze, POST /api/cv/yolo/detect)
    detector_model: str = "hustvl/yolos-tiny"  # "off": no detection
    yolo_service_url: str | None = None  # set: a YOLO service answers instead of the model
    yolo_timeout_s: float = 10.0
    detect_threshold: float = 0.5
    # The image check: a transformers image classifier (hub id or folder); "off": none.
    nsfw_model: str = "Falconsai/nsfw_image_detection"
    nsfw_threshold: float = DEFAULT_NSFW_THRESHOLD
    # Images in an S3-compatible bucket, shared by several front processes; an empty bucket
    # keeps them as files under DATA_DIR/images. Endpoint None: AWS; region None: boto3's.
    s3_bucket: str = ""
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = field(default=None, repr=False)
    s3_secret_access_key: str | None = field(default=None, repr=False)
    s3_prefix: str = ""  # "" or a folder ending in "/"
    s3_public_base_url: str | None = None  # public images are <base>/<prefix><key>
    s3_presign_seconds: int = 3600  # how long a private image's link works

    @property
    def database_path(self) -> Path:
        return self.data_dir / "diffusion-chat.sqlite3"

    @property
    def database(self) -> str | Path:
        """What ``Database.open`` opens: ``DATABASE_URL``, or the SQLite file in DATA_DIR."""
        return self.database_url or self.database_path

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def custom_models_dir(self) -> Path:
        """Where /model add keeps the .safetensors files it downloads."""
        return self.data_dir / "models"

    @property
    def compile_cache(self) -> Path:
        return self.compile_cache_dir or self.data_dir / "compile-cache"


def load_settings(
    environ: Mapping[str, str] | None = None,
    env_file: Path | None = Path(".env"),
    *,
    require_token: bool = True,
) -> Settings:
    """Read settings from ``environ`` (default: the process environment) over ``env_file``."""
    values: dict[str, str] = {}
    if env_file is not None and env_file.is_file():
        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    values.update(os.environ if environ is None else environ)
    problems: list[str] = []

    def get(name: str, parse: Callable[[str], T], default: T, fix: str) -> T:
        raw = values.get(name, "").strip()
        if not raw:
            return default
        try:
            return parse(raw)
        except ValueError:
            problems.append(f"{name}={_shown(name, raw)!r} is not valid: {fix}")
            return default

    token = values.get("DISCORD_TOKEN", "").strip()
    api_on = values.get("API_PORT", "").strip() not in ("", "0")
    if require_token:
        if not token and not api_on:
            problems.append(
                "DISCORD_TOKEN is not set: copy your bot's token from the Discord developer "
                "portal (Application > Bot > Reset Token) into .env as DISCORD_TOKEN=... "
                "(or, to run only the HTTP API, set API_PORT=8080)"
            )
        elif token and not TOKEN_SHAPE.match(token):
            problems.append(
                "DISCORD_TOKEN does not look like a bot token (three dot-separated parts): "
                "paste the token itself, without quotes or a 'Bot ' prefix"
            )

    d = Settings(discord_token="")  # the defaults, written once in the dataclass
    settings = Settings(
        discord_token=token,
        discord_api_base_url=get(
            "DISCORD_API_BASE_URL",
            _url(("http", "https")),
            d.discord_api_base_url,
            "use an http(s) URL such as https://discord.com/api/v10",
        ).rstrip("/"),
        discord_gateway_url=get(
            "DISCORD_GATEWAY_URL",
            _url(("ws", "wss")),
            d.discord_gateway_url,
            "use a ws(s) URL such as wss://gateway.discord.gg/",
        ),
        dev_guild_id=get("DEV_GUILD_ID", _snowflake, None, "use a server's numeric id"),
        data_dir=Path(values.get("DATA_DIR", "").strip() or d.data_dir),
        database_url=get(
            "DATABASE_URL",
            _database_url,
            d.database_url,
            "use postgresql://user:password@host:5432/database, or leave it empty for SQLite"
            " in DATA_DIR",
        ),
        models_file=get("MODELS_FILE", _existing_file, None, "point it to an existing TOML file"),
        default_model=values.get("DEFAULT_MODEL", "").strip() or None,
        max_queued=get("MAX_QUEUED", _positive_int, d.max_queued, "use a whole number above 0"),
        max_queued_per_user=get(
            "MAX_QUEUED_PER_USER",
            _positive_int,
            d.max_queued_per_user,
            "use a whole number above 0",
        ),
        max_batch_images=get(
            "MAX_BATCH_IMAGES",
            _non_negative_int,
            d.max_batch_images,
            "use 0 (automatic) or a whole number",
        ),
        affinity_max_wait_s=get(
            "AFFINITY_MAX_WAIT_S",
            _non_negative_float,
            d.affinity_max_wait_s,
            "use a number of seconds",
        ),
        cache_entries=get(
            "RESULT_CACHE_ENTRIES", _non_negative_int, d.cache_entries, "use a whole number"
        ),
        cache_mb=get("RESULT_CACHE_MB", _non_negative_int, d.cache_mb, "use a number of MiB"),
        preview_every=get(
            "PREVIEW_EVERY",
            _non_negative_int,
            d.preview_every,
            "use 0 (no previews) or a number of steps",
        ),
        progress_edit_interval_s=get(
            "PROGRESS_EDIT_INTERVAL_S",
            _non_negative_float,
            d.progress_edit_interval_s,
            "use a number of seconds (Discord allows about one edit per 1.5 s per message)",
        ),
        attachment_hosts=get(
            "ATTACHMENT_HOSTS",
            _host_list,
            d.attachment_hosts,
            "use host or host:port entries such as cdn.discordapp.com or 127.0.0.1:8080,"
            " separated by commas, no scheme or path",
        ),
        link_test_hosts=get(
            "LINK_TEST_HOSTS",
            _host_list,
            d.link_test_hosts,
            "use host:port entries such as 127.0.0.1:8080, separated by commas (tests only)",
        ),
        owner_ids=get(
            "OWNER_IDS",
            _snowflake_list,
            d.owner_ids,
            "use Discord user ids (numbers; Developer Mode > right-click > Copy User ID), "
            "separated by commas",
        ),
        model_max_bytes=get(
            "MODEL_MAX_BYTES",
            _byte_size,
            d.model_max_bytes,
            "use a size such as 8GiB, 500MiB or a number of bytes",
        ),
        result_save_give_up_s=get(
            "RESULT_SAVE_GIVE_UP_S",
            _non_negative_float,
            d.result_save_give_up_s,
            "use a number of seconds to keep retrying to store a finished job's images",
        ),
        device=get(
            "DEVICE", _choice("auto", "cuda", "mps", "cpu"), d.device, "use auto, cuda, mps or cpu"
        ),
        dtype=get(
            "DTYPE",
            _choice("auto", "float16", "bfloat16", "float32"),
            d.dtype,
            "use auto, float16, bfloat16 or float32",
        ),
        channels_last=get("CHANNELS_LAST", _bool, d.channels_last, "use true or false"),
        torch_compile=get("TORCH_COMPILE", _bool, d.torch_compile, "use true or false"),
        compile_mode=get(
            "COMPILE_MODE",
            _choice("default", "max-autotune", "max-autotune-no-cudagraphs"),
            d.compile_mode,
            "use default, max-autotune or max-autotune-no-cudagraphs",
        ),
        compile_cache_dir=get("COMPILE_CACHE_DIR", Path, d.compile_cache_dir, "use a folder"),
        cuda_graphs=get(
            "CUDA_GRAPHS",
            _choice("auto", "true", "false"),
            d.cuda_graphs,
            "use auto, true or false",
        ),
        unet_fp8=get("UNET_FP8", _bool, d.unet_fp8, "use true or false"),
        fuse_qkv=get("FUSE_QKV", _bool, d.fuse_qkv, "use true or false"),
        vae_tiling=get("VAE_TILING", _bool, d.vae_tiling, "use true or false"),
        vae_slicing=get("VAE_SLICING", _bool, d.vae_slicing, "use true or false"),
        cpu_offload=get("CPU_OFFLOAD", _bool, d.cpu_offload, "use true or false"),
        model_memory_budget_gb=get(
            "MODEL_MEMORY_BUDGET_GB",
            _non_negative_float,
            d.model_memory_budget_gb,
            "use a number of GiB",
        ),
        engine=get("ENGINE", _choice("local", "ray"), d.engine, "use local or ray"),
        ray_address=values.get("RAY_ADDRESS", "").strip() or None,
        ray_replicas=get(
            "RAY_REPLICAS", _non_negative_int, d.ray_replicas, "use 0 (one per GPU) or a number"
        ),
        ray_gpus_per_replica=get(
            "RAY_GPUS_PER_REPLICA",
            _non_negative_float,
            d.ray_gpus_per_replica,
            "use a number of GPUs (1; 0 for CPU replicas; 0.5 to share one)",
        ),
        ray_cpus_per_replica=get(
            "RAY_CPUS_PER_REPLICA", _non_negative_float, d.ray_cpus_per_replica, "use a number"
        ),
        ray_namespace=values.get("RAY_NAMESPACE", "").strip() or d.ray_namespace,
        ray_torch_threads=get(
            "RAY_TORCH_THREADS", _non_negative_int, d.ray_torch_threads, "use 0 or a number"
        ),
        ray_forward_env=get(
            "RAY_FORWARD_ENV",
            _name_list,
            d.ray_forward_env,
            "use environment variable names separated by commas",
        ),
        default_daily_images=get(
            "DEFAULT_DAILY_IMAGES",
            _limit,
            d.default_daily_images,
            "use a whole number, or 'unlimited'",
        ),
        default_concurrent_jobs=get(
            "DEFAULT_CONCURRENT_JOBS",
            _limit,
            d.default_concurrent_jobs,
            "use a whole number, or 'unlimited'",
        ),
        log_level=get(
            "LOG_LEVEL",
            _choice("DEBUG", "INFO", "WARNING", "ERROR"),
            d.log_level,
            "use DEBUG, INFO, WARNING or ERROR",
        ),
        log_format=get("LOG_FORMAT", _choice("text", "json"), d.log_format, "use text or json"),
        metrics_port=get("METRICS_PORT", _port, d.metrics_port, "use 0 (off) or a port number"),
        metrics_host=values.get("METRICS_HOST", "").strip() or d.metrics_host,
        api_port=get("API_PORT", _port, d.api_port, "use 0 (off) or a port number such as 8080"),
        api_host=values.get("API_HOST", "").strip() or d.api_host,
        api_allow_anonymous=get(
            "API_ALLOW_ANONYMOUS", _bool, d.api_allow_anonymous, "use true or false"
        ),
        api_cors_origins=get(
            "API_CORS_ORIGINS",
            _origin_list,
            d.api_cors_origins,
            "use origins such as https://app.example.com, separated by commas",
        ),
        api_requests_per_minute=get(
            "API_REQUESTS_PER_MINUTE",
            _positive_int,
            d.api_requests_per_minute,
            "use a whole number above 0",
        ),
        api_max_body_mb=get(
            "API_MAX_BODY_MB", _positive_int, d.api_max_body_mb, "use a number of MiB above 0"
        ),
        sentry_dsn=get(
            "SENTRY_DSN",
            _url(("http", "https")),
            d.sentry_dsn,
            "use the DSN from your Sentry project's settings (https://KEY@HOST/PROJECT)",
        ),
        sentry_environment=values.get("SENTRY_ENVIRONMENT", "").strip() or d.sentry_environment,
        sentry_send_prompts=get(
            "SENTRY_SEND_PROMPTS", _bool, d.sentry_send_prompts, "use true or false"
        ),
        otel_endpoint=get(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            _url(("http", "https")),
            d.otel_endpoint,
            "use the OTLP/HTTP collector's address, such as http://127.0.0.1:4318",
        ),
        otel_service_name=values.get("OTEL_SERVICE_NAME", "").strip() or d.otel_service_name,
        llm_base_url=get(
            "LLM_BASE_URL",
            _url(("http", "https")),
            d.llm_base_url,
            "use the chat API's base address, such as http://127.0.0.1:8080/v1",
        ),
        llm_model=values.get("LLM_MODEL", "").strip() or d.llm_model,
        llm_api_key=values.get("LLM_API_KEY", "").strip() or d.llm_api_key,
        detector_model=values.get("DETECTOR_MODEL", "").strip() or d.detector_model,
        yolo_service_url=get(
            "YOLO_SERVICE_URL",
            _url(("http", "https")),
            d.yolo_service_url,
            "use the service's detect address, such as http://127.0.0.1:8000/detect",
        ),
        yolo_timeout_s=get(
            "YOLO_TIMEOUT_S", _positive_float, d.yolo_timeout_s, "use a number of seconds"
        ),
        detect_threshold=get(
            "DETECT_THRESHOLD", _fraction, d.detect_threshold, "use a number above 0, at most 1"
        ),
        nsfw_model=values.get("NSFW_MODEL", "").strip() or d.nsfw_model,
        nsfw_threshold=get(
            "NSFW_THRESHOLD", _fraction, d.nsfw_threshold, "use a number above 0, at most 1"
        ),
        s3_bucket=get(
            "S3_BUCKET",
            _bucket_name,
            d.s3_bucket,
            "use a bucket name: 3 to 63 lowercase letters, digits, dots and hyphens",
        ),
        s3_endpoint_url=get(
            "S3_ENDPOINT_URL",
            lambda raw: _url(("http", "https"))(raw).rstrip("/"),
            d.s3_endpoint_url,
            "use the S3-compatible server's address, such as http://127.0.0.1:9000 (empty: AWS)",
        ),
        s3_region=values.get("S3_REGION", "").strip() or d.s3_region,
        s3_access_key_id=values.get("S3_ACCESS_KEY_ID", "").strip() or d.s3_access_key_id,
        s3_secret_access_key=(
            values.get("S3_SECRET_ACCESS_KEY", "").strip() or d.s3_secret_access_key
        ),
        s3_prefix=get(
            "S3_PREFIX",
            _key_prefix,
            d.s3_prefix,
            "use a folder name such as diffusion-chat/ (letters, digits, - _ . /)",
        ),
        s3_public_base_url=get(
            "S3_PUBLIC_BASE_URL",
            lambda raw: _url(("http", "https"))(raw).rstrip("/"),
            d.s3_public_base_url,
            "use the public (CDN) address of the bucket, such as https://images.example.com",
        ),
        s3_presign_seconds=get(
            "S3_PRESIGN_SECONDS",
            _presign_seconds,
            d.s3_presign_seconds,
            "use a number of seconds from 1 to 604800 (7 days, S3's limit)",
        ),
        llm_timeout_s=get(
            "LLM_TIMEOUT_S", _non_negative_float, d.llm_timeout_s, "use a number of seconds"
        ),
        api_public_url=get(
            "API_PUBLIC_URL",
            lambda raw: _url(("http", "https"))(raw).rstrip("/"),
            d.api_public_url,
            "use the address people open, such as https://chat.example.com",
        ),
        discord_client_id=get(
            "DISCORD_CLIENT_ID",
            _snowflake,
            _application_id(token),
            "use the application id from the Developer Portal (a number)",
        ),
        discord_client_secret=values.get("DISCORD_CLIENT_SECRET", "").strip(),
        web_api_base_url=get(
            "API_BASE_URL"
            if values.get("API_BASE_URL", "").strip()
            else "NEXT_PUBLIC_API_BASE_URL",
            lambda raw: _url(("http", "https"))(raw).rstrip("/"),
            d.web_api_base_url,
            "use the API's address as the browser reaches it, such as https://api.example.com",
        ),
    )
    if problems:
        raise SettingsError("Please fix these settings:\n" + "\n".join(f"- {p}" for p in problems))
    return settings


def _shown(name: str, raw: str) -> str:
    secret = "TOKEN" in name or "SECRET" in name or name in ("SENTRY_DSN", "DATABASE_URL")
    return "<hidden>" if secret else raw


# --- S3 image storage -------------------------------------------------------------------

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PREFIX = re.compile(r"^[A-Za-z0-9._/-]+$")


def _bucket_name(raw: str) -> str:
    if not _BUCKET.match(raw) or ".." in raw:
        raise ValueError(raw)
    return raw


def _key_prefix(raw: str) -> str:
    """``images`` and ``images/`` both mean the folder ``images/``; no leading slash."""
    prefix = raw.strip("/")
    if not _PREFIX.match(prefix) or any(part in ("", ".", "..") for part in prefix.split("/")):
        raise ValueError(raw)
    return prefix + "/"


def _presign_seconds(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= 7 * 24 * 3600:  # SigV4 presigned URLs live at most 7 days
        raise ValueError(raw)
    return value


def _url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        scheme, sep, rest = raw.partition("://")
        if not sep or scheme.lower() not in schemes or not rest:
            raise ValueError(raw)
        return raw

    return parse


def _database_url(raw: str) -> str:
    """A PostgreSQL URL, its scheme in lower case (asyncpg's spelling)."""
    scheme, _, rest = _url(("postgres", "postgresql"))(raw).partition("://")
    return f"{scheme.lower()}://{rest}"


def _snowflake(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError(raw)
    return value


def _snowflake_list(raw: str) -> tuple[int, ...]:
    return tuple(_snowflake(entry.strip()) for entry in raw.split(",") if entry.strip())


_BYTE_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_BYTE_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?$", re.IGNORECASE)


def _byte_size(raw: str) -> int:
    """``8GiB``, ``8G``, ``500MiB``, ``1.5GB`` (binary units either way) or plain bytes."""
    match = _BYTE_SIZE.match(raw.strip())
    if match is None:
        raise ValueError(raw)
    value = int(float(match.group(1)) * _BYTE_UNITS[match.group(2).lower()])
    if value <= 0:
        raise ValueError(raw)
    return value


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError(raw)
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError(raw)
    return value


def _name_list(raw: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in raw.split(",") if name.strip())
    if not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) for name in names):
        raise ValueError(raw)
    return names


def _host_list(raw: str) -> tuple[str, ...]:
    from core.downloads import parse_allowed_host  # only when the setting is used

    hosts = tuple(entry.strip() for entry in raw.split(",") if entry.strip())
    for host in hosts:
        parse_allowed_host(host)  # its ValueError names what is wrong
    return hosts


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not value >= 0:
        raise ValueError(raw)
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0 or value == float("inf"):
        raise ValueError(raw)
    return value


def _application_id(token: str) -> int | None:
    """A bot token starts with its bot's user id in base64: for an application's bot, that
    is the application (OAuth2 client) id."""
    first = token.split(".", 1)[0]
    try:
        return _snowflake(base64.urlsafe_b64decode(first + "=" * (-len(first) % 4)).decode())
    except (ValueError, UnicodeDecodeError):
        return None


def _fraction(raw: str) -> float:
    value = float(raw)
    if not 0 < value <= 1:
        raise ValueError(raw)
    return value


def _origin_list(raw: str) -> tuple[str, ...]:
    origins = tuple(entry.strip().rstrip("/") for entry in raw.split(",") if entry.strip())
    for origin in origins:
        scheme, sep, rest = origin.partition("://")
        if origin != "*" and (not sep or scheme not in ("http", "https") or "/" in rest):
            raise ValueError(origin)
    return origins


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError(raw)
    return value


def _limit(raw: str) -> int | None:
    if raw.lower() in {"unlimited", "none", "off"}:
        return None
    return _non_negative_int(raw)


def _bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(raw)


def _existing_file(raw: str) -> Path:
    path = Path(raw).expanduser()
    if not path.is_file():
        raise ValueError(raw)
    return path


def _choice(*options: str) -> Callable[[str], str]:
    by_lower = {option.lower(): option for option in options}

    def parse(raw: str) -> str:
        try:
            return by_lower[raw.lower()]
        except KeyError:
            raise ValueError(raw) from None

    return parse
