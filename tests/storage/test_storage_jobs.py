"""Jobs: creation, life cycle, images, resume after a crash, history, stats, hostile text."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
from pathlib import Path

import pytest
from storage_helpers import (
    START,
    both_backends,  # noqa: F401  (the fixture "backend": SQLite, PostgreSQL)
    job_spec,
    make_png,
)

from core.storage import (
    Database,
    GeneratedImage,
    InvalidInput,
    InvalidText,
    InvalidTransition,
    JobNotFound,
    JobStatus,
    LocalImageStore,
    ManualClock,
    QuotaPolicy,
)

FREE = QuotaPolicy.unlimited()


@pytest.mark.asyncio
async def test_create_and_get(db: Database, clock: ManualClock) -> None:
    expires = START + dt.timedelta(minutes=15)
    job = await db.create_job(
        job_spec(
            user_id=7,
            guild_id=100,
            channel_id=200,
            prompt="a red fox",
            image_count=4,
            private=True,
            interaction_token="tok-123",
            token_expires_at=expires,
        ),
        FREE,
    )
    assert re.fullmatch(r"[A-Za-z0-9_-]{12}", job.id)
    assert job.status is JobStatus.QUEUED and job.attempts == 1
    assert job.created_at == START and job.started_at is None and job.finished_at is None
    assert (job.user_id, job.guild_id, job.channel_id, job.message_id) == (7, 100, 200, None)
    assert job.private and job.image_count == 4 and job.prompt == "a red fox"
    assert job.interaction_token == "tok-123" and job.token_expires_at == expires
    assert "tok-123" not in repr(job)  # the token never lands in logs
    assert job.token_usable(START) and not job.token_usable(expires)
    assert await db.jobs.get(job.id) == job
    assert await db.jobs.find("nope") is None
    with pytest.raises(JobNotFound):
        await db.jobs.get("nope")
    assert (await db.users.get(7)) is not None
    assert (await db.guilds.get(100)) is not None


@pytest.mark.asyncio
async def test_ids_are_unique_and_fit_a_custom_id(db: Database) -> None:
    ids = {(await db.create_job(job_spec(), FREE)).id for _ in range(50)}
    assert len(ids) == 50
    assert all(len(f"dc1:upscale:{job_id}:3") <= 100 for job_id in ids)


@pytest.mark.asyncio
async def test_direct_message_jobs(db: Database) -> None:
    job = await db.create_job(job_spec(guild_id=None), QuotaPolicy(5, 1))
    assert job.guild_id is None
    assert (await db.quotas.usage(None, job.user_id)).used == 1


@pytest.mark.asyncio
async def test_set_message_and_interaction(db: Database) -> None:
    job = await db.create_job(job_spec(), FREE)
    job = await db.jobs.set_message(job.id, message_id=999)
    assert (job.message_id, job.channel_id) == (999, 200)
    job = await db.jobs.set_message(job.id, message_id=1000, channel_id=201)
    assert (job.message_id, job.channel_id) == (1000, 201)
    later = START + dt.timedelta(hours=1)
    job = await db.jobs.set_interaction(job.id, "new-token", later)
    assert job.interaction_token == "new-token" and job.token_expires_at == later
    with pytest.raises(JobNotFound):
        await db.jobs.set_message("missing", message_id=1)
    job = await db.jobs.set_own_message(job.id, channel_id=202, message_id=1001)
    assert (job.message_id, job.channel_id) == (1001, 202)
    assert job.interaction_token is None and job.token_expires_at is None


@pytest.mark.asyncio
async def test_life_cycle_with_images(db: Database, clock: ManualClock) -> None:
    job = await db.create_job(job_spec(image_count=2), FREE)
    clock.advance(seconds=5)
    running = await db.jobs.mark_running(job.id)
    assert running.status is JobStatus.RUNNING and running.started_at == clock.now
    clock.advance(seconds=12.5)
    done = await db.complete_job(
        job.id,
        [GeneratedImage(0, 41, make_png(1)), GeneratedImage(1, 42, make_png(2, (80, 60)))],
        timings={"load": 1.0, "denoise": 10.0},
    )
    assert done.job.status is JobStatus.DONE and done.job.finished_at == clock.now
    assert done.job.generation_seconds == 12.5
    assert done.job.timings == {"load": 1.0, "denoise": 10.0}
    assert [(i.index, i.seed, i.width, i.height) for i in done.images] == [
        (0, 41, 64, 48),
        (1, 42, 80, 60),
    ]
    for image in done.images:
        assert db.files is not None
        size = (image.width, image.height)
        assert await db.files.get(image.file_key) == make_png(image.seed - 40, size)
        assert image.thumbnail_key and await db.files.exists(image.thumbnail_key)
    assert await db.images.find_by_index(job.id, 1) == done.images[1]
    assert await db.images.for_job(job.id) == list(done.images)
    assert await db.images.get(done.images[0].id) == done.images[0]
    assert (await db.jobs.get_with_images(job.id)) == done


@pytest.mark.asyncio
async def test_status_transitions_are_guarded(db: Database) -> None:
    job = await db.create_job(job_spec(), FREE)
    await db.jobs.mark_running(job.id)
    with pytest.raises(InvalidTransition):
        await db.jobs.mark_running(job.id)  # running -> running
    await db.jobs.mark_done(job.id)
    for attempt in (
        db.jobs.mark_running(job.id),
        db.jobs.mark_failed(job.id, "x"),
        db.jobs.mark_cancelled(job.id),
        db.jobs.mark_done(job.id),
    ):
        with pytest.raises(InvalidTransition) as caught:
            await attempt
        assert caught.value.current == "done"
    assert (await db.jobs.get(job.id)).status is JobStatus.DONE

    cancelled = await db.create_job(job_spec(), FREE)
    await db.jobs.mark_cancelled(cancelled.id, "by owner")
    with pytest.raises(InvalidTransition):
        await db.complete_job(cancelled.id, [GeneratedImage(0, 1, make_png(3))])
    with pytest.raises(JobNotFound):
        await db.jobs.mark_running("missing")

    # A result is never lost because its "started" event was: queued -> done is allowed.
    quick = await db.create_job(job_spec(), FREE)
    finished = await db.jobs.mark_done(quick.id, generation_seconds=2.0)
    assert finished.job.generation_seconds == 2.0 and finished.job.started_at is None


@pytest.mark.asyncio
async def test_failure_and_cancel_record_reason_and_time(db: Database, clock: ManualClock) -> None:
    job = await db.create_job(job_spec(), FREE)
    clock.advance(seconds=3)
    failed = await db.jobs.mark_failed(job.id, "Out of memory: try a smaller size.")
    assert failed.status is JobStatus.FAILED and failed.error.startswith("Out of memory")
    assert failed.finished_at == clock.now
    other = await db.create_job(job_spec(), FREE)
    cancelled = await db.jobs.mark_cancelled(other.id)
    assert cancelled.status is JobStatus.CANCELLED and cancelled.error is None


@pytest.mark.asyncio
async def test_invalid_jobs_are_refused(db: Database) -> None:
    bad = [
        job_spec(request="not json"),
        job_spec(image_count=0),
        job_spec(kind=""),
        job_spec(parent_image_index=1),
        job_spec(id="has space"),
    ]
    for spec in bad:
        with pytest.raises(InvalidInput):
            await db.create_job(spec, FREE)
    with pytest.raises(JobNotFound):
        await db.create_job(job_spec(parent_job_id="missing", parent_image_index=0), FREE)
    assert await db.jobs.unfinished() == []


@pytest.mark.asyncio
async def test_parent_and_children(db: Database) -> None:
    parent = await db.create_job(job_spec(image_count=4), FREE)
    await db.complete_job(parent.id, [GeneratedImage(i, i, make_png(i)) for i in range(4)])
    upscale = await db.create_job(
        job_spec(kind="upscale", parent_job_id=parent.id, parent_image_index=2), FREE
    )
    assert (upscale.parent_job_id, upscale.parent_image_index) == (parent.id, 2)
    assert [job.id for job in await db.jobs.children(parent.id)] == [upscale.id]


@pytest.mark.asyncio
async def test_unfinished_jobs_are_found_after_a_crash(
    db_location: Path | str, store: LocalImageStore, clock: ManualClock
) -> None:
    db = await Database.open(db_location, images=store, clock=clock)
    queued = await db.create_job(job_spec(), FREE)
    clock.advance(seconds=1)
    running = await db.create_job(job_spec(), FREE)
    await db.jobs.mark_running(running.id)
    finished = await db.create_job(job_spec(), FREE)
    await db.jobs.mark_done(finished.id)
    # "Crash": drop the connections without any shutdown work.
    if db._ctx.server is None:
        await db._ctx.writer.close()  # type: ignore[union-attr]
        await db._ctx.reader.close()  # type: ignore[union-attr]
    else:
        db._ctx.server.pool.terminate()  # type: ignore[attr-defined]

    async with Database.open(db_location, images=store, clock=clock) as again:
        assert [job.id for job in await again.jobs.unfinished()] == [queued.id, running.id]
        outcome = await again.jobs.resume_unfinished(max_attempts=3)
        assert [job.id for job in outcome.resumed] == [queued.id, running.id]
        assert outcome.abandoned == ()
        for job in outcome.resumed:
            assert job.status is JobStatus.QUEUED and job.attempts == 2 and job.started_at is None
        # Two more restarts: the third attempt is the last.
        await again.jobs.resume_unfinished(max_attempts=3)
        outcome = await again.jobs.resume_unfinished(max_attempts=3)
        assert outcome.resumed == ()
        assert [job.id for job in outcome.abandoned] == [queued.id, running.id]
        assert all(job.status is JobStatus.FAILED and job.error for job in outcome.abandoned)
        assert await again.jobs.unfinished() == []
        assert (await again.quotas.usage(100, 1)).used == 1  # abandoned jobs were refunded


@pytest.mark.asyncio
async def test_history_is_paginated_with_images(db: Database, clock: ManualClock) -> None:
    ids = []
    for n in range(7):
        clock.advance(seconds=1)
        job = await db.create_job(job_spec(prompt=f"prompt {n}", image_count=2), FREE)
        if n % 2 == 0:
            await db.complete_job(
                job.id, [GeneratedImage(i, n * 10 + i, make_png(n * 10 + i)) for i in range(2)]
            )
        ids.append(job.id)
    await db.create_job(job_spec(user_id=2), FREE)  # someone else's

    first = await db.jobs.history(1, limit=3)
    assert first.total == 7 and first.page_count == 3 and first.page_number == 1
    assert [entry.job.id for entry in first.items] == ids[::-1][:3]
    assert not first.has_previous and first.has_next
    assert [len(entry.images) for entry in first.items] == [2, 0, 2]
    assert [i.seed for i in first.items[0].images] == [60, 61]
    last = await db.jobs.history(1, offset=6, limit=3)
    assert [entry.job.id for entry in last.items] == [ids[0]] and not last.has_next
    done_only = await db.jobs.history(1, statuses=[JobStatus.DONE], limit=10)
    assert done_only.total == 4
    elsewhere = await db.jobs.history(1, guild_id=None)
    assert elsewhere.total == 0


@pytest.mark.asyncio
async def test_active_counts(db: Database, clock: ManualClock) -> None:
    a = await db.create_job(job_spec(user_id=1), FREE)
    clock.advance(seconds=1)
    await db.create_job(job_spec(user_id=1), FREE)
    await db.create_job(job_spec(user_id=2), FREE)
    await db.jobs.mark_running(a.id)
    counts = await db.jobs.active_counts()
    assert (counts[1].queued, counts[1].running, counts[1].total) == (1, 1, 2)
    assert counts[2].total == 1
    assert await db.jobs.count_active(1) == 2
    active = await db.jobs.active_for_user(1)
    assert [job.id for job in active][:1] == [a.id]


HOSTILE = [
    'it\'s "quoted" `back` \\slash\\',
    "'); DROP TABLE jobs;--",
    "Robert'); DELETE FROM usage_ledger WHERE ('1'='1",
    "nul\x00in\x00the\x00middle\x00",
    "x" * 10_000,
    "🐱‍👤🏳️‍🌈 emoji 👩🏽‍🚀 and \U0001f9ea",
    "مرحبا بالعالم \u202eright-to-left override\u202c שלום",
    "percent % underscore _ star * question ? [brackets]",
    "\t\n\r tabs and newlines \u00a0\u2028\u2029 ",
    "ＦＵＬＬ width and ñ̃ combining",
    " ",
    "".join(chr(c) for c in range(1, 32)),
]


@pytest.mark.asyncio
@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
async def test_hostile_strings_round_trip(db: Database, text: str, backend: str) -> None:
    request = json.dumps({"prompt": text, "negative": text}, ensure_ascii=False)
    if backend == "postgres" and "\x00" in text:
        # PostgreSQL's text cannot hold NUL: refused cleanly, as an unpaired surrogate is.
        with pytest.raises(InvalidText):
            await db.create_job(job_spec(prompt=text, request=request), FREE)
        assert await db.jobs.unfinished() == []
        return
    job = await db.create_job(
        job_spec(prompt=text, request=request, interaction_token=text),
        FREE,
        remember_prompt=True,
    )
    loaded = await db.jobs.get(job.id)
    assert loaded.prompt == text and loaded.request == request
    assert loaded.interaction_token == text
    assert json.loads(loaded.request)["prompt"] == text
    failed = await db.jobs.mark_failed(job.id, text)
    assert failed.error == text
    if text.strip():
        assert text in await db.history.recent(1)
        assert text in [use.prompt for use in await db.history.popular(100)]
        assert text in await db.history.recent(1, text[:50])
        word = text.strip()[:100]
        added = await db.guilds.add_banned_words(100, [word])
        assert added == await db.guilds.banned_words(100)
    await db.guilds.update_settings(100, extra={"note": text})
    settings = await db.guilds.settings(100)
    assert settings.extra == {"note": text}
    assert await db.integrity_check() == []
    # The SQL-looking ones did nothing: every table is still there and counts are sane.
    assert (await db.jobs.history(1)).total == 1


@pytest.mark.asyncio
async def test_unencodable_text_is_refused_cleanly(db: Database) -> None:
    with pytest.raises(InvalidText):
        await db.create_job(job_spec(prompt="lone \ud800 surrogate"), FREE)
    assert await db.jobs.unfinished() == []
    assert await db.history.recent(1, "\udfff") == []  # searching never fails
    job = await db.create_job(job_spec(), FREE)  # the connection is still healthy
    assert (await db.jobs.get(job.id)).prompt == "a cat"


@pytest.mark.asyncio
async def test_a_cancel_and_a_completion_from_two_processes_take_turns(
    db: Database, db_location: Path | str
) -> None:
    """Exactly one of them wins, and the job ends as the winner left it."""
    other = await Database.open(db_location)
    try:
        for n in range(15):
            job = await db.create_job(job_spec(), FREE)
            await db.jobs.mark_running(job.id)
            outcomes = await asyncio.gather(
                db.jobs.mark_cancelled(job.id),
                other.jobs.mark_done(job.id, timings={"n": n}),
                return_exceptions=True,
            )
            failed = [isinstance(outcome, InvalidTransition) for outcome in outcomes]
            assert failed.count(True) == 1, outcomes
            final = await db.jobs.get(job.id)
            assert final.status == ("done" if failed[0] else "cancelled")
            # A cancelled job was given back to the quota; a done one was not.
            assert (await db.quotas.refund(job.id)) is (final.status == "done")
    finally:
        await other.close()
