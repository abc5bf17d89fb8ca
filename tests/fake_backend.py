"""A Backend that simulates pipeline calls, for engine tests where a failure must be forced.

It keeps the real contract (one call per batch, per-step callbacks, cancellation dropping
slots, Interrupted and OutOfMemory) so the engine is exercised as it is with diffusers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from PIL import Image

from engine.errors import Interrupted, OutOfMemory, ValidationError
from engine.types import (
    Family,
    GeneratedImage,
    GenerationRequest,
    ImageSlot,
    ResolvedRequest,
    StepCallback,
    StepInfo,
    preview_due,
)


class SimulatedCrash(BaseException):  # not an Exception: it kills the worker task
    """Escapes the engine's per-batch error handling, like a bug in the worker would."""


@dataclass
class FakeBackend:
    step_seconds: float = 0.01
    load_seconds: float = 0.0
    oom_above: int | None = None  # a call with more slots than this runs out of memory
    fail_with: Exception | None = None
    crashes_left: int = 0
    calls: list[list[ImageSlot]] = field(default_factory=list)
    loads: list[str] = field(default_factory=list)
    loaded: set[str] = field(default_factory=set)
    step_hook: Callable[[int], None] | None = None
    started: threading.Event = field(default_factory=threading.Event)

    def resolve(self, request: GenerationRequest) -> ResolvedRequest:
        if not request.prompt.strip():
            raise ValidationError("Please write a prompt.")
        return ResolvedRequest(
            model=request.model or "fake",
            family=Family.SD15,
            operation=request.operation,
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            count=request.count,
            steps=request.steps or 4,
            guidance=request.guidance if request.guidance is not None else 7.0,
            width=request.width or 64,
            height=request.height or 64,
            scheduler=request.scheduler or "euler",
            seed=request.seed if request.seed is not None else int(time.time_ns() % 2**32),
            seed_was_explicit=request.seed is not None,
            strength=request.strength,
            init_image=request.init_image,
            mask_image=request.mask_image,
            preview_every=request.preview_every,
        )

    def is_loaded(self, model: str) -> bool:
        return model in self.loaded

    def load(self, model: str, on_progress: Callable[[str], None] | None = None) -> None:
        if on_progress:
            on_progress("downloading 50%")
        time.sleep(self.load_seconds)
        self.loads.append(model)
        self.loaded = {model}

    def run(
        self, request: ResolvedRequest, slots: list[ImageSlot], on_step: StepCallback
    ) -> list[GeneratedImage | None]:
        self.calls.append(list(slots))
        self.started.set()
        if self.crashes_left:
            self.crashes_left -= 1
            raise SimulatedCrash
        if self.fail_with is not None:
            raise self.fail_with
        if self.oom_above is not None and len(slots) > self.oom_above:
            raise OutOfMemory
        live = {slot.job_id for slot in slots}
        for step in range(1, request.steps + 1):
            time.sleep(self.step_seconds)
            if self.step_hook:
                self.step_hook(step)
            previews = {
                s.job_id: Image.new("RGB", (8, 8))
                for s in slots
                if s.index == 0 and preview_due(step, request.steps, s.preview_every)
            }
            cancelled = on_step(StepInfo(step, request.steps, previews))
            live -= cancelled
            if not live:
                raise Interrupted
        return [
            GeneratedImage(
                Image.new("RGB", (request.width, request.height), (slot.seed % 256, 0, 0)),
                slot.seed,
                f"{slot.prompt}\nSeed: {slot.seed}",
            )
            if slot.job_id in live
            else None
            for slot in slots
        ]
