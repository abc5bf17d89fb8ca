"""The composition root: settings, logging, storage, the engine, and the front doors that are
configured (the Discord bot, the HTTP API), wired in one place and run in one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from dotenv import load_dotenv

from api.accounts import RateLimiter
from api.app import create_app
from api.context import ApiContext
from api.server import ApiServer
from app.observability import start_error_tracking
from bot.client import DiffusionBot, point_discord_at
from core.analysis import Analyzer
from core.config import Settings, SettingsError, load_settings
from core.custom_models import CustomModels
from core.downloads import allowed_hosts
from core.errors import StartupError
from core.events import JobEvents
from core.image_storage import describe_image_store, open_image_store
from core.logs import configure_logging, register_secret
from core.metrics import HealthReport, Metrics, start_metrics_server
from core.refine import Refiner
from core.service import JobService
from core.storage.database import Database
from core.storage.errors import ImageStoreUnavailable
from core.storage.files import ImageStore
from core.storage.records import QuotaPolicy
from core.storage_failures import STARTUP_STORAGE_ERRORS, explain_storage_failure
from core.tracing import JobTracer
from engine.backend import DEFAULT_MAX_INPUT_PIXELS, DiffusersBackend
from engine.detect import Detector, LocalDetector, RemoteDetector
from engine.engine import Engine, EngineSettings
from engine.errors import EngineError
from engine.loader import LoaderOptions, ModelManager
from engine.registry import ModelRegistry, ModelSpec
from engine.replicas import RayDevice, RayOptions, ReplicaConfig, replica_count
from engine.safety import NsfwClassifier

log = logging.getLogger("diffusion_chat")


async def build_engine(settings: Settings, registry: ModelRegistry) -> Engine:
    """The engine on this process's device, or on Ray replicas with ENGINE=ray."""
    budget = settings.model_memory_budget_gb
    loader = LoaderOptions(
        device=None if settings.device == "auto" else settings.device,
        dtype=None if settings.dtype == "auto" else settings.dtype,
        channels_last=settings.channels_last,
        torch_compile=settings.torch_compile,
        compile_mode=None if settings.compile_mode == "default" else settings.compile_mode,
        compile_cache_dir=settings.compile_cache,
        cuda_graphs={"auto": None, "true": True, "false": False}[settings.cuda_graphs],
        fp8=settings.unet_fp8,
        warmup_batches=(1, settings.max_batch_images) if settings.max_batch_images else None,
        fuse_qkv=settings.fuse_qkv,
        vae_tiling=settings.vae_tiling,
        vae_slicing=settings.vae_slicing,
        cpu_offload=settings.cpu_offload,
        memory_budget_bytes=int(budget * 2**30) if budget else None,
    )
    engine_settings = EngineSettings(
        max_queued=settings.max_queued,
        max_queued_per_user=settings.max_queued_per_user,
        max_batch_images=settings.max_batch_images,
        affinity_max_wait_s=settings.affinity_max_wait_s,
        cache_entries=settings.cache_entries,
        cache_bytes=settings.cache_mb * 2**20,
    )
    if settings.engine != "ray":
        return Engine(
            DiffusersBackend(registry, ModelManager(loader)),
            engine_settings,
            image_check=build_image_check(settings),
        )
    # Here the backend only resolves requests (no weights); the replicas run them.
    options = RayOptions(
        address=settings.ray_address,
        replicas=settings.ray_replicas,
        gpus_per_replica=settings.ray_gpus_per_replica,
        cpus_per_replica=settings.ray_cpus_per_replica,
        namespace=settings.ray_namespace,
        env={name: os.environ[name] for name in settings.ray_forward_env if name in os.environ},
    )
    config = ReplicaConfig(
        registry=registry,
        loader=loader,
        nsfw_model=settings.nsfw_model,
        torch_threads=settings.ray_torch_threads,
    )
    count = await asyncio.to_thread(replica_count, options)
    log.info("engine: %d Ray replica(s) at %s", count, settings.ray_address or "this machine")

    def model_spec(name: str) -> ModelSpec | None:
        return registry.get(name) if name in registry else None

    devices = [RayDevice(index, config, options, model_spec) for index in range(count)]
    backend = DiffusersBackend(registry, ModelManager(loader))
    return Engine(backend, engine_settings, devices=devices)


def build_image_check(settings: Settings) -> NsfwClassifier | None:
    """NSFW_MODEL on the engine's device, or none when it is "off"."""
    if settings.nsfw_model.lower() == "off":
        return None
    return NsfwClassifier(
        settings.nsfw_model, device=None if settings.device == "auto" else settings.device
    )


def build_analyzer(settings: Settings, images: ImageStore) -> Analyzer:
    """A YOLO service when YOLO_SERVICE_URL is set, else DETECTOR_MODEL (loaded on first use;
    "off": none)."""
    detector: Detector | None
    if settings.yolo_service_url:
        detector = RemoteDetector(settings.yolo_service_url, timeout_s=settings.yolo_timeout_s)
    elif settings.detector_model.lower() == "off":
        detector = None
    else:
        detector = LocalDetector(
            settings.detector_model, device=None if settings.device == "auto" else settings.device
        )
    return Analyzer(
        detector,
        images,
        max_pixels=DEFAULT_MAX_INPUT_PIXELS,
        default_threshold=settings.detect_threshold,
    )


async def run(settings: Settings) -> None:
    registry = ModelRegistry.load(settings.models_file, default_name=settings.default_model)
    try:
        images = await open_image_store(settings)
    except ImageStoreUnavailable as error:
        raise StartupError(str(error)) from None
    if settings.s3_bucket:
        log.info("images: %s", describe_image_store(settings))
    try:
        db = await Database.open(
            settings.database,  # DATABASE_URL (PostgreSQL), else the SQLite file in DATA_DIR
            images=images,
            default_policy=QuotaPolicy(
                daily_images=settings.default_daily_images,
                concurrent_jobs=settings.default_concurrent_jobs,
            ),
        )
    except STARTUP_STORAGE_ERRORS as error:
        raise StartupError(explain_storage_failure(error, settings.data_dir)) from None
    # The registry is the TOML file's models plus those the owners added (in the database).
    custom_models = CustomModels(
        db,
        registry,
        models_dir=settings.custom_models_dir,
        max_bytes=settings.model_max_bytes,
        test_hosts=allowed_hosts(settings.link_test_hosts),
    )
    restored = await custom_models.restore()
    if restored:
        log.info("custom models offered: %s", ", ".join(restored))
    engine = await build_engine(settings, registry)
    refiner = Refiner(
        settings.llm_base_url,
        model=settings.llm_model,
        api_key=settings.llm_api_key,
        timeout_s=settings.llm_timeout_s,
    )
    service = JobService(
        db,
        images,
        engine,
        registry,
        preview_every=settings.preview_every,
        refiner=refiner,
        analyzer=build_analyzer(settings, images),
        nsfw_threshold=settings.nsfw_threshold,
        custom_models=custom_models,
    )
    serve_metrics = settings.metrics_port or settings.api_port  # the API serves /metrics too
    metrics = Metrics(engine_status=engine.status) if serve_metrics else None
    tracer = (
        JobTracer.to_collector(settings.otel_endpoint, settings.otel_service_name)
        if settings.otel_endpoint
        else None
    )
    await engine.start()
    doors = FrontDoors()
    try:
        if settings.discord_token:
            point_discord_at(settings.discord_api_base_url, settings.discord_gateway_url)
            doors.bot = DiffusionBot(settings, service, registry, metrics=metrics, tracer=tracer)
            if metrics is not None:
                bot = doors.bot
                metrics.gateway_connected = lambda: bot.gateway_connected
        if settings.api_port:
            context = ApiContext(
                service,
                registry,
                settings,
                RateLimiter(settings.api_requests_per_minute),
                JobEvents(metrics, tracer),
                is_member=None if doors.bot is None else doors.bot.is_member,
            )
            doors.api_context = context
            doors.api = ApiServer(create_app(context), settings.api_host, settings.api_port)
            try:
                await doors.api.start()
            except OSError as error:
                raise StartupError(
                    f"API_PORT {settings.api_port} on {settings.api_host} cannot be used "
                    f"({error.strerror}): is another program using it? Pick another port."
                ) from None
            await context.resume()
            log.info("HTTP API on http://%s:%d/api/docs", settings.api_host, doors.api.port)
        if metrics is not None and settings.metrics_port:
            doors.metrics = await start_metrics_server(
                metrics,
                settings.metrics_host,
                settings.metrics_port,
                health=lambda: HealthReport(
                    gateway_connected=doors.bot.gateway_connected if doors.bot else True,
                    worker_alive=engine.status().worker_alive,
                ),
            )
        await doors.run_until_stopped(settings.discord_token)
    finally:
        await engine.stop()  # first: every follower sees the jobs stop, still unfinished
        await doors.close()
        await db.close()
        if tracer is not None:
            await asyncio.to_thread(tracer.shutdown)  # sends the last traces


class FrontDoors:
    """The Discord client and the HTTP API, run side by side until a signal or a failure."""

    def __init__(self) -> None:
        self.bot: DiffusionBot | None = None
        self.api: ApiServer | None = None
        self.api_context: ApiContext | None = None
        self.metrics: Any = None
        self._stop = asyncio.Event()

    async def run_until_stopped(self, token: str) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signum, self._stop.set)
        running: list[asyncio.Task[Any]] = [asyncio.create_task(self._stop.wait(), name="stop")]
        if self.bot is not None:
            running.append(asyncio.create_task(self.bot.serve(token), name="discord"))
        if self.api is not None and self.api.task is not None:
            running.append(self.api.task)
        done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        running[0].cancel()

    async def close(self) -> None:
        if self.bot is not None and not self.bot.is_closed():
            await self.bot.close()
        if self.api is not None:
            await self.api.stop()
        if self.api_context is not None:
            await self.api_context.close()
        if self.metrics is not None:
            await self.metrics.cleanup()


def main(env_file: Path | None = Path(".env")) -> int:
    """Start what is configured. ``env_file=None``: the caller already loaded its settings."""
    if env_file is not None:
        # Settings for libraries too (HF_HOME, CUDA_VISIBLE_DEVICES...) may live in .env.
        load_dotenv(env_file, override=False)
    try:
        settings = load_settings(env_file=None)
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2
    register_secret(settings.discord_token)
    register_secret(settings.llm_api_key)
    register_secret(settings.discord_client_secret)
    register_secret(settings.s3_secret_access_key)
    configure_logging(settings.log_level, settings.log_format)
    if start_error_tracking(settings):
        log.info("unexpected errors are sent to Sentry (%s)", settings.sentry_environment)
    try:
        asyncio.run(run(settings))
    except StartupError as error:
        log.error("could not start: %s", error)
        return 1
    except (EngineError, OSError) as error:
        log.error("could not start: %s", error)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
