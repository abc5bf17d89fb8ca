"""Results of seeded requests, by a digest of everything that decides their pixels, so that a
front process can answer a request another one already generated (the engine's own cache is
per process). An entry points at the job whose stored images are the answer, with the image
check's scores, which the images table does not keep; it goes with the job."""

from __future__ import annotations

import json
from dataclasses import dataclass

from ._base import Context
from .clock import to_db
from .errors import InvalidInput


@dataclass(frozen=True, slots=True)
class CachedResult:
    job_id: str
    scores: tuple[float | None, ...]  # one per image, in order; None: not checked


class ResultCacheRepository:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def remember(self, key: str, job_id: str, scores: list[float | None]) -> None:
        """``job_id``'s images answer ``key`` from now on (the newest job wins)."""
        if len(key) != 64:
            raise InvalidInput("a result key is a SHA-256 digest in hex")
        now = to_db(self._ctx.now())
        async with self._ctx.write() as tx:
            await tx.run(
                "INSERT INTO result_cache (key, job_id, scores, created_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET job_id = excluded.job_id,"
                " scores = excluded.scores, created_at = excluded.created_at",
                (key, job_id, json.dumps(scores), now),
            )

    async def find(self, key: str) -> CachedResult | None:
        """The finished, visible job that answers ``key``, if any."""
        async with self._ctx.read() as tx:
            row = await tx.one(
                "SELECT r.job_id, r.scores FROM result_cache r JOIN jobs j ON j.id = r.job_id"
                " WHERE r.key = ? AND j.status = 'done' AND j.hidden_at IS NULL",
                (key,),
            )
        if row is None:
            return None
        return CachedResult(row[0], tuple(json.loads(row[1])))
