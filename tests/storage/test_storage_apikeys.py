"""API keys are accounts: shown once, kept as a hash, revoked at once; jobs remember their
front door, and a restart resumes only the jobs of the front doors that are running."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from storage_helpers import (
    both_backends,  # noqa: F401  (the fixture "backend": SQLite, PostgreSQL)
    job_spec,
)

from core.storage import Database, InvalidInput, NotFound, QuotaPolicy

pytestmark = pytest.mark.asyncio
FREE = QuotaPolicy.unlimited()


async def test_a_key_is_shown_once_and_kept_only_as_a_hash(db: Database, db_path: Path) -> None:
    record, secret = await db.api_keys.create("  my   script ")
    assert secret.startswith("dc_") and len(secret) > 40
    assert record.name == "my script" and record.prefix == secret[:10] and record.active
    assert record.user_id < 0  # no Discord user has it
    stored = b"".join(p.read_bytes() for p in db_path.parent.glob(db_path.name + "*"))
    assert secret.encode() not in stored and secret[10:].encode() not in stored
    assert await db.api_keys.authenticate(secret) == record
    assert await db.api_keys.authenticate(secret + "x") is None
    assert await db.api_keys.authenticate("not-even-our-format") is None


async def test_each_key_is_its_own_account_and_revoking_is_immediate(db: Database) -> None:
    first, first_secret = await db.api_keys.create("a")
    second, second_secret = await db.api_keys.create("b")
    assert first.user_id != second.user_id and {first.user_id, second.user_id} < {-1, -2, -3}
    revoked = await db.api_keys.revoke(first.id)
    assert not revoked.active
    assert await db.api_keys.authenticate(first_secret) is None
    assert await db.api_keys.authenticate(second_secret) == second
    assert (await db.api_keys.revoke(first.id)).revoked_at == revoked.revoked_at
    assert [key.name for key in await db.api_keys.all()] == ["a", "b"]
    with pytest.raises(NotFound):
        await db.api_keys.revoke(999)
    with pytest.raises(InvalidInput):
        await db.api_keys.create("   ")


async def test_jobs_remember_their_front_door_and_resume_by_it(db: Database) -> None:
    key, _ = await db.api_keys.create("script")
    from_api = await db.create_job(job_spec(user_id=key.user_id, source="api"), FREE)
    from_discord = await db.create_job(job_spec(), FREE)
    assert (from_api.source, from_discord.source) == ("api", "discord")
    only_api = await db.jobs.resume_unfinished(sources={"api"})
    assert [job.id for job in only_api.resumed] == [from_api.id]
    everything = await db.jobs.resume_unfinished()
    assert {job.id for job in everything.resumed} == {from_api.id, from_discord.id}


@pytest.mark.asyncio
async def test_accounts_drawn_at_once_by_several_processes_are_distinct(
    db_location: Path | str,
) -> None:
    databases = [await Database.open(db_location) for _ in range(3)]
    try:
        made = await asyncio.gather(
            *(databases[n % 3].api_keys.create(f"key {n}") for n in range(30))
        )
    finally:
        for database in databases:
            await database.close()
    assert len({key.user_id for key, _ in made}) == 30
