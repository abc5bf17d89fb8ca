"""Error tracking and traces (issue 22): a local HTTP server standing in for Sentry receives
the event of an unexpected error, tagged with the reference users see and without token or
prompt; an in-memory span exporter sees one trace per job with its stages."""

from __future__ import annotations

import gzip
import json
import logging
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import sentry_sdk
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.observability import scrubber, start_error_tracking
from core.config import Settings
from core.events import JobEvents
from core.storage import Database, NewJob, QuotaPolicy
from core.tracing import JobTracer
from engine.types import JobResult, Timings

TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GhIjKl.abcdefghijklmnopqrstuvwxyz012345"
API_KEY = "dc_" + "k" * 40
PROMPT = "a secret castle under the sea"


class FakeSentry(BaseHTTPRequestHandler):
    received: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        encoding = self.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        FakeSentry.received.append(body)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_sentry() -> Iterator[int]:
    FakeSentry.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeSentry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        sentry_sdk.init()  # off again for the other tests


def test_an_unexpected_error_reaches_sentry_with_its_reference_and_no_secrets(
    fake_sentry: int,
) -> None:
    settings = Settings(
        discord_token=TOKEN, sentry_dsn=f"http://publickey@127.0.0.1:{fake_sentry}/42"
    )
    assert start_error_tracking(settings)
    try:
        raise RuntimeError(f"prompt={PROMPT!r} failed with {TOKEN} and Bearer {API_KEY}")
    except RuntimeError as error:
        logging.getLogger("bot").error(
            "unexpected error (ref %s)", "0badc0de", exc_info=error, extra={"incident": "0badc0de"}
        )
    sentry_sdk.flush(timeout=10)
    assert FakeSentry.received, "Sentry received nothing"
    sent = b"\n".join(FakeSentry.received).decode("utf-8", "replace")
    items = [json.loads(line) for line in sent.splitlines() if line.startswith("{")]
    events = [item for item in items if item.get("level") == "error"]
    assert events and events[0]["tags"]["incident"] == "0badc0de"
    assert TOKEN not in sent and API_KEY not in sent and "secret castle" not in sent
    assert "[Filtered]" in sent


def test_prompts_go_only_when_the_operator_opts_in() -> None:
    event = {"extra": {"prompt": PROMPT}, "message": f"job prompt={PROMPT!r} with {API_KEY}"}
    private = scrubber(False)(dict(event), {})
    assert PROMPT not in json.dumps(private) and API_KEY not in json.dumps(private)
    shared = scrubber(True)(dict(event), {})
    assert shared["extra"]["prompt"] == PROMPT and API_KEY not in json.dumps(shared)


@pytest.mark.asyncio
async def test_one_trace_per_job_with_its_stages(tmp_path: Path) -> None:
    exported = InMemorySpanExporter()
    tracer = JobTracer("diffusion-chat-test", SimpleSpanProcessor(exported))
    events = JobEvents(None, tracer)
    async with Database.open(tmp_path / "db.sqlite3") as db:
        jobs = [
            await db.create_job(
                NewJob(user_id=1, kind="txt2img", request="{}", prompt=PROMPT, image_count=1),
                QuotaPolicy.unlimited(),
            )
            for _ in range(2)
        ]
    done, failed = jobs
    for job in jobs:
        events("queued", job, "tiny")
    result = JobResult(
        job_id=done.id,
        request=None,  # type: ignore[arg-type]  (the trace reads only timings and images)
        images=(),
        timings=Timings(queued_s=0.2, load_s=0.1, generate_s=0.5, total_s=0.8),
    )
    events("done", done, "tiny", result=result)
    events("failed", failed, "tiny", reason="CUDA out of memory")
    spans = exported.get_finished_spans()
    traces: dict[int, list[str]] = {}
    for span in spans:
        traces.setdefault(span.context.trace_id, []).append(span.name)
    assert len(traces) == 2  # one per job
    by_job = {
        span.attributes["job.id"]: span  # type: ignore[index]
        for span in spans
        if span.name == "job"
    }
    done_trace = traces[by_job[done.id].context.trace_id]
    assert sorted(done_trace) == sorted(
        ["job", "accept", "queue", "load", "generate", "store and deliver"]
    )
    assert sorted(traces[by_job[failed.id].context.trace_id]) == ["accept", "job", "queue"]
    assert by_job[failed.id].attributes["job.reason"] == "CUDA out of memory"  # type: ignore[index]
    stages = {
        span.name: span
        for span in spans
        if span.context.trace_id == by_job[done.id].context.trace_id
    }
    assert stages["queue"].end_time <= stages["load"].start_time <= stages["generate"].start_time  # type: ignore[operator]
    assert all(span.parent is not None for name, span in stages.items() if name != "job")
    assert PROMPT not in json.dumps([dict(span.attributes or {}) for span in spans])
    tracer.shutdown()
