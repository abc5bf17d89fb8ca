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


def result_bytes(result: JobResult) -> int:
    """Memory a cached result holds: its decoded images and the request's input images."""
    pixels = sum(
        len(img.image.getbands()) * img.image.width * img.image.height for img in result.images
    )
    inputs = len(result.request.init_image or b"") + len(result.request.mask_image or b"")
    return pixels + 2 * inputs  # the key holds the request's input images as well


class ResultCache:
    """LRU, bounded both by entries and by the bytes its results hold."""

    def __init__(self, max_entries: int, max_bytes: int = 512 * 2**20) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._entries: OrderedDict[CacheKey, tuple[JobResult, int]] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> JobResult | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[0]

    def put(self, key: CacheKey, result: JobResult) -> None:
        size = result_bytes(result)
        if self._max_entries <= 0 or size > self._max_bytes:
            return
        previous = self._entries.pop(key, None)
        if previous is not None:
            self._bytes -= previous[1]
        self._entries[key] = (result, size)
        self._bytes += size
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self._bytes -= evicted
