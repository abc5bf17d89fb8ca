"""The scheduler alone: fairness, batching, limits and model affinity, without torch."""

from __future__ import annotations

import dataclasses

import pytest

from engine.errors import QueueFullError, TooManyJobsError
from engine.scheduler import QueuedJob, Scheduler
from engine.types import Family, Operation, ResolvedRequest

BASE = ResolvedRequest(
    model="m",
    family=Family.SD15,
    operation=Operation.TXT2IMG,
    prompt="p",
    negative_prompt="",
    count=1,
    steps=4,
    guidance=7.0,
    width=64,
    height=64,
    scheduler="euler",
    seed=1,
    seed_was_explicit=True,
    strength=None,
    init_image=None,
    mask_image=None,
    preview_every=0,
)


def make_scheduler(
    max_images: int = 4, per_user: int = 100, total: int = 10_000, wait: float = 30.0
) -> Scheduler:
    return Scheduler(
        max_queued=total,
        max_queued_per_user=per_user,
        max_images_per_call=lambda _request: max_images,
        affinity_max_wait_s=wait,
    )


_ids = iter(range(10**9))


def job(user: str, now: float = 0.0, tier: int = 0, **changes: object) -> QueuedJob:
    request = dataclasses.replace(BASE, **changes)  # type: ignore[arg-type]
    return QueuedJob(f"{user}-{next(_ids)}", user, request, enqueued_at=now, tier=tier)


def test_heavy_user_delays_a_newcomer_by_at_most_one_batch() -> None:
    # Batches of one job each (every job its own size), so each dispatch is one turn.
    scheduler = make_scheduler(max_images=1)
    for i in range(20):
        scheduler.push(job("heavy", width=64 + 8 * i))
    for i in range(5):
        scheduler.push(job("medium", width=64 + 8 * i))
    first_batch = scheduler.next_batch(None, 0)
    assert first_batch[0].user_id == "heavy"
    newcomer = job("light")
    scheduler.push(newcomer)
    before_newcomer = []
    while (batch := scheduler.next_batch(None, 0)) != [newcomer]:
        before_newcomer.append(batch[0].user_id)
    # Only "medium", itself still waiting for a first turn, goes ahead; "heavy" never does.
    assert before_newcomer == ["medium"]


def test_three_users_skewed_load_alternate_turns() -> None:
    scheduler = make_scheduler(max_images=1)
    for i in range(20):
        scheduler.push(job("a", width=64 + 8 * i))
    for i in range(3):
        scheduler.push(job("b", width=64 + 8 * i))
    scheduler.push(job("c"))
    order = [scheduler.next_batch(None, 0)[0].user_id for _ in range(24)]
    assert order[:7] == ["a", "b", "c", "a", "b", "a", "b"]
    assert order[7:] == ["a"] * 17
    # In every window, nobody waited more than one batch behind the heavy user.
    first_c = order.index("c")
    assert order[:first_c].count("a") <= 1


def test_compatible_jobs_from_four_users_merge_into_one_batch() -> None:
    scheduler = make_scheduler(max_images=8)
    jobs = [job(f"user{i}", prompt=f"prompt {i}") for i in range(4)]
    for queued in jobs:
        scheduler.push(queued)
    assert scheduler.next_batch(None, 0) == jobs
    assert len(scheduler) == 0


def test_incompatible_jobs_do_not_merge() -> None:
    scheduler = make_scheduler(max_images=8)
    scheduler.push(job("a"))
    scheduler.push(job("b", steps=5))
    scheduler.push(job("c", width=128))
    scheduler.push(job("d", model="other"))
    scheduler.push(job("e", guidance=3.0))
    scheduler.push(job("f", scheduler="ddim"))
    batches = [scheduler.next_batch(None, 0) for _ in range(6)]
    assert all(len(batch) == 1 for batch in batches)


def test_batch_respects_image_budget_and_user_order() -> None:
    scheduler = make_scheduler(max_images=4)
    a1, a2, a3 = job("a", count=2), job("a", count=1), job("a", count=1)
    b1 = job("b", count=2)
    for queued in (a1, a2, a3, b1):
        scheduler.push(queued)
    # a1 then b1 (b's turn comes before a's second job), and that fills 4 images.
    assert scheduler.next_batch(None, 0) == [a1, b1]
    assert scheduler.next_batch(None, 0) == [a2, a3]


def test_batch_filling_keeps_each_users_order() -> None:
    scheduler = make_scheduler(max_images=8)
    a1 = job("a", steps=9)  # incompatible with the head
    a2 = job("a")
    b1 = job("b")
    for queued in (b1, a1, a2):
        scheduler.push(queued)
    # a2 is compatible with b1 but must not overtake a1.
    assert scheduler.next_batch(None, 0) == [b1]


def test_per_user_and_global_limits() -> None:
    scheduler = make_scheduler(per_user=2, total=3)
    scheduler.push(job("a"))
    scheduler.push(job("a"))
    with pytest.raises(TooManyJobsError, match="2 jobs waiting"):
        scheduler.push(job("a"))
    scheduler.push(job("b"))
    with pytest.raises(QueueFullError, match="queue is full"):
        scheduler.push(job("c"))


def test_removed_job_leaves_the_queue_at_once() -> None:
    scheduler = make_scheduler()
    first, second = job("a", steps=9), job("b")
    scheduler.push(first)
    scheduler.push(second)
    assert scheduler.positions() == {first.job_id: 1, second.job_id: 2}
    assert scheduler.remove(first.job_id) is first
    assert scheduler.positions() == {second.job_id: 1}
    assert scheduler.remove(first.job_id) is None


def test_higher_tier_runs_first() -> None:
    scheduler = make_scheduler(max_images=1)
    low = job("a", tier=0)
    high = job("b", tier=1, steps=9)
    scheduler.push(low)
    scheduler.push(high)
    assert scheduler.next_batch(None, 0) == [high]


def test_model_affinity_prefers_loaded_model_until_aging_limit() -> None:
    scheduler = make_scheduler(max_images=1, wait=10.0)
    other = job("a", now=0.0, model="other")
    loaded = job("b", now=1.0, model="loaded")
    scheduler.push(other)
    scheduler.push(loaded)
    assert scheduler.next_batch("loaded", now=5.0) == [loaded]
    scheduler.push(loaded2 := job("b", now=6.0, model="loaded"))
    # "other" has now waited 12 s > 10 s: it runs despite the loaded model.
    assert scheduler.next_batch("loaded", now=12.0) == [other]
    assert scheduler.next_batch("other", now=12.0) == [loaded2]


def test_positions_follow_round_robin_order() -> None:
    scheduler = make_scheduler(max_images=1)
    a = [job("a", steps=4 + i) for i in range(3)]
    b = job("b", steps=20)
    for queued in (*a, b):
        scheduler.push(queued)
    positions = scheduler.positions()
    assert positions[a[0].job_id] == 1
    assert positions[b.job_id] == 2
    assert positions[a[1].job_id] == 3
    assert positions[a[2].job_id] == 4
