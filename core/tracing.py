"""One OpenTelemetry trace per job (OTEL_EXPORTER_OTLP_ENDPOINT): a ``job`` span from the
moment the front door recorded it to its outcome, with ``accept``, ``queue``, ``load``,
``generate`` and ``store and deliver`` inside it, so a slow job can be followed across the
front door, the queue and the GPU.

The stages are laid out when the job ends, from the moments the front doors report and the
engine's own timings (queue wait, model load and generation, measured on the GPU side); the
spans are then exported in one batch. Nothing about a job is kept once it has ended.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from core.storage.records import Job
from engine.types import JobResult

MAX_FOLLOWED = 10_000  # jobs whose acceptance is remembered until they end


def _ns(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1e9)


class JobTracer:
    def __init__(self, service_name: str, processor: SpanProcessor) -> None:
        self._provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self._provider.add_span_processor(processor)
        self._tracer = self._provider.get_tracer("diffusion_chat.jobs")
        self._accepted: dict[str, int] = {}

    @classmethod
    def to_collector(cls, endpoint: str, service_name: str) -> JobTracer:
        """Export over OTLP/HTTP to ``endpoint`` (a collector, e.g. http://127.0.0.1:4318)."""
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces", timeout=5)
        return cls(service_name, BatchSpanProcessor(exporter))

    def accepted(self, job: Job) -> None:
        """The front door has the job recorded and queued."""
        if len(self._accepted) >= MAX_FOLLOWED:
            self._accepted.pop(next(iter(self._accepted)))
        self._accepted[job.id] = time.time_ns()

    def finished(
        self,
        job: Job,
        status: str,
        model: str | None,
        result: JobResult | None = None,
        reason: str | None = None,
    ) -> None:
        """The job's outcome is stored and shown: lay out and export its trace."""
        end = time.time_ns()
        start = min(_ns(job.created_at), end)
        accepted = min(max(self._accepted.pop(job.id, start), start), end)
        attributes: dict[str, Any] = {
            "job.id": job.id,
            "job.status": status,
            "job.kind": job.kind,
            "job.source": job.source,
            "job.images": job.image_count,
        }
        if model:
            attributes["job.model"] = model
        if reason:
            attributes["job.reason"] = reason[:200]
        root = self._tracer.start_span("job", start_time=start, attributes=attributes)
        context = trace.set_span_in_context(root)

        def stage(name: str, begin: int, finish: int, **extra: Any) -> int:
            finish = max(begin, min(finish, end))
            span = self._tracer.start_span(
                name, context=context, start_time=begin, attributes=extra or None
            )
            span.end(end_time=finish)
            return finish

        stage("accept", start, accepted)
        if result is not None:
            t = result.timings
            moment = stage("queue", accepted, accepted + int(t.queued_s * 1e9))
            moment = stage("load", moment, moment + int(t.load_s * 1e9))
            moment = stage(
                "generate",
                moment,
                moment + int(t.generate_s * 1e9),
                **{"gpu.batch_images": len(result.images), "cache.hit": result.from_cache},
            )
            stage("store and deliver", max(moment, accepted + int(t.total_s * 1e9)), end)
        else:
            stage("queue", accepted, end)
        root.end(end_time=end)

    def shutdown(self) -> None:
        self._provider.shutdown()
