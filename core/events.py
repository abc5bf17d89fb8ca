"""One log line per job event, and the metrics and trace that go with it, whichever front
door took the job (a Discord command or button, an HTTP request)."""

from __future__ import annotations

import logging
from typing import Any

from core.logs import job_log
from core.metrics import Metrics
from core.storage.records import Job
from core.tracing import JobTracer
from engine.types import JobResult

log = logging.getLogger("jobs")


class JobEvents:
    def __init__(self, metrics: Metrics | None, tracer: JobTracer | None = None) -> None:
        self.metrics = metrics
        self.tracer = tracer

    def __call__(
        self,
        event: str,
        job: Job,
        model: str | None,
        *,
        result: JobResult | None = None,
        reason: str | None = None,
    ) -> None:
        fields: dict[str, Any] = {}
        if result is not None:
            t = result.timings
            fields = {
                "queued_s": t.queued_s,
                "load_s": t.load_s,
                "generate_s": t.generate_s,
                "total_s": t.total_s,
                "images": len(result.images),
                "cached": result.from_cache,
            }
        if reason is not None:
            fields["reason"] = reason
        job_log(
            log,
            event,
            job_id=job.id,
            user_id=job.user_id,
            guild_id=job.guild_id,
            model=model,
            **fields,
        )
        if self.tracer is not None:
            if event == "queued":
                self.tracer.accepted(job)
            elif event in {"done", "failed", "cancelled"}:
                self.tracer.finished(job, event, model, result, reason)
        if self.metrics is None:
            return
        if event == "queued":
            self.metrics.job_submitted()
        elif event in {"done", "failed", "cancelled"}:
            self.metrics.job_finished(event, job, result=result, reason=reason)
