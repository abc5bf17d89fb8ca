"""Fair, prioritised job scheduling with cross-user batching. Pure logic: no torch, no asyncio.

Fairness: within a priority tier, users are served least-recently-served first, one job per
turn. A user with 20 queued jobs therefore gets one turn and then waits behind everyone who
has not been served since, so another user's first job waits for at most the batch that is
running plus one more.

Batching: the job chosen by fairness decides the batch's shape (its ``batch_key``); the rest
of the batch is filled with compatible jobs taken in the same fairness order, round by round,
so filling never jumps a job over one it would otherwise follow.

Model affinity: a head job for the loaded model is preferred over the fairest job for another
model, unless that job has waited longer than ``affinity_max_wait_s``.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from engine.errors import N_, QueueFullError, TooManyJobsError
from engine.types import ResolvedRequest


@dataclass(slots=True)
class QueuedJob:
    job_id: str
    user_id: str
    request: ResolvedRequest
    enqueued_at: float
    tier: int = 0  # higher runs first (e.g. a moderator-set plan)
    seq: int = 0  # set by the scheduler; submission order

    @property
    def images(self) -> int:
        return self.request.count


@dataclass(slots=True)
class _UserQueue:
    user_id: str
    jobs: deque[QueuedJob] = field(default_factory=deque)


class Scheduler:
    def __init__(
        self,
        *,
        max_queued: int,
        max_queued_per_user: int,
        max_images_per_call: Callable[[ResolvedRequest], int],
        affinity_max_wait_s: float = 30.0,
    ) -> None:
        self._max_queued = max_queued
        self._max_per_user = max_queued_per_user
        self._max_images = max_images_per_call
        self._affinity_max_wait_s = affinity_max_wait_s
        self._tiers: dict[int, dict[str, _UserQueue]] = {}
        self._jobs: dict[str, tuple[int, str]] = {}  # job id -> (tier, user id)
        # The "clock" of fairness is a dispatch counter, not wall time, so ordering is exact.
        self._last_served: dict[str, int] = {}
        self._dispatches = itertools.count(1)
        self._seq = itertools.count(1)

    # --- submission ----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def queued_for(self, user_id: str) -> int:
        return sum(len(users[user_id].jobs) for users in self._tiers.values() if user_id in users)

    def push(self, job: QueuedJob, *, front: bool = False, bypass_limits: bool = False) -> None:
        """Queue a job, or raise a user-safe error when a limit is reached.

        ``front`` puts a retried job back at the head of its user's queue. ``bypass_limits``
        is for jobs that were accepted once already (retries, resumes after a restart).
        """
        if not bypass_limits:
            if len(self._jobs) >= self._max_queued:
                raise QueueFullError(
                    N_("The queue is full ({most} jobs). Please try again in a minute."),
                    most=self._max_queued,
                )
            if self.queued_for(job.user_id) >= self._max_per_user:
                raise TooManyJobsError(
                    N_(
                        "You already have {count} jobs waiting. "
                        "Wait for one to finish or cancel one."
                    ),
                    count=self._max_per_user,
                )
        job.seq = next(self._seq)
        users = self._tiers.setdefault(job.tier, {})
        queue = users.setdefault(job.user_id, _UserQueue(job.user_id))
        if front:
            queue.jobs.appendleft(job)
        else:
            queue.jobs.append(job)
        self._jobs[job.job_id] = (job.tier, job.user_id)

    def remove(self, job_id: str) -> QueuedJob | None:
        where = self._jobs.pop(job_id, None)
        if where is None:
            return None
        tier, user_id = where
        users = self._tiers[tier]
        queue = users[user_id]
        for job in queue.jobs:
            if job.job_id == job_id:
                queue.jobs.remove(job)
                break
        if not queue.jobs:
            del users[user_id]
            if not users:
                del self._tiers[tier]
        return job

    # --- dispatch ------------------------------------------------------------------------

    def _fairness_order(self, users: dict[str, _UserQueue]) -> list[_UserQueue]:
        # Never-served users first (0), then least recently served; ties by arrival.
        return sorted(
            users.values(),
            key=lambda q: (self._last_served.get(q.user_id, 0), q.jobs[0].seq),
        )

    def _tier_order(self) -> list[int]:
        return sorted(self._tiers, reverse=True)

    def _pick_head(self, loaded_model: str | None, now: float) -> QueuedJob | None:
        for tier in self._tier_order():
            order = self._fairness_order(self._tiers[tier])
            fairest = order[0].jobs[0]
            if loaded_model is None or fairest.request.model == loaded_model:
                return fairest
            # Prefer the loaded model, but never let the fairest job wait without bound.
            if now - fairest.enqueued_at >= self._affinity_max_wait_s:
                return fairest
            for queue in order:
                if queue.jobs[0].request.model == loaded_model:
                    return queue.jobs[0]
            return fairest
        return None

    def _candidates_in_order(self) -> Iterator[QueuedJob]:
        """Every queued job in the order fairness alone would dispatch them, one per turn."""
        for tier in self._tier_order():
            order = self._fairness_order(self._tiers[tier])
            depth = 0
            while True:
                any_left = False
                for queue in order:
                    if depth < len(queue.jobs):
                        any_left = True
                        yield queue.jobs[depth]
                if not any_left:
                    break
                depth += 1

    def next_batch(self, loaded_model: str | None, now: float) -> list[QueuedJob]:
        """Take the next pipeline call's jobs out of the queue (empty when idle)."""
        head = self._pick_head(loaded_model, now)
        if head is None:
            return []
        key = head.request.batch_key
        budget = self._max_images(head.request) - head.images
        batch = [head]
        taken_by_user: dict[str, int] = {head.user_id: 1}
        if budget > 0:
            for job in self._candidates_in_order():
                if budget <= 0:
                    break
                if job is head or job.request.batch_key != key or job.images > budget:
                    continue
                # Keep each user's jobs in order: a user's next job joins only after every
                # job before it has joined.
                queue = self._tiers[job.tier][job.user_id].jobs
                taken = taken_by_user.get(job.user_id, 0)
                if taken >= len(queue) or queue[taken] is not job:
                    continue
                batch.append(job)
                taken_by_user[job.user_id] = taken + 1
                budget -= job.images
        served = next(self._dispatches)
        for job in batch:
            self.remove(job.job_id)
            self._last_served[job.user_id] = served
        self._forget_idle_users()
        return batch

    def _forget_idle_users(self) -> None:
        # Bound memory: users with nothing queued who were served long ago need no history,
        # since being forgotten only ranks them with never-served users, at the back of those.
        if len(self._last_served) > 4 * max(1, len(self._jobs)) + 1024:
            queued_users = {user for _, user in self._jobs.values()}
            self._last_served = {u: t for u, t in self._last_served.items() if u in queued_users}

    # --- introspection -------------------------------------------------------------------

    def iter_ordered(self) -> Iterator[QueuedJob]:
        """Queued jobs in expected dispatch order (ignoring batching and model affinity),
        lazily: taking the first N costs about N, not the whole queue."""
        return self._candidates_in_order()

    def positions(self) -> dict[str, int]:
        """1-based expected position of every queued job."""
        return {job.job_id: i for i, job in enumerate(self._candidates_in_order(), start=1)}
