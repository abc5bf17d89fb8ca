"""Where the engine's pipeline calls run.

The engine keeps the queue, the fairness and the batching decisions; a ``Device`` only runs
the batch it is handed. ``LocalDevice`` is this process's GPU (or CPU) behind one worker
thread, the default. ``engine.replicas.RayDevice`` is a replica on a Ray cluster. The
engine serves one lane per device, so adding devices adds throughput without changing what
callers see.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Protocol, TypeVar

from engine.safety import ImageCheck
from engine.types import Backend, GeneratedImage, ImageSlot, ResolvedRequest, StepCallback

T = TypeVar("T")

# What a device returns per slot: the image, a user-facing failure, or None (cancelled).
SlotOutput = GeneratedImage | str | None


class DeviceLost(Exception):
    """The device went away during a call: a replica's process or its machine died. Nothing
    of the call is kept, so its jobs can run again on another device."""


class Device(Protocol):
    name: str

    async def start(self) -> None:
        """Get ready to run; raises if the device cannot be reached."""
        ...

    def is_loaded(self, model: str) -> bool: ...

    async def load(self, model: str, on_detail: Callable[[str], None]) -> None:
        """Load ``model``. ``on_detail`` gets progress text; it may be called from any thread."""
        ...

    async def run(
        self, request: ResolvedRequest, slots: list[ImageSlot], on_step: StepCallback
    ) -> list[SlotOutput]:
        """One pipeline call, as ``Backend.run``, with each image's check score filled in.
        ``on_step`` may be called from any thread. Raises ``DeviceLost``."""
        ...

    async def recover(self) -> None:
        """After ``DeviceLost``: return once the device can take work again."""
        ...

    async def close(self) -> None:
        """Stop; wait (boundedly) for a call still running so the hardware is free."""
        ...


class LocalDevice:
    """The backend in this process, on one worker thread.

    One thread runs every pipeline call and load: torch keeps a thread pool per calling
    thread, and two pools on a small CPU slow each other down.
    """

    name = "local"

    def __init__(self, backend: Backend, image_check: ImageCheck | None = None) -> None:
        self._backend = backend
        # Scores every image of each pipeline call, on the device thread right after it.
        self._image_check = image_check
        # One pipeline call at a time, even if a restarted lane overlaps an orphaned thread.
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        if (start_loading := getattr(self._image_check, "start_loading", None)) is not None:
            start_loading()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")

    def is_loaded(self, model: str) -> bool:
        return self._backend.is_loaded(model)

    async def load(self, model: str, on_detail: Callable[[str], None]) -> None:
        await self._on_device(self._backend.load, model, on_detail)

    async def run(
        self, request: ResolvedRequest, slots: list[ImageSlot], on_step: StepCallback
    ) -> list[SlotOutput]:
        return await self._on_device(self._run_locked, request, slots, on_step)

    async def recover(self) -> None:
        return None  # this process is the device: it cannot be lost and go on

    async def close(self) -> None:
        acquired = await asyncio.to_thread(self._lock.acquire, True, 30.0)
        if acquired:
            self._lock.release()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    async def _on_device(self, function: Callable[..., T], *args: object) -> T:
        assert self._executor is not None, "the device is not started"
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    def _run_locked(
        self, request: ResolvedRequest, slots: list[ImageSlot], on_step: StepCallback
    ) -> list[SlotOutput]:
        with self._lock:
            return checked(self._backend.run(request, slots, on_step), self._image_check)


def checked(outputs: list[GeneratedImage | None], check: ImageCheck | None) -> list[SlotOutput]:
    """``outputs`` with each image's check score, all images scored in one batch."""
    if check is None:
        return list(outputs)
    made = [output for output in outputs if output is not None]
    scores = iter(check.scores([output.image for output in made]))
    return [
        None if output is None else replace(output, nsfw_score=next(scores)) for output in outputs
    ]
