"""Results of fully specified requests, so an identical request never touches the GPU again."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

from engine.types import JobResult, ResolvedRequest

CacheKey = ResolvedRequest


def cache_key(request: ResolvedRequest) -> CacheKey | None:
    """The key under which a request's result may be shared, or None if it must not be.

    A request without an explicit seed asked for something new each time, so it is never
    answered from (or merged with) another request. Preview cadence does not change pixels.
    """
    if not request.seed_was_explicit:
        return None
    return dataclasses.replace(request, preview_every=0)


class ResultCache:
    def __init__(self, max_entries: int) -> None:
        self._max_entries = max_entries
        self._entries: OrderedDict[CacheKey, JobResult] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> JobResult | None:
        result = self._entries.get(key)
        if result is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return result

    def put(self, key: CacheKey, result: JobResult) -> None:
        if self._max_entries <= 0:
            return
        self._entries[key] = result
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
