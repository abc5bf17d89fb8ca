"""Quotas: policy resolution, atomic spending under concurrency, refunds, resets."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from storage_helpers import (
    START,
    both_backends,  # noqa: F401  (the fixture "backend": SQLite, PostgreSQL)
    job_spec,
)

from core.storage import (
    Database,
    InvalidInput,
    LimitKind,
    ManualClock,
    PolicySource,
    Priority,
    QuotaExceeded,
    QuotaPolicy,
    QuotaScope,
    StorageUserError,
)

REPO = Path(__file__).resolve().parents[2]
MIDNIGHT = dt.datetime(2025, 3, 11, tzinfo=dt.UTC)


# --- policy resolution ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_policy_resolution_order(db: Database) -> None:
    quotas = db.quotas
    policy = await quotas.effective_policy(100, 1, [10, 11])
    assert policy == QuotaPolicy(200, 2, PolicySource.DEFAULT)

    await quotas.set_policy(100, QuotaScope.GUILD, daily_images=20, concurrent_jobs=1)
    assert await quotas.effective_policy(100, 1, [10]) == QuotaPolicy(20, 1, PolicySource.GUILD)

    await quotas.set_policy(100, QuotaScope.ROLE, 10, daily_images=50, concurrent_jobs=1)
    await quotas.set_policy(100, QuotaScope.ROLE, 11, daily_images=30, concurrent_jobs=3)
    await quotas.set_policy(100, QuotaScope.ROLE, 12, daily_images=None, concurrent_jobs=0)
    # Most generous of each limit among the user's roles.
    assert await quotas.effective_policy(100, 1, [10, 11]) == QuotaPolicy(50, 3, PolicySource.ROLE)
    assert await quotas.effective_policy(100, 1, [10, 12]) == QuotaPolicy(
        None, 1, PolicySource.ROLE
    )
    # A role override replaces the guild default, even when stricter.
    await quotas.set_policy(100, QuotaScope.ROLE, 13, daily_images=5, concurrent_jobs=1)
    assert await quotas.effective_policy(100, 1, [13]) == QuotaPolicy(5, 1, PolicySource.ROLE)
    # Roles the user does not hold do not count.
    assert (await quotas.effective_policy(100, 1, [99])).source is PolicySource.GUILD

    await quotas.set_policy(100, QuotaScope.USER, 1, daily_images=2, concurrent_jobs=None)
    assert await quotas.effective_policy(100, 1, [10, 11, 12]) == QuotaPolicy(
        2, None, PolicySource.USER
    )
    # Overrides are per guild.
    assert (await quotas.effective_policy(999, 1, [10])).source is PolicySource.DEFAULT

    assert await quotas.clear_policy(100, QuotaScope.USER, 1)
    assert not await quotas.clear_policy(100, QuotaScope.USER, 1)
    assert (await quotas.effective_policy(100, 1, [11])).source is PolicySource.ROLE
    overrides = await quotas.list_overrides(100)
    assert [o.scope for o in overrides] == ["guild", "role", "role", "role", "role"]


@pytest.mark.asyncio
async def test_direct_messages_have_their_own_policies(db: Database) -> None:
    await db.quotas.set_policy(None, QuotaScope.GUILD, daily_images=3, concurrent_jobs=1)
    assert await db.quotas.effective_policy(None, 1, [10]) == QuotaPolicy(3, 1, PolicySource.GUILD)
    await db.quotas.set_policy(None, QuotaScope.USER, 1, daily_images=9)
    assert await db.quotas.effective_policy(None, 1) == QuotaPolicy(9, 1, PolicySource.USER)


@pytest.mark.asyncio
async def test_set_policy_keeps_unnamed_limits(db: Database) -> None:
    await db.quotas.set_policy(100, QuotaScope.GUILD, daily_images=20, concurrent_jobs=4)
    role = await db.quotas.set_policy(100, QuotaScope.ROLE, 10, daily_images=50, updated_by=5)
    assert (role.daily_images, role.concurrent_jobs, role.updated_by) == (50, 4, 5)
    role = await db.quotas.set_policy(100, QuotaScope.ROLE, 10, concurrent_jobs=None)
    assert (role.daily_images, role.concurrent_jobs) == (50, None)
    assert await db.quotas.get_override(100, QuotaScope.ROLE, 10) == role
    guild = await db.quotas.set_policy(100, QuotaScope.GUILD, daily_images=7)
    assert (guild.daily_images, guild.concurrent_jobs, guild.target_id) == (7, 4, 100)
    fresh = await db.quotas.set_policy(200, QuotaScope.GUILD, daily_images=1)
    assert fresh.concurrent_jobs == 2  # from the built-in default
    with pytest.raises(InvalidInput):
        await db.quotas.set_policy(100, QuotaScope.USER, 1, daily_images=-1)
    with pytest.raises(ValueError):
        await db.quotas.set_policy(100, QuotaScope.USER, None, daily_images=1)
    with pytest.raises(InvalidInput):
        QuotaPolicy(-1, None)


@pytest.mark.asyncio
async def test_priority_is_resolved_with_the_policy(db: Database) -> None:
    quotas = db.quotas
    assert (await quotas.effective_policy(100, 1)).priority is Priority.NORMAL
    await quotas.set_policy(100, QuotaScope.GUILD, priority=Priority.LOW)
    assert (await quotas.effective_policy(100, 1)).priority is Priority.LOW
    # A role override starts from the guild default's priority until it names its own.
    role = await quotas.set_policy(100, QuotaScope.ROLE, 10, daily_images=9)
    assert role.priority is Priority.LOW
    await quotas.set_policy(100, QuotaScope.ROLE, 11, daily_images=3, priority=Priority.HIGH)
    # Among the user's roles the highest priority wins, like the most generous limit.
    both = await quotas.effective_policy(100, 1, [10, 11])
    assert (both.priority, both.daily_images, both.source) == (Priority.HIGH, 9, "role")
    # Changing only the limits keeps the priority.
    role = await quotas.set_policy(100, QuotaScope.ROLE, 11, daily_images=4)
    assert role.priority is Priority.HIGH
    # A user's own override wins over their roles, downwards too.
    await quotas.set_policy(100, QuotaScope.USER, 1, priority=Priority.NORMAL)
    assert (await quotas.effective_policy(100, 1, [11])).priority is Priority.NORMAL
    with pytest.raises(InvalidInput, match="low, normal, high"):
        await quotas.set_policy(100, QuotaScope.USER, 1, priority=5)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        QuotaPolicy(None, None, priority=2)  # type: ignore[arg-type]


# --- spending ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_daily_limit(db: Database, clock: ManualClock) -> None:
    policy = QuotaPolicy(daily_images=5, concurrent_jobs=None)
    await db.create_job(job_spec(image_count=4), policy)
    with pytest.raises(QuotaExceeded) as caught:
        await db.create_job(job_spec(image_count=2), policy)
    error = caught.value
    assert isinstance(error, StorageUserError)
    assert error.limit_kind is LimitKind.DAILY_IMAGES
    assert (error.limit, error.used, error.requested, error.remaining) == (5, 4, 2, 1)
    assert error.resets_at == MIDNIGHT
    assert "1 of your 5" in str(error) and "00:00 UTC" in str(error)
    await db.create_job(job_spec(image_count=1), policy)  # exactly the limit is fine
    with pytest.raises(QuotaExceeded, match="used all 5"):
        await db.create_job(job_spec(image_count=1), policy)

    usage = await db.quotas.usage(100, 1, policy=policy)
    assert (usage.used, usage.remaining, usage.daily_limit) == (5, 0, 5)
    assert usage.resets_at == MIDNIGHT and usage.day == dt.date(2025, 3, 10)
    # Another guild has its own count.
    await db.create_job(job_spec(guild_id=555, image_count=5), policy)

    clock.set(MIDNIGHT)  # a new UTC day
    usage = await db.quotas.usage(100, 1, policy=policy)
    assert (usage.used, usage.remaining) == (0, 5)
    assert usage.resets_at == MIDNIGHT + dt.timedelta(days=1)
    await db.create_job(job_spec(image_count=5), policy)


@pytest.mark.asyncio
async def test_concurrent_job_limit(db: Database) -> None:
    policy = QuotaPolicy(daily_images=None, concurrent_jobs=2)
    first = await db.create_job(job_spec(), policy)
    second = await db.create_job(job_spec(guild_id=555), policy)  # counted in every guild
    with pytest.raises(QuotaExceeded) as caught:
        await db.create_job(job_spec(), policy)
    assert caught.value.limit_kind is LimitKind.CONCURRENT_JOBS
    assert (caught.value.limit, caught.value.used, caught.value.resets_at) == (2, 2, None)
    assert "2 unfinished jobs" in str(caught.value)
    await db.jobs.mark_running(first.id)
    with pytest.raises(QuotaExceeded):
        await db.create_job(job_spec(), policy)
    await db.jobs.mark_done(first.id)
    third = await db.create_job(job_spec(), policy)
    await db.jobs.mark_cancelled(second.id)
    await db.create_job(job_spec(), policy)
    assert await db.jobs.count_active(1) == 2
    assert third.id
    # Another user is not affected.
    await db.create_job(job_spec(user_id=2), policy)
    assert (await db.quotas.usage(100, 1, policy=policy)).active_jobs == 2


@pytest.mark.asyncio
async def test_zero_limits_block(db: Database) -> None:
    with pytest.raises(QuotaExceeded):
        await db.create_job(job_spec(), QuotaPolicy(0, None))
    with pytest.raises(QuotaExceeded):
        await db.create_job(job_spec(), QuotaPolicy(None, 0))
    assert await db.jobs.unfinished() == []


@pytest.mark.asyncio
async def test_refunds_are_idempotent(db: Database) -> None:
    policy = QuotaPolicy(daily_images=4, concurrent_jobs=None)
    job = await db.create_job(job_spec(image_count=4), policy)
    assert (await db.quotas.usage(100, 1, policy=policy)).remaining == 0
    await db.jobs.mark_failed(job.id, "boom")
    assert (await db.quotas.usage(100, 1, policy=policy)).remaining == 4
    assert not await db.quotas.refund(job.id)  # already refunded by mark_failed
    assert not await db.quotas.refund(job.id)
    assert (await db.quotas.usage(100, 1, policy=policy)).used == 0

    other = await db.create_job(job_spec(image_count=3), policy)
    assert await db.quotas.refund(other.id)  # explicit refund first...
    await db.jobs.mark_cancelled(other.id)  # ...then the cancel's refund is a no-op
    assert (await db.quotas.usage(100, 1, policy=policy)).used == 0
    assert not await db.quotas.refund("no-such-job")

    done = await db.create_job(job_spec(image_count=2), policy)
    await db.jobs.mark_done(done.id)
    assert (await db.quotas.usage(100, 1, policy=policy)).used == 2  # done jobs stay spent


@pytest.mark.asyncio
async def test_refund_counts_on_the_day_of_the_spend(db: Database, clock: ManualClock) -> None:
    policy = QuotaPolicy(daily_images=4, concurrent_jobs=None)
    job = await db.create_job(job_spec(image_count=4), policy)
    clock.set(MIDNIGHT + dt.timedelta(hours=1))
    await db.create_job(job_spec(image_count=4), policy)
    await db.jobs.mark_failed(job.id, "late failure")  # yesterday's job
    usage = await db.quotas.usage(100, 1, policy=policy)
    assert usage.used == 4  # today's spend stands; yesterday's refund does not add credit


@pytest.mark.asyncio
async def test_reset_usage(db: Database) -> None:
    policy = QuotaPolicy(daily_images=4, concurrent_jobs=None)
    pending = await db.create_job(job_spec(image_count=3), policy)
    assert await db.quotas.reset_usage(100, 1, reset_by=42) == 3
    usage = await db.quotas.usage(100, 1, policy=policy)
    assert (usage.used, usage.remaining) == (0, 4)
    # Refunding a job spent before the reset must not give extra credit.
    await db.jobs.mark_failed(pending.id, "boom")
    assert (await db.quotas.usage(100, 1, policy=policy)).used == 0
    await db.create_job(job_spec(image_count=4), policy)
    with pytest.raises(QuotaExceeded):
        await db.create_job(job_spec(image_count=1), policy)
    assert await db.quotas.reset_usage(100, 2) == 0


# --- concurrency ------------------------------------------------------------------------


async def _spend(db: Database, policy: QuotaPolicy, user_id: int = 1) -> bool:
    try:
        await db.create_job(job_spec(user_id=user_id, image_count=1), policy)
    except QuotaExceeded:
        return False
    return True


@pytest.mark.asyncio
async def test_200_concurrent_spends_never_exceed_the_limit(db: Database) -> None:
    policy = QuotaPolicy(daily_images=37, concurrent_jobs=None)
    results = await asyncio.gather(*(_spend(db, policy) for _ in range(200)))
    assert sum(results) == 37
    usage = await db.quotas.usage(100, 1, policy=policy)
    assert usage.used == 37 and usage.remaining == 0
    assert len(await db.jobs.unfinished()) == 37


@pytest.mark.asyncio
async def test_concurrent_spends_over_several_connections(
    db_location: Path | str, clock: ManualClock
) -> None:
    """200 spends at once through 4 databases (4 pools of connections on PostgreSQL, whose
    transactions run at once; 4 writer connections on SQLite) never pass the limit."""
    policy = QuotaPolicy(daily_images=23, concurrent_jobs=None)
    databases = [await Database.open(db_location, clock=clock) for _ in range(4)]
    try:
        results = await asyncio.gather(*(_spend(databases[n % 4], policy) for n in range(200)))
        assert sum(results) == 23
        assert (await databases[0].quotas.usage(100, 1, policy=policy)).used == 23
    finally:
        for database in databases:
            await database.close()


@pytest.mark.asyncio
async def test_concurrent_job_limit_under_concurrency(db: Database) -> None:
    policy = QuotaPolicy(daily_images=None, concurrent_jobs=3)
    results = await asyncio.gather(*(_spend(db, policy) for _ in range(50)))
    assert sum(results) == 3
    assert await db.jobs.count_active(1) == 3


SPENDER = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, sys.argv[2])
    sys.path.insert(0, sys.argv[3])
    from core.storage import Database, QuotaExceeded, QuotaPolicy, ManualClock
    from storage_helpers import START, job_spec

    async def main():
        db = await Database.open(sys.argv[1], clock=ManualClock(START))
        ok = 0
        async def one():
            nonlocal ok
            try:
                await db.create_job(job_spec(image_count=1), QuotaPolicy(41, None))
                ok += 1
            except QuotaExceeded:
                pass
        await asyncio.gather(*(one() for _ in range(40)))
        await db.close()
        print(ok)

    asyncio.run(main())
    """
)


def run_spenders(db_path: Path | str, count: int) -> int:
    """Run ``count`` spender processes at once; return how many spends they were granted."""
    here = str(Path(__file__).parent)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", SPENDER, str(db_path), str(REPO), here],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        for _ in range(count)
    ]
    granted = 0
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        granted += int(out.strip())
    return granted


@pytest.mark.asyncio
async def test_concurrent_spends_from_several_processes(db_location: Path | str) -> None:
    """Several front processes (4 × 40 spends at once) never pass the limit together."""
    async with Database.open(db_location):
        pass  # create and migrate once, so the processes race on spending only
    granted = await asyncio.to_thread(run_spenders, db_location, 4)
    assert granted == 41
    async with Database.open(db_location, clock=ManualClock(START)) as db:
        assert (await db.quotas.usage(100, 1)).used == 41
