"""Prometheus metrics and a health endpoint, served by a small aiohttp app.

``Metrics`` owns a private ``CollectorRegistry`` (never the global one, so tests and several
bots in one process do not collide). The bot calls its ``job_*`` hooks as jobs move; values
that the engine already knows (queue depth, cache hits, worker state) and GPU memory are read
at scrape time by a collector, so they are never stale and cost nothing between scrapes.

``start_metrics_server`` serves ``GET /metrics`` and ``GET /healthz`` on the bot's event
loop: the engine's state is loop-thread state, so scraping there is what keeps it consistent.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from core.config import Settings
    from engine.engine import EngineStatus
    from engine.types import JobResult

log = logging.getLogger(__name__)

PREFIX = "diffusion_chat"

JOB_STATUSES = ("submitted", "rejected", "done", "failed", "cancelled")

# Failure reasons are a closed set: a label per free-text message would grow without bound.
FAILURE_REASONS = (
    "out_of_memory",
    "model_load",
    "model_not_found",
    "invalid_request",
    "interrupted",
    "timeout",
    "discord_api",
    "storage",
    "error",
)
_REASON_HINTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("out_of_memory", ("out of memory", "too large for this gpu", "outofmemory")),
    ("model_not_found", ("unknown model", "not in the registry", "modelnotfound")),
    ("model_load", ("could not be loaded", "modelload", "download")),
    ("interrupted", ("interrupted",)),
    ("timeout", ("timed out", "timeout")),
    ("discord_api", ("discord", "httpexception", "forbidden", "notfound")),
    ("storage", ("database", "sqlite", "storage")),
    ("invalid_request", ("validation", "invalid", "must be", "too long")),
)

# Generation takes from under a second (turbo models) to minutes (SDXL on a small GPU).
GENERATION_BUCKETS = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 60.0, 120.0, 300.0)


def failure_category(reason: str | BaseException) -> str:
    """Map a reason (a category, a user-facing message or an exception) to a short label."""
    if isinstance(reason, BaseException):
        text = f"{type(reason).__name__} {reason}".lower()
    else:
        text = reason.strip().lower()
        if text in FAILURE_REASONS:
            return text
    for category, hints in _REASON_HINTS:
        if any(hint in text for hint in hints):
            return category
    return "error"


@dataclass(frozen=True, slots=True)
class HealthReport:
    gateway_connected: bool
    worker_alive: bool

    @property
    def ok(self) -> bool:
        return self.gateway_connected and self.worker_alive

    def as_json(self) -> dict[str, Any]:
        return {
            "gateway_connected": self.gateway_connected,
            "worker_alive": self.worker_alive,
            "status": "ok" if self.ok else "degraded",
        }


GpuMemory = list[tuple[str, int, int, int]]  # (device, allocated, max allocated, total) bytes


def torch_gpu_memory() -> GpuMemory:
    """Memory of each CUDA device, or nothing when torch or CUDA is absent.

    Only a torch the process already imported is used: importing it here would block the
    event loop for seconds, and a process that never imported it holds no GPU memory.
    """
    torch: Any = sys.modules.get("torch")
    if torch is None:
        return []
    try:
        if not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return []
        return [
            (
                f"cuda:{index}",
                int(torch.cuda.memory_allocated(index)),
                int(torch.cuda.max_memory_allocated(index)),
                int(torch.cuda.get_device_properties(index).total_memory),
            )
            for index in range(torch.cuda.device_count())
        ]
    except Exception:  # a scrape must never fail because of the GPU
        log.debug("could not read GPU memory", exc_info=True)
        return []


class _LiveCollector(Collector):
    """Reads the engine's status and GPU memory when Prometheus scrapes."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        # Registering calls collect() when describe() is missing; the engine may not exist
        # yet then, so describe nothing and let every scrape collect.
        return []

    def collect(self) -> Iterator[Metric]:
        status = self._metrics.engine_status()
        queue = GaugeMetricFamily(f"{PREFIX}_queue_depth", "Jobs waiting in the engine's queue.")
        running = GaugeMetricFamily(f"{PREFIX}_jobs_running", "Jobs the GPU worker is running.")
        alive = GaugeMetricFamily(f"{PREFIX}_worker_alive", "1 while the GPU worker task runs.")
        restarts = CounterMetricFamily(
            f"{PREFIX}_worker_restarts", "Times the GPU worker died and was restarted."
        )
        hits = CounterMetricFamily(
            f"{PREFIX}_cache_hits", "Jobs answered from the engine's result cache."
        )
        misses = CounterMetricFamily(
            f"{PREFIX}_cache_misses", "Cacheable jobs the engine had to generate."
        )
        loaded = GaugeMetricFamily(
            f"{PREFIX}_model_loaded", "1 for the model loaded on the GPU.", labels=["model"]
        )
        if status is not None:
            queue.add_metric([], status.queued)
            running.add_metric([], status.running)
            alive.add_metric([], 1 if status.worker_alive else 0)
            restarts.add_metric([], status.worker_restarts)
            hits.add_metric([], status.cache_hits)
            misses.add_metric([], status.cache_misses)
            if status.loaded_model:
                loaded.add_metric([status.loaded_model], 1)
        yield from (queue, running, alive, restarts, hits, misses, loaded)
        gateway = GaugeMetricFamily(
            f"{PREFIX}_gateway_connected",
            "1 while the Discord gateway is connected (and when Discord is not used).",
        )
        gateway.add_metric([], 1 if self._metrics.gateway_connected() else 0)
        yield gateway

        allocated = GaugeMetricFamily(
            f"{PREFIX}_gpu_memory_allocated_bytes",
            "GPU memory held by tensors (torch.cuda.memory_allocated); 0 without CUDA.",
            labels=["device"],
        )
        peak = GaugeMetricFamily(
            f"{PREFIX}_gpu_memory_max_allocated_bytes",
            "Peak GPU memory held by tensors since start (torch.cuda.max_memory_allocated).",
            labels=["device"],
        )
        total = GaugeMetricFamily(
            f"{PREFIX}_gpu_memory_total_bytes", "The GPU's memory.", labels=["device"]
        )
        devices = self._metrics.gpu_memory()
        if not devices:
            # A constant series, so dashboards and alerts see 0 rather than "no data".
            devices = [("none", 0, 0, 0)]
        for device, used, most, size in devices:
            allocated.add_metric([device], used)
            peak.add_metric([device], most)
            total.add_metric([device], size)
        yield from (allocated, peak, total)


class Metrics:
    """Every metric the bot exposes. Hooks are cheap and safe to call from the event loop."""

    def __init__(
        self,
        engine_status: Callable[[], EngineStatus] | None = None,
        *,
        gpu_memory: Callable[[], GpuMemory] = torch_gpu_memory,
    ) -> None:
        self.registry = CollectorRegistry()
        self._engine_status = engine_status
        self.gpu_memory = gpu_memory
        # Set by the composition root once the Discord client exists.
        self.gateway_connected: Callable[[], bool] = lambda: True
        self.jobs = Counter(
            f"{PREFIX}_jobs",
            "Jobs by status: submitted (accepted), rejected (quota, queue full, bad input), "
            "done, failed, cancelled.",
            ["status"],
            registry=self.registry,
        )
        self.queue_wait_seconds = Histogram(
            f"{PREFIX}_queue_wait_seconds",
            "Time a finished job waited in the queue before the GPU took it.",
            buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800),
            registry=self.registry,
        )
        self.generation_seconds = Histogram(
            f"{PREFIX}_generation_seconds",
            "Seconds the pipeline ran for a finished job (model load and queueing excluded).",
            ["model"],
            buckets=GENERATION_BUCKETS,
            registry=self.registry,
        )
        self.steps_per_second = Gauge(
            f"{PREFIX}_steps_per_second",
            "Denoising steps per second (it/s) of the last finished job, by model.",
            ["model"],
            registry=self.registry,
        )
        self.images_served = Counter(
            f"{PREFIX}_images_served",
            "Images delivered to Discord users (results, upscales, variations, downloads).",
            registry=self.registry,
        )
        self.failures = Counter(
            f"{PREFIX}_failures",
            "Failed jobs by reason (a short category; see docs/operations.md).",
            ["reason"],
            registry=self.registry,
        )
        # Zero-valued series from the start: rate() over a counter that appears late
        # misses its first increment.
        for status in JOB_STATUSES:
            self.jobs.labels(status=status)
        for reason in FAILURE_REASONS:
            self.failures.labels(reason=reason)
        self.registry.register(_LiveCollector(self))
        # process_resident_memory_bytes and friends: RAM matters with CPU_OFFLOAD.
        ProcessCollector(registry=self.registry)

    # --- wiring ---------------------------------------------------------------------------

    def bind_engine(self, engine_status: Callable[[], EngineStatus]) -> None:
        """Read queue depth, cache hits and worker state from ``engine.status``."""
        self._engine_status = engine_status

    def engine_status(self) -> EngineStatus | None:
        if self._engine_status is None:
            return None
        try:
            return self._engine_status()
        except Exception:  # a scrape must report what it can
            log.warning("could not read the engine status for metrics", exc_info=True)
            return None

    # --- hooks ----------------------------------------------------------------------------

    def job_submitted(self) -> None:
        """A job was accepted (written to storage and handed to the engine)."""
        self.jobs.labels(status="submitted").inc()

    def job_rejected(self) -> None:
        """A request was refused before it became a job (quota, queue full, banned word)."""
        self.jobs.labels(status="rejected").inc()

    def job_done(
        self,
        model: str,
        *,
        generate_s: float,
        steps: int,
        images: int,
        from_cache: bool = False,
    ) -> None:
        """A job finished with ``images`` images delivered.

        Cached results count as done and served but add no timing: they took no GPU time.
        """
        self.jobs.labels(status="done").inc()
        self.images_served.inc(max(0, images))
        if from_cache or not math.isfinite(generate_s) or generate_s <= 0:
            return
        self.generation_seconds.labels(model=model).observe(generate_s)
        if steps > 0:
            self.steps_per_second.labels(model=model).set(steps / generate_s)

    def job_failed(self, reason: str | BaseException) -> str:
        """A job failed; ``reason`` is a category, a message or an exception. Returns the label."""
        category = failure_category(reason)
        self.jobs.labels(status="failed").inc()
        self.failures.labels(reason=category).inc()
        return category

    def job_cancelled(self) -> None:
        self.jobs.labels(status="cancelled").inc()

    def job_finished(
        self,
        status: str,
        job: object = None,
        *,
        result: JobResult | None = None,
        reason: str | BaseException | None = None,
        **_: object,
    ) -> None:
        """One hook for a job's end: ``status`` is done, failed or cancelled.

        ``result`` (the engine's JobResult) is needed for "done"; ``reason`` for "failed".
        ``job`` (the stored record) is accepted for the caller's convenience and not used:
        the engine's result carries the model and the timings.
        """
        if status == "done" and result is not None:
            if not result.from_cache and math.isfinite(result.timings.queued_s):
                self.queue_wait_seconds.observe(max(0.0, result.timings.queued_s))
            self.job_done(
                result.request.model,
                generate_s=result.timings.generate_s,
                steps=result.request.steps,
                images=len(result.images),
                from_cache=result.from_cache,
            )
        elif status == "done":
            self.jobs.labels(status="done").inc()
        elif status == "failed":
            self.job_failed(reason if reason is not None else "error")
        elif status == "cancelled":
            self.job_cancelled()
        else:
            log.warning("unknown job status %r for metrics", status)

    def image_served(self, count: int = 1) -> None:
        """Images sent outside a job's result (the ℹ button's full-resolution files)."""
        self.images_served.inc(max(0, count))

    # --- exposition -----------------------------------------------------------------------

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition body and its content type, honouring an OpenMetrics ``Accept``."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


HealthCheck = Callable[[], HealthReport]


def make_app(metrics: Metrics, health: HealthCheck) -> web.Application:
    async def serve_metrics(request: web.Request) -> web.Response:
        body, content_type = metrics.render(request.headers.get("Accept"))
        # Set the header directly: aiohttp's content_type= refuses parameters like version=.
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def serve_health(request: web.Request) -> web.Response:
        try:
            report = health()
        except Exception:
            log.warning("the health check failed", exc_info=True)
            body: dict[str, Any] = {
                "gateway_connected": False,
                "worker_alive": False,
                "status": "error",
            }
            return web.json_response(body, status=503)
        return web.json_response(report.as_json(), status=200 if report.ok else 503)

    app = web.Application()
    app.router.add_get("/metrics", serve_metrics)
    app.router.add_get("/healthz", serve_health)
    return app


async def start_metrics_server(
    metrics: Metrics, host: str, port: int, health: HealthCheck
) -> web.AppRunner:
    """Serve /metrics and /healthz on ``host:port`` (port 0: any free port; see
    ``bound_port``). Stop it with ``await runner.cleanup()``."""
    runner = web.AppRunner(make_app(metrics, health), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    log.info("metrics on http://%s:%d/metrics and /healthz", host, bound_port(runner))
    return runner


async def start_from_settings(
    settings: Settings, metrics: Metrics, health: HealthCheck
) -> web.AppRunner | None:
    """Start the server when ``METRICS_PORT`` is set; ``None`` when it is 0 (off)."""
    if settings.metrics_port == 0:
        return None
    return await start_metrics_server(metrics, settings.metrics_host, settings.metrics_port, health)


def bound_port(runner: web.AppRunner) -> int:
    """The port the server listens on (useful after asking for port 0)."""
    address = runner.addresses[0]
    return int(address[1])
