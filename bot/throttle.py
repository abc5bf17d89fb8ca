"""Message edits paced for Discord: one per interval at most, only on change, last never lost."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

S = TypeVar("S")


class ThrottledEditor(Generic[S]):
    """Sends the latest state at most once per ``interval`` seconds.

    Intermediate states are coalesced (only the newest matters for a progress message) and a
    state equal to the one last sent is skipped. ``finish`` sends the final state after the
    interval has passed, and its errors reach the caller, which must not lose a result.
    """

    def __init__(
        self,
        send: Callable[[S], Awaitable[None]],
        interval: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._send = send
        self._interval = interval
        self._clock = clock
        self._pending: S | None = None
        self._sent: S | None = None
        self._last_sent_at: float | None = None
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.edits = 0

    def update(self, state: S) -> None:
        self._pending = state
        self._changed.set()
        if self._task is None:
            self._task = asyncio.create_task(self._pump(), name="throttled-editor")

    @property
    def pending(self) -> S | None:
        return self._pending

    async def finish(self, state: S) -> None:
        await self.finish_with(lambda: self._send(state))
        self._sent = state

    async def finish_with(self, send: Callable[[], Awaitable[None]]) -> None:
        """Stop progress edits and make a last, different edit when the pacing allows."""
        # Holding the lock waits for an edit in flight (so it cannot overtake the final one)
        # and keeps the pump from starting another before it is cancelled.
        async with self._lock:
            if self._task is not None:
                self._task.cancel()
            await self._wait_for_slot()
            await send()
            self._last_sent_at = self._clock()
            self.edits += 1

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _wait_for_slot(self) -> None:
        if self._last_sent_at is not None:
            delay = self._last_sent_at + self._interval - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)

    def _mark_sent(self, state: S) -> None:
        self._sent = state
        self._last_sent_at = self._clock()
        self.edits += 1

    async def _pump(self) -> None:
        while True:
            await self._changed.wait()
            await self._wait_for_slot()
            self._changed.clear()
            state = self._pending
            if state is None or state == self._sent:
                continue
            async with self._lock:
                try:
                    await self._send(state)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    # A lost progress edit is harmless; the next one or the final one follows.
                    log.warning("progress edit failed", exc_info=True)
                self._mark_sent(state)
