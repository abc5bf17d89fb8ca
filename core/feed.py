"""One job's events, read once from the engine and shared by every follower: the Discord
message that shows the job, any number of HTTP event streams, a client that reconnects.

Each event gets a sequence number (1, 2, ...), the id an event stream sends, so a client that
reconnects with the last id it saw gets what it missed. Progress and queue positions are
state, not history: a newer one replaces the one before it, so a slow or late follower skips
what is already out of date (and a long job's previews are never all kept), but never misses
a start, a model load, or the end.
"""

from __future__ import annotations

import asyncio
import functools
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from engine.engine import EngineStopped, JobHandle
from engine.types import TERMINAL_EVENTS, Event, Progress, Queued, ResolvedRequest

# Events that only say "where it is now": a newer one makes the one before it worthless.
_STATE_EVENTS = (Progress, Queued)


@dataclass(frozen=True, slots=True)
class FeedEvent:
    seq: int
    event: Event


class JobFeed:
    """Start with ``JobFeed.start(handle)``; follow with ``async for item in feed.follow()``."""

    def __init__(self, handle: JobHandle, *, on_end: Callable[[], object] | None = None) -> None:
        self.handle = handle
        # Told apart from the feed of the same job in an earlier run of the process, whose
        # sequence numbers a reconnecting client may still hold.
        self.epoch = secrets.token_hex(4)
        self._on_end = on_end
        self._kept: list[FeedEvent] = []
        self._seq = 0
        self._changed = asyncio.Condition()
        self._stopped: EngineStopped | None = None
        self._pump: asyncio.Task[None] | None = None  # held: a task nobody holds may vanish

    @classmethod
    def start(cls, handle: JobHandle, *, on_end: Callable[[], object] | None = None) -> JobFeed:
        """Read ``handle`` from now on; ``on_end`` is called once the job has ended."""
        feed = cls(handle, on_end=on_end)
        feed._pump = asyncio.create_task(feed._read(), name=f"feed-{handle.job_id}")
        return feed

    @property
    def request(self) -> ResolvedRequest:
        return self.handle.request

    @property
    def latest(self) -> FeedEvent | None:
        """The newest event: where the job is now."""
        return self._kept[-1] if self._kept else None

    def cancel(self) -> bool:
        """Cancel the job; False when it had already finished."""
        return self.handle.cancel()

    async def follow(self, after: int = 0) -> AsyncIterator[FeedEvent]:
        """The events after sequence number ``after`` (0: from the start, with superseded
        progress left out), then each new one, until the job ends (at once when ``after`` is
        already its end). Raises ``EngineStopped`` if the engine stops first."""
        cursor = after
        while True:
            async with self._changed:
                await self._changed.wait_for(functools.partial(self._has_after, cursor))
                pending = [item for item in self._kept if item.seq > cursor]
            for item in pending:
                cursor = item.seq
                yield item
                if isinstance(item.event, TERMINAL_EVENTS):
                    return
            if self._ended():
                return
            if self._stopped is not None:
                raise self._stopped

    def _ended(self) -> bool:
        return bool(self._kept) and isinstance(self._kept[-1].event, TERMINAL_EVENTS)

    def _has_after(self, cursor: int) -> bool:
        return (
            self._stopped is not None
            or self._ended()
            or bool(self._kept and self._kept[-1].seq > cursor)
        )

    async def _read(self) -> None:
        try:
            async for event in self.handle:
                await self._keep(event)
        except EngineStopped as stopped:
            async with self._changed:
                self._stopped = stopped
                self._changed.notify_all()
        finally:
            if self._on_end is not None:
                self._on_end()

    async def _keep(self, event: Event) -> None:
        async with self._changed:
            self._seq += 1
            last = self._kept[-1].event if self._kept else None
            if isinstance(event, _STATE_EVENTS) and type(last) is type(event):
                self._kept.pop()
            self._kept.append(FeedEvent(self._seq, event))
            self._changed.notify_all()
