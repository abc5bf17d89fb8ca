"""Jobs: creation under quota, life cycle, resume after a crash, history."""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any

from ._base import (
    IMAGE_COLUMNS,
    JOB_COLUMNS,
    UNSET,
    Context,
    Tx,
    _Unset,
    ensure_guild,
    ensure_user,
    guild_key,
    image_from_row,
    job_from_row,
    new_job_id,
    placeholders,
)
from .clock import from_db, next_utc_midnight, require_aware, to_db, to_db_opt, utc_day
from .errors import (
    InvalidInput,
    InvalidTransition,
    JobNotFound,
    LimitKind,
    QuotaExceeded,
)
from .images import insert_images
from .library import query_conditions
from .quotas import active_jobs, refund_job, used_today
from .records import (
    TRANSITIONS,
    ActiveCounts,
    CompletedJob,
    Flag,
    FlagAction,
    HistoryEntry,
    Image,
    Job,
    JobStatus,
    LibraryQuery,
    NewImage,
    NewJob,
    Page,
    QuotaPolicy,
    ResumeResult,
)
from .safety import record_flags

_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
MAX_IMAGES_PER_JOB = 16
ABANDONED_ERROR = "The bot restarted during this job {attempts} times; it was given up."
UNDELIVERED_WINDOW = dt.timedelta(days=1)

EnsureFiles = Callable[[], Awaitable[None]]


def _id_collision(error: Exception) -> bool:
    """A drawn job id that is taken: SQLite names the column, PostgreSQL the key."""
    if isinstance(error, sqlite3.IntegrityError):
        return "jobs.id" in str(error)
    return getattr(error, "constraint_name", None) == "jobs_pkey"


def _validate(job: NewJob) -> None:
    if job.id is not None and not (isinstance(job.id, str) and _JOB_ID.match(job.id)):
        raise InvalidInput("A job id is 1 to 32 characters of A-Z, a-z, 0-9, '-' and '_'.")
    if not isinstance(job.kind, str) or not job.kind:
        raise InvalidInput("A job needs a kind (its operation).")
    if not isinstance(job.prompt, str):
        raise InvalidInput("A job's prompt must be text.")
    if not isinstance(job.request, str):
        raise InvalidInput("A job's request must be JSON text (serialise it first).")
    try:
        json.loads(job.request)
    except ValueError as error:
        raise InvalidInput(f"A job's request must be valid JSON: {error}") from None
    if (
        isinstance(job.image_count, bool)
        or not isinstance(job.image_count, int)
        or not 1 <= job.image_count <= MAX_IMAGES_PER_JOB
    ):
        raise InvalidInput(f"A job makes 1 to {MAX_IMAGES_PER_JOB} images.")
    if job.parent_image_index is not None and job.parent_job_id is None:
        raise InvalidInput("A parent image index needs a parent job.")
    if job.token_expires_at is not None:
        require_aware(job.token_expires_at)


class JobRepository:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    # -- creation

    async def create(
        self, job: NewJob, policy: QuotaPolicy, *, remember_prompt: bool = False
    ) -> Job:
        """Record an accepted job and spend its images, atomically, within ``policy``.

        In one write transaction (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: holding the
        user's advisory lock, so spends from every front process take turns): check the
        user's images used today (UTC) plus
        ``job.image_count`` against the daily limit, and their queued + running jobs against
        the concurrent limit; then insert the job (status ``queued``, attempt 1) and the
        ledger spend, and with ``remember_prompt`` the prompt in the prompt history (pass it
        for ``/imagine``, not for upscales and variations of an earlier prompt).

        Raises ``QuotaExceeded`` (nothing written) or ``JobNotFound`` for a missing parent.
        When this returns, the job is durable.
        """
        _validate(job)
        now = self._ctx.now()
        stamp = to_db(now)
        day = utc_day(now)
        for _ in range(8):
            job_id = job.id or new_job_id()
            try:
                async with self._ctx.write() as tx:
                    # The check and the spend below are one step for every writer of this
                    # user's quota, in any process (on PostgreSQL transactions run at once).
                    await tx.lock(job.user_id)
                    await self._check_quota(tx, job, policy, day, now)
                    if job.parent_job_id is not None and not await tx.scalar(
                        "SELECT 1 FROM jobs WHERE id = ?", (job.parent_job_id,)
                    ):
                        raise JobNotFound(job.parent_job_id)
                    await ensure_user(tx, job.user_id, stamp)
                    await ensure_guild(tx, job.guild_id, stamp)
                    row = await tx.one(
                        f"""INSERT INTO jobs (
                                id, user_id, guild_id, channel_id, message_id,
                                interaction_token, token_expires_at, kind, request, prompt,
                                image_count, private, parent_job_id, parent_image_index,
                                status, attempts, created_at, source, model)
                            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', 1, ?, ?,
                                    json_extract(?, '$.model'))
                            RETURNING {JOB_COLUMNS}""",
                        (
                            job_id,
                            job.user_id,
                            job.guild_id,
                            job.channel_id,
                            job.message_id,
                            job.interaction_token,
                            to_db_opt(job.token_expires_at),
                            job.kind,
                            job.request,
                            job.prompt,
                            job.image_count,
                            int(job.private),
                            job.parent_job_id,
                            job.parent_image_index,
                            stamp,
                            job.source,
                            job.request,
                        ),
                    )
                    index_prompt = tx.sql.index_job_prompt()
                    if index_prompt is not None:
                        await tx.run(index_prompt, (job_id,))
                    await tx.run(tx.sql.update_usage_facts, (job_id,))
                    await tx.run(
                        """INSERT INTO usage_ledger
                               (guild_key, user_id, day, entry, images, job_id, created_at)
                           VALUES (?, ?, ?, 'spend', ?, ?, ?)""",
                        (guild_key(job.guild_id), job.user_id, day, job.image_count, job_id, stamp),
                    )
                    if remember_prompt and job.prompt.strip():
                        await tx.run(
                            """INSERT INTO prompt_history
                                   (user_id, guild_key, prompt, private, created_at)
                               VALUES (?, ?, ?, ?, ?)""",
                            (
                                job.user_id,
                                guild_key(job.guild_id),
                                job.prompt,
                                int(job.private),
                                stamp,
                            ),
                        )
            except Exception as error:
                if job.id is None and _id_collision(error):
                    continue  # a random id collided (72 bits: practically never); draw again
                raise
            assert row is not None
            return job_from_row(row)
        raise RuntimeError("could not draw an unused job id")

    async def _check_quota(
        self, tx: Tx, job: NewJob, policy: QuotaPolicy, day: str, now: dt.datetime
    ) -> None:
        if policy.daily_images is not None:
            used = await used_today(tx, job.guild_id, job.user_id, day)
            if used + job.image_count > policy.daily_images:
                raise QuotaExceeded(
                    LimitKind.DAILY_IMAGES,
                    limit=policy.daily_images,
                    used=used,
                    requested=job.image_count,
                    resets_at=next_utc_midnight(now),
                )
        if policy.concurrent_jobs is not None:
            active = await active_jobs(tx, job.user_id)
            if active >= policy.concurrent_jobs:
                raise QuotaExceeded(
                    LimitKind.CONCURRENT_JOBS,
                    limit=policy.concurrent_jobs,
                    used=active,
                    requested=1,
                    resets_at=None,
                )

    # -- reads

    async def find(self, job_id: str) -> Job | None:
        async with self._ctx.read() as tx:
            row = await tx.one(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return None if row is None else job_from_row(row)

    async def get(self, job_id: str) -> Job:
        """The job; raises ``JobNotFound``."""
        job = await self.find(job_id)
        if job is None:
            raise JobNotFound(job_id)
        return job

    async def get_with_images(self, job_id: str) -> CompletedJob:
        async with self._ctx.read(snapshot=True) as tx:
            row = await tx.one(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
            if row is None:
                raise JobNotFound(job_id)
            images = await tx.all(
                f"SELECT {IMAGE_COLUMNS} FROM images WHERE job_id = ? ORDER BY idx", (job_id,)
            )
        return CompletedJob(job_from_row(row), tuple(image_from_row(i) for i in images))

    async def children(self, job_id: str) -> list[Job]:
        """Upscales and variations made from this job, oldest first."""
        async with self._ctx.read() as tx:
            rows = await tx.all(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE parent_job_id = ? ORDER BY created_at, id",
                (job_id,),
            )
        return [job_from_row(row) for row in rows]

    async def by_message(self, message_id: int) -> Job | None:
        """The job whose Discord message (its progress, then its result) is ``message_id``."""
        async with self._ctx.read() as tx:
            row = await tx.one(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE message_id = ? "
                "ORDER BY created_at DESC, id DESC LIMIT 1",
                (message_id,),
            )
        return None if row is None else job_from_row(row)

    async def unfinished(self) -> list[Job]:
        """Queued and running jobs, oldest first (without changing them)."""
        async with self._ctx.read() as tx:
            rows = await tx.all(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE status IN ('queued', 'running') "
                "ORDER BY created_at, id"
            )
        return [job_from_row(row) for row in rows]

    async def active_for_user(self, user_id: int) -> list[Job]:
        """The user's queued and running jobs, oldest first (for ``/queue``)."""
        async with self._ctx.read() as tx:
            rows = await tx.all(
                f"SELECT {JOB_COLUMNS} FROM jobs "
                "WHERE user_id = ? AND status IN ('queued', 'running') ORDER BY created_at, id",
                (user_id,),
            )
        return [job_from_row(row) for row in rows]

    async def count_active(self, user_id: int) -> int:
        async with self._ctx.read() as tx:
            return await active_jobs(tx, user_id)

    async def active_counts(self) -> dict[int, ActiveCounts]:
        """Queued and running jobs per user."""
        async with self._ctx.read() as tx:
            rows = await tx.all(
                "SELECT user_id, count(*) FILTER (WHERE status = 'queued'),"
                " count(*) FILTER (WHERE status = 'running') FROM jobs "
                "WHERE status IN ('queued', 'running') GROUP BY user_id"
            )
        return {row[0]: ActiveCounts(queued=row[1], running=row[2]) for row in rows}

    async def history(
        self,
        user_id: int,
        *,
        guild_id: int | _Unset | None = UNSET,
        statuses: Collection[JobStatus] | None = None,
        offset: int = 0,
        limit: int = 10,
        text: str | None = None,
        model: str | None = None,
    ) -> Page[HistoryEntry]:
        """The user's jobs, newest first, with their images (for ``/history``).

        ``guild_id``: omit for every guild and DMs, ``None`` for DMs only.
        ``statuses``: ``None`` for all. ``text``: only prompts with every word of it, or a word
        starting so (full-text indexed; case and accents ignored). ``model``: only jobs that ran
        on that model.
        """
        if offset < 0 or not 1 <= limit <= 100:
            raise ValueError("offset must be >= 0 and limit in 1..100")
        where = ["user_id = ?"]
        params: list[Any] = [user_id]
        if guild_id is not UNSET:
            where.append("guild_id IS ?")
            params.append(guild_id)
        if statuses is not None:
            wanted = [JobStatus(s).value for s in statuses]
            where.append(f"status IN ({placeholders(len(wanted))})" if wanted else "1 = 0")
            params.extend(wanted)
        filters, filter_params = query_conditions(
            LibraryQuery(text=text, model=model), self._ctx.dialect
        )
        where.extend(filters)
        params.extend(filter_params)
        condition = " AND ".join(where)
        async with self._ctx.read(snapshot=True) as tx:
            total = await tx.scalar(f"SELECT count(*) FROM jobs WHERE {condition}", params)
            rows = await tx.all(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE {condition} "
                "ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
                (*params, limit, offset),
            )
            jobs = [job_from_row(row) for row in rows]
            by_job: dict[str, list[Image]] = {job.id: [] for job in jobs}
            if jobs:
                for row in await tx.all(
                    f"SELECT {IMAGE_COLUMNS} FROM images "
                    f"WHERE job_id IN ({placeholders(len(jobs))}) ORDER BY job_id, idx",
                    [job.id for job in jobs],
                ):
                    by_job[row["job_id"]].append(image_from_row(row))
        entries = tuple(HistoryEntry(job, tuple(by_job[job.id])) for job in jobs)
        return Page(entries, int(total), offset, limit)

    # -- changes

    async def set_message(
        self, job_id: str, *, message_id: int | None, channel_id: int | _Unset | None = UNSET
    ) -> Job:
        """Remember the message that shows the job (and its channel, if it changed)."""
        async with self._ctx.write() as tx:
            if channel_id is UNSET:
                changed = await tx.run(
                    "UPDATE jobs SET message_id = ? WHERE id = ?", (message_id, job_id)
                )
            else:
                changed = await tx.run(
                    "UPDATE jobs SET message_id = ?, channel_id = ? WHERE id = ?",
                    (message_id, channel_id, job_id),
                )
            if not changed:
                raise JobNotFound(job_id)
            return await self._load(tx, job_id)

    async def set_own_message(self, job_id: str, *, channel_id: int, message_id: int) -> Job:
        """The bot posted the job's message itself (the interaction's was lost): remember it,
        and drop the interaction token, which cannot edit it, in one write."""
        async with self._ctx.write() as tx:
            if not await tx.run(
                "UPDATE jobs SET message_id = ?, channel_id = ?, interaction_token = NULL,"
                " token_expires_at = NULL WHERE id = ?",
                (message_id, channel_id, job_id),
            ):
                raise JobNotFound(job_id)
            return await self._load(tx, job_id)

    async def set_interaction(
        self, job_id: str, token: str | None, expires_at: dt.datetime | None
    ) -> Job:
        """Replace the interaction token the job's message can be edited through."""
        async with self._ctx.write() as tx:
            if not await tx.run(
                "UPDATE jobs SET interaction_token = ?, token_expires_at = ? WHERE id = ?",
                (token, to_db_opt(expires_at), job_id),
            ):
                raise JobNotFound(job_id)
            return await self._load(tx, job_id)

    async def mark_running(self, job_id: str) -> Job:
        """queued -> running; sets ``started_at``."""
        async with self._ctx.write() as tx:
            await self._check(tx, job_id, JobStatus.RUNNING)
            await tx.run(
                "UPDATE jobs SET status = 'running', started_at = ? WHERE id = ?",
                (to_db(self._ctx.now()), job_id),
            )
            return await self._load(tx, job_id)

    async def mark_done(
        self,
        job_id: str,
        *,
        images: Sequence[NewImage] = (),
        timings: Mapping[str, Any] | None = None,
        generation_seconds: float | None = None,
    ) -> CompletedJob:
        """queued/running -> done, recording its images in the same transaction.

        ``generation_seconds`` defaults to the time since ``started_at``. The image files
        must already be in the image store (``Database.complete_job`` stores and records in
        one call).
        """
        return await self._mark_done(job_id, images, timings, generation_seconds, None)

    async def _mark_done(
        self,
        job_id: str,
        images: Sequence[NewImage],
        timings: Mapping[str, Any] | None,
        generation_seconds: float | None,
        ensure_files: EnsureFiles | None,
        flags: Sequence[Flag] = (),
    ) -> CompletedJob:
        verdicts = {flag.index: flag for flag in flags}
        blocked = [
            i for i in images if (f := verdicts.get(i.index)) and f.action is FlagAction.BLOCKED
        ]
        shown = [i for i in images if i not in blocked]
        timings_json = None if timings is None else json.dumps(dict(timings), sort_keys=True)
        now = self._ctx.now()
        async with self._ctx.write() as tx:
            await self._check(tx, job_id, JobStatus.DONE)
            if ensure_files is not None:
                await ensure_files()
            started = await tx.scalar("SELECT started_at FROM jobs WHERE id = ?", (job_id,))
            if generation_seconds is None and started is not None:
                generation_seconds = max(0.0, (now - from_db(started)).total_seconds())
            stored = await insert_images(tx, job_id, shown, to_db(now))
            entries = await record_flags(
                tx,
                job_id,
                [(i, verdicts[i.index]) for i in images if i.index in verdicts],
                to_db(now),
            )
            if blocked:
                await refund_job(tx, job_id, to_db(now), images=len(blocked))
            await tx.run(
                """UPDATE jobs SET status = 'done', finished_at = ?, error = NULL,
                       timings = ?, generation_seconds = ? WHERE id = ?""",
                (to_db(now), timings_json, generation_seconds, job_id),
            )
            await tx.run(tx.sql.update_usage_facts, (job_id,))
            job = await self._load(tx, job_id)
        return CompletedJob(job, stored, entries)

    async def mark_failed(self, job_id: str, error: str) -> Job:
        """queued/running -> failed with a user-safe ``error``; the job's images are refunded."""
        return await self._end(job_id, JobStatus.FAILED, error)

    async def mark_cancelled(self, job_id: str, reason: str | None = None) -> Job:
        """queued/running -> cancelled; the job's images are refunded."""
        return await self._end(job_id, JobStatus.CANCELLED, reason)

    async def _end(self, job_id: str, status: JobStatus, error: str | None) -> Job:
        now = to_db(self._ctx.now())
        async with self._ctx.write() as tx:
            await self._check(tx, job_id, status)
            await tx.run(
                "UPDATE jobs SET status = ?, finished_at = ?, error = ? WHERE id = ?",
                (status.value, now, error, job_id),
            )
            await refund_job(tx, job_id, now)
            return await self._load(tx, job_id)

    async def mark_delivered(self, job_id: str) -> Job:
        """The finished job's outcome has been shown to its user (or cannot be any more)."""
        async with self._ctx.write() as tx:
            if not await tx.run(
                "UPDATE jobs SET delivered_at = ? WHERE id = ?",
                (to_db(self._ctx.now()), job_id),
            ):
                raise JobNotFound(job_id)
            return await self._load(tx, job_id)

    async def resume_unfinished(
        self,
        *,
        max_attempts: int | None = 3,
        undelivered_since: dt.timedelta = UNDELIVERED_WINDOW,
        sources: Collection[str] | None = None,
    ) -> ResumeResult:
        """At start-up: every job left queued or running by the last run, and every finished
        job (within ``undelivered_since``) whose outcome was never shown.

        A job whose images are already stored is done: it is marked so, not generated again.
        Jobs that have had ``max_attempts`` attempts already are failed (and refunded): a job
        that crashes the bot must not crash it forever. The others go back to ``queued``
        with ``attempts + 1`` and ``started_at`` cleared; submit them again. Older finished
        jobs never shown are left as they are (marked delivered: too late to be useful).
        ``sources``: only jobs taken by these front doors (the others wait for theirs).
        """
        now = self._ctx.now()
        stamp = to_db(now)
        async with self._ctx.write() as tx:
            rows = await tx.all(
                "SELECT id, attempts, source,"
                " EXISTS (SELECT 1 FROM images WHERE images.job_id = jobs.id)"
                " FROM jobs WHERE status IN ('queued', 'running') ORDER BY created_at, id"
            )
            resumed, abandoned = [], []
            for row in rows:
                job_id, attempts, source, has_images = row[0], row[1], row[2], bool(row[3])
                if sources is not None and source not in sources:
                    continue
                if has_images:
                    await tx.run(
                        "UPDATE jobs SET status = 'done', finished_at = ?, error = NULL"
                        " WHERE id = ?",
                        (stamp, job_id),
                    )
                elif max_attempts is not None and attempts >= max_attempts:
                    await tx.run(
                        "UPDATE jobs SET status = 'failed', finished_at = ?, error = ? "
                        "WHERE id = ?",
                        (stamp, ABANDONED_ERROR.format(attempts=attempts), job_id),
                    )
                    await refund_job(tx, job_id, stamp)
                    abandoned.append(await self._load(tx, job_id))
                else:
                    await tx.run(
                        "UPDATE jobs SET status = 'queued', attempts = attempts + 1, "
                        "started_at = NULL WHERE id = ?",
                        (job_id,),
                    )
                    resumed.append(await self._load(tx, job_id))
            cutoff = to_db(now - undelivered_since)
            await tx.run(
                "UPDATE jobs SET delivered_at = ? WHERE delivered_at IS NULL"
                " AND status IN ('done', 'failed', 'cancelled') AND created_at < ?",
                (stamp, cutoff),
            )
            told = {job.id for job in abandoned}
            undelivered = [
                job_from_row(row)
                for row in await tx.all(
                    f"SELECT {JOB_COLUMNS} FROM jobs WHERE delivered_at IS NULL"
                    " AND status IN ('done', 'failed', 'cancelled') ORDER BY created_at, id"
                )
                if row["id"] not in told and (sources is None or row["source"] in sources)
            ]
        return ResumeResult(tuple(resumed), tuple(abandoned), tuple(undelivered))

    # -- helpers

    async def _check(self, tx: Tx, job_id: str, target: JobStatus) -> JobStatus:
        # Locked until the transaction ends: a cancel and a completion racing from two front
        # processes take turns, and the second sees the first's status.
        status = await tx.scalar(
            f"SELECT status FROM jobs WHERE id = ?{tx.sql.for_update}", (job_id,)
        )
        if status is None:
            raise JobNotFound(job_id)
        current = JobStatus(status)
        if target not in TRANSITIONS[current]:
            raise InvalidTransition(job_id, current.value, target.value)
        return current

    @staticmethod
    async def _load(tx: Tx, job_id: str) -> Job:
        row = await tx.one(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        if row is None:
            raise JobNotFound(job_id)
        return job_from_row(row)
