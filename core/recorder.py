"""Keeps a job's durable record as it runs, for front doors that show a job by reading its
record (the HTTP API): running, then done with its images, failed or cancelled. The Discord
adapter does the same in ``bot.delivery`` while it also edits the job's message."""

from __future__ import annotations

from functools import partial

from core.events import JobEvents
from core.feed import JobFeed
from core.service import JobService, store_when_possible
from core.storage.records import Job
from engine.errors import EngineStopped
from engine.types import Cancelled, Done, Failed, Started


async def record_outcome(
    service: JobService, job: Job, feed: JobFeed, events: JobEvents | None = None
) -> None:
    """Follow ``feed`` to the end and write each change to storage (and report it to
    ``events``: the log and the metrics). Storage that refuses a write (a full disk, a locked
    database) is retried with backoff until it takes it: the images already made are kept in
    memory meanwhile, and nothing is generated again."""
    jobs = service.db.jobs
    model = feed.request.model
    report = events or (lambda *args, **kwargs: None)
    try:
        async for item in feed.follow():
            match item.event:
                case Started():
                    await store_when_possible(partial(jobs.mark_running, job.id), job.id)
                    report("started", job, model)
                case Done(result=result):
                    outputs = await service.encode_result(result)
                    await store_when_possible(
                        partial(service.complete, job, outputs, result), job.id
                    )
                    report("done", job, model, result=result)
                case Failed(reason=reason):
                    await store_when_possible(partial(jobs.mark_failed, job.id, reason), job.id)
                    report("failed", job, model, reason=reason)
                case Cancelled():
                    await store_when_possible(
                        partial(jobs.mark_cancelled, job.id, "cancelled by its owner"), job.id
                    )
                    report("cancelled", job, model)
        await store_when_possible(partial(jobs.mark_delivered, job.id), job.id)
    except EngineStopped:
        pass  # shutting down: the job stays queued in storage and resumes at the next start
