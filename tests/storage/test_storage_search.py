"""History search: the full-text index finds prompts by words, whatever their case, accents
or order, and no user text is ever read as query syntax."""

from __future__ import annotations

import pytest
from storage_helpers import (
    both_backends,  # noqa: F401  (the fixture "backend": SQLite, PostgreSQL)
    job_spec,
)

from core.storage import Database, QuotaPolicy

pytestmark = pytest.mark.asyncio
FREE = QuotaPolicy.unlimited()


async def test_history_search_is_by_words_whatever_the_case_accents_or_syntax(
    db: Database,
) -> None:
    for prompt in ("A Café in Paris at night", "castle on a hill", "a CASTLE made of café crème"):
        await db.create_job(job_spec(prompt=prompt), FREE)
    await db.create_job(job_spec(user_id=2, prompt="someone else's castle"), FREE)

    async def found(text: str) -> list[str]:
        return sorted(entry.job.prompt for entry in (await db.jobs.history(1, text=text)).items)

    assert await found("castle") == ["a CASTLE made of café crème", "castle on a hill"]
    assert await found("CAFE") == ["A Café in Paris at night", "a CASTLE made of café crème"]
    assert await found("cafe cas") == ["a CASTLE made of café crème"]  # every word; last a prefix
    assert await found("hill castle") == ["castle on a hill"]  # any order
    for hostile in ('"', "castle OR", "NEAR(", "*", "prompt:castle", "a) OR (b", ""):
        await found(hostile)  # never a query syntax error
    assert await found("") == []
