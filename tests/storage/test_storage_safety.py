"""The image check's records: server and channel actions, the audit log, held-back images kept
out of the job until released, and their quota given back."""

from __future__ import annotations

import datetime as dt

import pytest
from storage_helpers import (
    both_backends,  # noqa: F401  (the fixture "backend": SQLite, PostgreSQL)
    job_spec,
    make_png,
)

from core.storage import Database, GeneratedImage, ManualClock
from core.storage.errors import InvalidInput
from core.storage.records import (
    Flag,
    FlagAction,
    QuotaPolicy,
    SafetyAction,
    SafetyPolicy,
)
from core.storage.safety import EntryNotFound

pytestmark = pytest.mark.asyncio
GUILD, CHANNEL, OTHER_CHANNEL, MOD = 100, 200, 300, 9


async def finished_job(db: Database, flags: list[Flag], count: int = 3) -> str:
    job = await db.create_job(
        job_spec(image_count=count), QuotaPolicy(daily_images=10, concurrent_jobs=5)
    )
    await db.jobs.mark_running(job.id)
    outputs = [GeneratedImage(i, 10 + i, make_png(10 + i)) for i in range(count)]
    done = await db.complete_job(job.id, outputs, flags=flags)
    assert done.job.id == job.id
    return job.id


async def test_the_server_action_defaults_to_block_and_channels_override_it(db: Database) -> None:
    assert await db.safety.policy(GUILD) == SafetyPolicy(SafetyAction.BLOCK)
    assert await db.safety.policy(None) == SafetyPolicy(SafetyAction.BLOCK)

    policy = await db.safety.set_action(GUILD, SafetyAction.BLUR, by=MOD)
    assert policy.action is SafetyAction.BLUR and policy.customised
    policy = await db.safety.set_action(GUILD, SafetyAction.BLOCK, channel_id=CHANNEL, by=MOD)
    assert policy.action_in(CHANNEL) is SafetyAction.BLOCK
    assert policy.action_in(OTHER_CHANNEL) is SafetyAction.BLUR
    assert policy.action_in(None) is SafetyAction.BLUR

    policy = await db.safety.set_action(GUILD, None, channel_id=CHANNEL)
    assert policy.action_in(CHANNEL) is SafetyAction.BLUR and dict(policy.channels) == {}
    policy = await db.safety.set_action(GUILD, None)
    assert policy == SafetyPolicy(SafetyAction.BLOCK)
    assert await db.safety.policy(GUILD + 1) == SafetyPolicy(SafetyAction.BLOCK)


async def test_a_blocked_image_is_kept_out_of_the_job_and_not_charged(db: Database) -> None:
    job_id = await finished_job(
        db, [Flag(1, 0.91, FlagAction.BLOCKED), Flag(2, 0.8, FlagAction.BLURRED)]
    )
    images = await db.images.for_job(job_id)
    assert [image.index for image in images] == [0, 2]
    usage = await db.quotas.usage(GUILD, 1)
    assert usage.used == 2  # three made, one held back

    entries = await db.safety.for_job(job_id)
    assert [(e.index, e.action, e.held) for e in entries] == [
        (1, FlagAction.BLOCKED, True),
        (2, FlagAction.BLURRED, False),
    ]
    assert entries[0].prompt == "a cat" and entries[0].score == pytest.approx(0.91)
    assert entries[0].user_id == 1 and entries[0].channel_id == CHANNEL
    assert entries[0].seed == 11
    log = await db.safety.log(GUILD)
    assert [e.index for e in log] == [2, 1]  # newest first
    assert await db.safety.log(GUILD + 1) == []


async def test_a_job_without_flags_has_no_entries(db: Database) -> None:
    job_id = await finished_job(db, [])
    assert len(await db.images.for_job(job_id)) == 3
    assert await db.safety.for_job(job_id) == ()
    assert (await db.quotas.usage(GUILD, 1)).used == 3


async def test_a_moderator_releases_a_blocked_image_once(db: Database) -> None:
    job_id = await finished_job(
        db, [Flag(0, 0.99, FlagAction.BLOCKED), Flag(1, 0.75, FlagAction.BLURRED)]
    )
    blocked, blurred = await db.safety.for_job(job_id)

    with pytest.raises(EntryNotFound):
        await db.safety.release(blocked.id, GUILD + 1, by=MOD)  # another server's entry
    entry, image = await db.safety.release(blocked.id, GUILD, by=MOD)
    assert entry.released_by == MOD and entry.released_at is not None and not entry.held
    assert image.index == 0 and image.seed == 10
    assert [i.index for i in await db.images.for_job(job_id)] == [0, 1, 2]
    assert await db.images.files.get(image.file_key) == make_png(10)

    with pytest.raises(InvalidInput, match="released already"):
        await db.safety.release(blocked.id, GUILD, by=MOD)
    with pytest.raises(InvalidInput, match="blurred"):
        await db.safety.release(blurred.id, GUILD, by=MOD)


async def test_the_file_sweep_keeps_a_held_image(db: Database, clock: ManualClock) -> None:
    job_id = await finished_job(db, [Flag(0, 0.99, FlagAction.BLOCKED)], count=1)
    # Past the files' grace (their times are the file system's, not the manual clock's).
    clock.now = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    report = await db.cleanup(older_than_days=1)
    assert report.orphan_files_deleted == 0
    (entry,) = await db.safety.for_job(job_id)
    _, image = await db.safety.release(entry.id, GUILD, by=MOD)
    assert await db.images.files.get(image.file_key) == make_png(10)
