"""Success metrics from the durable record: per day and per server, how much was made, by how
many people, how fast, how often it failed and why, which settings and buttons were used,
what was kept and what people thought of it. No new tracking of people: every figure is a
count over jobs, favourites and feedback that exist anyway.

A finished day's figures are computed once and kept (``daily_stats``), so a year of charts
reads 365 small rows instead of every job. Times are kept as histograms over fixed
logarithmic buckets, so days add up to weeks and months, and their percentiles stay within a
bucket (about 12%) of the exact value.
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._base import Context, guild_key
from .clock import to_db
from .usage_schema import ADVANCED, BUCKET_EDGES, JOB_OF_VOTE

ALL_SERVERS = -(2**62)  # the guild key of the totals over every server, DMs and the API
STAT_VERSION = 1  # bump when what a day holds changes: kept days are then recomputed


def server_key(guild_id: int | None) -> int:
    """The key of one server's figures (``None``: direct messages and the API)."""
    return guild_key(guild_id)


def bucket_of(seconds: float) -> int:
    """The histogram bucket for a duration: the first edge at or above it."""
    return min(bisect.bisect_left(BUCKET_EDGES, seconds), len(BUCKET_EDGES) - 1)


def percentile_of(histogram: Mapping[int, int], fraction: float) -> float | None:
    """The upper edge of the bucket holding the ``fraction`` quantile (nearest rank)."""
    total = sum(histogram.values())
    if not total:
        return None
    rank = max(1, math.ceil(fraction * total))
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return BUCKET_EDGES[bucket]
    return BUCKET_EDGES[-1]


@dataclass
class UsageStats:
    """The figures of one day (or of several added up) for one server or for all."""

    jobs: int = 0
    images: int = 0
    done: int = 0
    failed: int = 0
    cancelled: int = 0
    users: set[int] = field(default_factory=set)
    failure_reasons: Counter[str] = field(default_factory=Counter)
    wait: Counter[int] = field(default_factory=Counter)  # queue wait, seconds bucketed
    generation: Counter[int] = field(default_factory=Counter)
    total: Counter[int] = field(default_factory=Counter)  # request to result
    advanced: Counter[str] = field(default_factory=Counter)  # jobs using each setting
    operations: Counter[str] = field(default_factory=Counter)  # jobs by kind
    from_buttons: Counter[str] = field(default_factory=Counter)  # derived jobs by kind
    favourited: int = 0  # jobs with at least one starred image
    thumbs_up: int = 0
    thumbs_down: int = 0
    feedback_by_model: dict[str, list[int]] = field(default_factory=dict)  # model: [up, down]

    @property
    def active_users(self) -> int:
        return len(self.users)

    @property
    def error_rate(self) -> float | None:
        finished = self.done + self.failed + self.cancelled
        return None if not finished else self.failed / finished

    @property
    def cancel_rate(self) -> float | None:
        finished = self.done + self.failed + self.cancelled
        return None if not finished else self.cancelled / finished

    def add(self, other: UsageStats) -> None:
        for name in ("jobs", "images", "done", "failed", "cancelled", "favourited"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.thumbs_up += other.thumbs_up
        self.thumbs_down += other.thumbs_down
        self.users |= other.users
        for name in (
            "failure_reasons",
            "wait",
            "generation",
            "total",
            "advanced",
            "operations",
            "from_buttons",
        ):
            getattr(self, name).update(getattr(other, name))
        for model, (up, down) in other.feedback_by_model.items():
            counts = self.feedback_by_model.setdefault(model, [0, 0])
            counts[0] += up
            counts[1] += down

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STAT_VERSION,
            "jobs": self.jobs,
            "images": self.images,
            "done": self.done,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "users": sorted(self.users),
            "failure_reasons": dict(self.failure_reasons),
            "wait": {str(k): v for k, v in self.wait.items()},
            "generation": {str(k): v for k, v in self.generation.items()},
            "total": {str(k): v for k, v in self.total.items()},
            "advanced": dict(self.advanced),
            "operations": dict(self.operations),
            "from_buttons": dict(self.from_buttons),
            "favourited": self.favourited,
            "thumbs_up": self.thumbs_up,
            "thumbs_down": self.thumbs_down,
            "feedback_by_model": self.feedback_by_model,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UsageStats:
        def histogram(name: str) -> Counter[int]:
            return Counter({int(k): int(v) for k, v in data.get(name, {}).items()})

        return cls(
            jobs=data["jobs"],
            images=data["images"],
            done=data["done"],
            failed=data["failed"],
            cancelled=data["cancelled"],
            users=set(data["users"]),
            failure_reasons=Counter(data["failure_reasons"]),
            wait=histogram("wait"),
            generation=histogram("generation"),
            total=histogram("total"),
            advanced=Counter(data["advanced"]),
            operations=Counter(data["operations"]),
            from_buttons=Counter(data["from_buttons"]),
            favourited=data["favourited"],
            thumbs_up=data["thumbs_up"],
            thumbs_down=data["thumbs_down"],
            feedback_by_model={k: list(v) for k, v in data["feedback_by_model"].items()},
        )

    def summary(self) -> dict[str, Any]:
        """The figures people read (the API's dashboard and /stats)."""
        return {
            "jobs": self.jobs,
            "images": self.images,
            "active_users": self.active_users,
            "done": self.done,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "error_rate": self.error_rate,
            "cancel_rate": self.cancel_rate,
            "wait_p50_s": percentile_of(self.wait, 0.5),
            "wait_p95_s": percentile_of(self.wait, 0.95),
            "generation_p50_s": percentile_of(self.generation, 0.5),
            "generation_p95_s": percentile_of(self.generation, 0.95),
            "total_p50_s": percentile_of(self.total, 0.5),
            "total_p95_s": percentile_of(self.total, 0.95),
            "failure_reasons": dict(self.failure_reasons.most_common(10)),
            "advanced_share": {
                name: (self.advanced[name] / self.jobs if self.jobs else 0.0) for name in ADVANCED
            },
            "favourited_share": self.favourited / self.done if self.done else 0.0,
            "operations": dict(self.operations),
            "buttons": dict(self.from_buttons),
            "thumbs_up": self.thumbs_up,
            "thumbs_down": self.thumbs_down,
            "feedback_by_model": {
                m: {"up": c[0], "down": c[1]} for m, c in self.feedback_by_model.items()
            },
        }


class UsageRepository:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def days(
        self, first: dt.date, last: dt.date, key: int = ALL_SERVERS
    ) -> list[tuple[dt.date, UsageStats]]:
        """Each day's figures from ``first`` to ``last`` (UTC days, both included) for one
        server (``key``: ``server_key(guild_id)``, DMs and the API being ``None``) or, by
        default, for all. Finished days are computed once and kept; recent ones afresh."""
        if last < first:
            return []
        today = self._ctx.now().astimezone(dt.UTC).date()
        kept: dict[str, UsageStats] = {}
        async with self._ctx.read() as tx:
            for row in await tx.all(
                "SELECT day, stats FROM daily_stats WHERE guild_key = ? AND day BETWEEN ? AND ?",
                (key, first.isoformat(), last.isoformat()),
            ):
                data = json.loads(row[1])
                if data.get("version") == STAT_VERSION:
                    kept[row[0]] = UsageStats.from_json(data)
        missing = [
            first + dt.timedelta(days=n)
            for n in range((last - first).days + 1)
            if (first + dt.timedelta(days=n)).isoformat() not in kept
        ]
        if missing:
            # Kept once no job of the day can still be running (an hour after it ends).
            settled = [
                day
                for day in missing
                if day < today and self._ctx.now() >= _day_end(day) + dt.timedelta(hours=1)
            ]
            counted = await self._count_days(missing[0], missing[-1], keep=set(settled))
            for day in missing:
                kept[day.isoformat()] = counted.get(day, {}).get(key, UsageStats())
        return [
            (first + dt.timedelta(days=n), kept[(first + dt.timedelta(days=n)).isoformat()])
            for n in range((last - first).days + 1)
        ]

    async def period(self, first: dt.date, last: dt.date, key: int = ALL_SERVERS) -> UsageStats:
        return merged(await self.days(first, last, key))

    async def _count_days(
        self, first: dt.date, last: dt.date, *, keep: set[dt.date]
    ) -> dict[dt.date, dict[int, UsageStats]]:
        """Count the days from ``first`` to ``last`` from the raw record, per server and for
        all, in one read; keep the ``keep`` days' figures, in one write."""
        start = dt.datetime.combine(first, dt.time(), tzinfo=dt.UTC)
        span = (to_db(start), to_db(_day_end(last)))
        where = "FROM jobs WHERE created_at >= ? AND created_at < ?"
        day = "substr(created_at, 1, 10)"
        async with self._ctx.read(snapshot=True) as tx:
            # Only columns of the covering index jobs_usage: no row of the table is read.
            rows = await tx.all(
                f"""SELECT {day}, guild_id, user_id, status, kind, parent_job_id IS NOT NULL,
                           image_count, favourite_count > 0, wait_bucket, generation_bucket,
                           total_bucket, settings
                    {where}""",
                span,
            )
            failures = await tx.all(
                f"""SELECT {day}, guild_id,
                           substr(coalesce(nullif(error, ''), 'unknown error'), 1, 120), count(*)
                    {where} AND status = 'failed' GROUP BY 1, 2, 3""",
                span,
            )
            votes = await tx.all(
                "SELECT job_day, guild_id, model, value FROM feedback"
                " WHERE job_day >= ? AND job_day <= ?",
                (first.isoformat(), last.isoformat()),
            )
        # Each job is counted once, for its server; the totals over all are their sums.
        per_day: dict[tuple[str, int | None], UsageStats] = {}

        def stats_of(day: str, guild_id: int | None) -> UsageStats:
            found = per_day.get((day, guild_id))
            if found is None:
                found = per_day[day, guild_id] = UsageStats()
            return found

        masks: Counter[tuple[str, int | None, int]] = Counter()  # settings bits, per day
        for (
            day_text,
            guild_id,
            user_id,
            status,
            kind,
            derived,
            images,
            favourited,
            wait,
            generation,
            total,
            settings,
        ) in rows:
            stats = stats_of(day_text, guild_id)
            stats.jobs += 1
            stats.users.add(user_id)
            stats.operations[kind] += 1
            if derived:
                stats.from_buttons[kind] += 1
            if status == "done":
                stats.done += 1
                stats.images += images
                stats.favourited += favourited
                if wait is not None:
                    stats.wait[wait] += 1
                if generation is not None:
                    stats.generation[generation] += 1
                if total is not None:
                    stats.total[total] += 1
            elif status == "failed":
                stats.failed += 1
            elif status == "cancelled":
                stats.cancelled += 1
            if settings:
                masks[day_text, guild_id, settings] += 1
        for (day_text, guild_id, mask), count in masks.items():
            advanced = stats_of(day_text, guild_id).advanced
            for bit, name in enumerate(ADVANCED):
                if mask & (1 << bit):
                    advanced[name] += count
        for day_text, guild_id, reason, count in failures:
            stats_of(day_text, guild_id).failure_reasons[reason] += count
        for day_text, guild_id, model, value in votes:
            stats = stats_of(day_text, guild_id)
            counts = stats.feedback_by_model.setdefault(model or "default", [0, 0])
            if value > 0:
                stats.thumbs_up += 1
                counts[0] += 1
            else:
                stats.thumbs_down += 1
                counts[1] += 1
        days: dict[dt.date, dict[int, UsageStats]] = {}
        for (day, guild_id), stats in per_day.items():
            servers = days.setdefault(dt.date.fromisoformat(day), {ALL_SERVERS: UsageStats()})
            servers[guild_key(guild_id)] = stats
            servers[ALL_SERVERS].add(stats)
        kept_rows = [
            (day.isoformat(), key, json.dumps(stats.to_json()))
            for day in keep
            for key, stats in days.get(day, {ALL_SERVERS: UsageStats()}).items()
        ]
        if kept_rows:
            now = to_db(self._ctx.now())
            async with self._ctx.write() as tx:
                await tx.run_many(
                    "INSERT INTO daily_stats (day, guild_key, stats, computed_at)"
                    " VALUES (?, ?, ?, ?) ON CONFLICT (day, guild_key)"
                    " DO UPDATE SET stats = excluded.stats, computed_at = excluded.computed_at",
                    [(*row, now) for row in kept_rows],
                )
        return days

    # -- feedback

    async def vote(self, user_id: int, job_id: str, value: int) -> int:
        """👍 (1) or 👎 (-1) on a job; the same vote again takes it back. Returns the vote
        now in force (0: none). A day already counted is counted again."""
        if value not in (1, -1):
            raise ValueError("a vote is 1 or -1")
        now = to_db(self._ctx.now())
        async with self._ctx.write() as tx:
            before = await tx.scalar(
                "SELECT value FROM feedback WHERE user_id = ? AND job_id = ?", (user_id, job_id)
            )
            if before == value:
                await tx.run(
                    "DELETE FROM feedback WHERE user_id = ? AND job_id = ?", (user_id, job_id)
                )
                result = 0
            else:
                job = await tx.one(JOB_OF_VOTE, (job_id,))
                await tx.run(
                    "INSERT INTO feedback (user_id, job_id, value, created_at, job_day, guild_id,"
                    " model) VALUES (?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (user_id, job_id) DO UPDATE SET value = excluded.value",
                    (user_id, job_id, value, now, *(job if job is not None else (None,) * 3)),
                )
                result = value
            await tx.run(
                "DELETE FROM daily_stats WHERE day = (SELECT substr(created_at, 1, 10)"
                " FROM jobs WHERE id = ?)",
                (job_id,),
            )
        return result


def _day_end(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC) + dt.timedelta(days=1)


def merged(days: Iterable[tuple[dt.date, UsageStats]]) -> UsageStats:
    total = UsageStats()
    for _, stats in days:
        total.add(stats)
    return total
