"""The metrics endpoint and /healthz, scraped over HTTP like Prometheus and Docker do."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from core.metrics import (
    HealthReport,
    Metrics,
    bound_port,
    failure_category,
    start_from_settings,
    start_metrics_server,
)
from engine.engine import EngineStatus

STATUS = EngineStatus(
    queued=3,
    running=1,
    loaded_model="sd-turbo",
    worker_alive=True,
    worker_restarts=0,
    cache_hits=5,
    cache_misses=7,
)


class Server:
    def __init__(self) -> None:
        self.status = STATUS
        self.health = HealthReport(gateway_connected=True, worker_alive=True)
        self.metrics = Metrics(
            lambda: self.status,
            gpu_memory=lambda: [("cuda:0", 1_000, 2_000, 8_000)],
        )
        self.runner: web.AppRunner | None = None
        self.base = ""

    async def get(self, path: str, **headers: str) -> tuple[int, str, str]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.base + path, headers=headers) as response,
        ):
            return response.status, response.headers["Content-Type"], await response.text()


@pytest_asyncio.fixture
async def server() -> AsyncIterator[Server]:
    state = Server()
    state.runner = await start_metrics_server(state.metrics, "127.0.0.1", 0, lambda: state.health)
    state.base = f"http://127.0.0.1:{bound_port(state.runner)}"
    try:
        yield state
    finally:
        await state.runner.cleanup()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series in Prometheus text format."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = "^" + re.escape(name + (f"{{{wanted}}}" if labels else "")) + r" (\S+)$"
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"{name}{labels} not in the scrape"
    return float(match.group(1))


@pytest.mark.asyncio
async def test_metrics_are_served_in_prometheus_text_format(server: Server) -> None:
    status, content_type, text = await server.get("/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=")
    for name in (
        "diffusion_chat_queue_depth",
        "diffusion_chat_jobs_running",
        "diffusion_chat_worker_alive",
        "diffusion_chat_jobs_total",
        "diffusion_chat_generation_seconds",
        "diffusion_chat_steps_per_second",
        "diffusion_chat_images_served_total",
        "diffusion_chat_cache_hits_total",
        "diffusion_chat_failures_total",
        "diffusion_chat_gpu_memory_allocated_bytes",
        "diffusion_chat_gpu_memory_max_allocated_bytes",
    ):
        assert re.search(f"^# TYPE {name} (gauge|counter|histogram)$", text, re.MULTILINE), name
    assert sample(text, "diffusion_chat_queue_depth") == 3
    assert sample(text, "diffusion_chat_cache_hits_total") == 5
    assert sample(text, "diffusion_chat_model_loaded", model="sd-turbo") == 1
    assert sample(text, "diffusion_chat_gpu_memory_allocated_bytes", device="cuda:0") == 1000
    assert sample(text, "diffusion_chat_jobs_total", status="done") == 0
    assert sample(text, "diffusion_chat_failures_total", reason="out_of_memory") == 0


@pytest.mark.asyncio
async def test_values_change_after_recording_jobs(server: Server) -> None:
    metrics = server.metrics
    metrics.job_submitted()
    metrics.job_submitted()
    metrics.job_done("sd-turbo", generate_s=0.5, steps=2, images=4)
    metrics.job_done("sd-turbo", generate_s=0.0, steps=2, images=4, from_cache=True)
    label = metrics.job_failed("This request is too large for this GPU. Try fewer images.")
    metrics.job_cancelled()
    metrics.image_served(2)
    server.status = replace(STATUS, queued=0, cache_hits=6)

    _, _, text = await server.get("/metrics")
    assert label == "out_of_memory"
    assert sample(text, "diffusion_chat_jobs_total", status="submitted") == 2
    assert sample(text, "diffusion_chat_jobs_total", status="done") == 2
    assert sample(text, "diffusion_chat_jobs_total", status="failed") == 1
    assert sample(text, "diffusion_chat_jobs_total", status="cancelled") == 1
    assert sample(text, "diffusion_chat_failures_total", reason="out_of_memory") == 1
    assert sample(text, "diffusion_chat_images_served_total") == 10
    # The cached result took no GPU time, so only one observation.
    assert sample(text, "diffusion_chat_generation_seconds_count", model="sd-turbo") == 1
    assert sample(text, "diffusion_chat_generation_seconds_sum", model="sd-turbo") == 0.5
    assert sample(text, "diffusion_chat_steps_per_second", model="sd-turbo") == 4.0
    assert sample(text, "diffusion_chat_queue_depth") == 0
    assert sample(text, "diffusion_chat_cache_hits_total") == 6


@pytest.mark.asyncio
async def test_openmetrics_is_served_when_asked_for(server: Server) -> None:
    _, content_type, text = await server.get(
        "/metrics", Accept="application/openmetrics-text; version=1.0.0"
    )
    assert content_type.startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("gateway", "worker", "code", "word"),
    [(True, True, 200, "ok"), (False, True, 503, "degraded"), (True, False, 503, "degraded")],
)
async def test_healthz(server: Server, gateway: bool, worker: bool, code: int, word: str) -> None:
    server.health = HealthReport(gateway_connected=gateway, worker_alive=worker)
    status, content_type, text = await server.get("/healthz")
    assert status == code
    assert content_type.startswith("application/json")
    assert json.loads(text) == {
        "gateway_connected": gateway,
        "worker_alive": worker,
        "status": word,
    }


@pytest.mark.asyncio
async def test_a_failing_health_callback_is_unhealthy_not_a_crash() -> None:
    def broken() -> HealthReport:
        raise RuntimeError("boom")

    runner = await start_metrics_server(Metrics(), "127.0.0.1", 0, broken)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{bound_port(runner)}/healthz") as response,
        ):
            assert response.status == 503
            assert (await response.json())["status"] == "error"
    finally:
        await runner.cleanup()


@pytest.mark.asyncio
async def test_no_engine_and_no_gpu_still_scrape() -> None:
    def failing_status() -> EngineStatus:
        raise RuntimeError("engine not started")

    for status_source in (None, failing_status):
        metrics = Metrics(status_source, gpu_memory=list)
        body, _ = metrics.render()
        text = body.decode()
        assert "diffusion_chat_queue_depth" in text  # described, with no sample
        assert sample(text, "diffusion_chat_gpu_memory_allocated_bytes", device="none") == 0


@pytest.mark.asyncio
async def test_port_zero_in_settings_means_off() -> None:
    from core.config import load_settings

    settings = load_settings({}, env_file=None, require_token=False)
    assert settings.metrics_port == 0
    assert await start_from_settings(settings, Metrics(), lambda: HealthReport(True, True)) is None


def test_two_instances_do_not_share_a_registry() -> None:
    first, second = Metrics(), Metrics()
    first.job_submitted()
    assert "submitted" in first.render()[0].decode()
    assert first.registry is not second.registry


@pytest.mark.parametrize(
    ("reason", "category"),
    [
        ("out_of_memory", "out_of_memory"),
        ("The model 'sdxl' could not be loaded.", "model_load"),
        ("This job was interrupted. Please try again.", "interrupted"),
        ("Something went wrong while generating this image.", "error"),
        (TimeoutError("slow"), "timeout"),
        ("a long free text nobody planned for", "error"),
    ],
)
def test_failure_reasons_are_a_closed_set(reason: str | BaseException, category: str) -> None:
    assert failure_category(reason) == category


def test_job_finished_takes_the_engine_result() -> None:
    from engine.types import JobResult, Timings

    class Request:
        model = "sdxl"
        steps = 30

    result = JobResult(
        job_id="j",
        request=Request(),  # type: ignore[arg-type]
        images=(object(), object()),  # type: ignore[arg-type]
        timings=Timings(generate_s=6.0),
    )
    metrics = Metrics()
    metrics.job_finished("done", object(), result=result)
    metrics.job_finished("failed", object(), reason="The model 'x' could not be loaded.")
    metrics.job_finished("cancelled", object())
    text = metrics.render()[0].decode()
    assert sample(text, "diffusion_chat_steps_per_second", model="sdxl") == 5.0
    assert sample(text, "diffusion_chat_images_served_total") == 2
    assert sample(text, "diffusion_chat_failures_total", reason="model_load") == 1
    assert sample(text, "diffusion_chat_jobs_total", status="cancelled") == 1
