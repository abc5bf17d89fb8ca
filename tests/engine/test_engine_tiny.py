"""The engine on the real tiny pipeline: batching across users and a loop that never blocks."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

import engine.images
from engine.backend import DiffusersBackend
from engine.devices import LocalDevice
from engine.engine import Engine, EngineSettings
from engine.types import Done, GenerationRequest, ImageSlot, Operation, ResolvedRequest
from tests.engine.helpers import max_pixel_difference, noise_image, png

pytestmark = pytest.mark.asyncio

# Float tolerance for "the same image batched or alone", in 8-bit pixel levels.
BATCH_TOLERANCE = 2


class LoopWatch:
    """Proves that generation never runs on the event loop's thread, without a clock.

    * Every torch module's forward (text encoder, UNet, VAE: all the pipeline's work) and
      every upload decode records the thread it runs on; none may be the loop's thread.
    * At the first forward, the computing thread asks the loop to run a callback and waits
      for it: a loop that is free answers at once; one that is running the pipeline itself
      cannot, and the wait gives up after ``answer_within_s``. The limit only decides how
      long a broken engine takes to be caught; a working one answers however busy the
      machine is, because the loop has nothing else to do.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answer_within_s: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.forward_threads: set[int] = set()
        self.decode_threads: set[int] = set()
        self.loop_answered: list[bool] = []
        self._answer_within_s = answer_within_s
        real_decode = engine.images._decode_upload

        def decode(data: bytes, **kwargs: Any) -> Any:
            self.decode_threads.add(threading.get_ident())
            return real_decode(data, **kwargs)

        monkeypatch.setattr(engine.images, "_decode_upload", decode)

    @contextlib.contextmanager
    def watching(self) -> Iterator[LoopWatch]:
        handle = torch.nn.modules.module.register_module_forward_pre_hook(self._forward)
        try:
            yield self
        finally:
            handle.remove()

    def _forward(self, _module: torch.nn.Module, _args: object) -> None:
        self.forward_threads.add(threading.get_ident())
        if not self.loop_answered:
            answered = threading.Event()
            self.loop.call_soon_threadsafe(answered.set)
            self.loop_answered.append(answered.wait(self._answer_within_s))

    def problems(self) -> list[str]:
        found = []
        if not self.forward_threads or not self.decode_threads:
            found.append("nothing was watched: no forward or no decode ran")
        if self.loop_thread in self.forward_threads:
            found.append("a torch module ran on the event loop's thread")
        if self.loop_thread in self.decode_threads:
            found.append("an upload was decoded on the event loop's thread")
        if self.loop_answered != [True]:
            found.append("the event loop did not answer while the pipeline ran")
        return found


async def generate_watched(
    backend: DiffusersBackend, monkeypatch: pytest.MonkeyPatch, answer_within_s: float
) -> LoopWatch:
    """One img2img job (an upload to decode, a pipeline to run) through a started engine."""
    watch = LoopWatch(monkeypatch, answer_within_s)
    engine = Engine(backend)
    await engine.start()
    try:
        with watch.watching():
            handle = await engine.submit(
                GenerationRequest(
                    prompt="a lighthouse",
                    model="tiny",
                    operation=Operation.IMG2IMG,
                    init_image=png(noise_image((64, 64), seed=4)),
                    count=2,
                    steps=4,
                    seed=1,
                ),
                user_id="u",
            )
            result = await asyncio.wait_for(handle.wait(), 300)
    finally:
        await engine.stop()
    assert isinstance(result, Done)
    return watch


async def test_generation_never_runs_on_the_event_loop(
    backend: DiffusersBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    watch = await generate_watched(backend, monkeypatch, answer_within_s=120)
    assert watch.problems() == []


async def _inline_on_device(self: LocalDevice, function: Callable[..., Any], *args: object) -> Any:
    return function(*args)  # the pipeline on the loop's own thread: a real blocking call


async def _inline_to_thread(function: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    return function(*args, **kwargs)


@pytest.mark.parametrize("mistake", ["pipeline on the loop", "resolve on the loop"])
async def test_the_loop_watch_catches_a_blocking_call(
    backend: DiffusersBackend, monkeypatch: pytest.MonkeyPatch, mistake: str
) -> None:
    """The check above bites: an engine that runs the pipeline (or decodes the upload)
    inline on the event loop is flagged."""
    if mistake == "pipeline on the loop":
        monkeypatch.setattr(LocalDevice, "_on_device", _inline_on_device)
    else:
        monkeypatch.setattr(asyncio, "to_thread", _inline_to_thread)
    watch = await generate_watched(backend, monkeypatch, answer_within_s=0.5)
    problems = watch.problems()
    if mistake == "pipeline on the loop":
        assert "a torch module ran on the event loop's thread" in problems
        assert "the event loop did not answer while the pipeline ran" in problems
    else:
        assert problems == ["an upload was decoded on the event loop's thread"]


class CallRecorder:
    """A backend that records the slots of every pipeline call it passes on."""

    def __init__(self, inner: DiffusersBackend) -> None:
        self._inner = inner
        self.calls: list[list[ImageSlot]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def run(self, request: ResolvedRequest, slots: list[ImageSlot], on_step: Any) -> Any:
        self.calls.append(list(slots))
        return self._inner.run(request, slots, on_step)


async def test_batched_image_matches_the_same_request_alone(backend: DiffusersBackend) -> None:
    """A seed gives the same image batched with other users' jobs or computed alone, by a
    separate engine with no cache (to float tolerance)."""
    batching = CallRecorder(backend)
    engine = Engine(batching)  # type: ignore[arg-type]
    engine._accepting = True
    handles = [
        await engine.submit(
            GenerationRequest(prompt=f"prompt {i}", model="tiny", steps=3, seed=100 + i),
            user_id=f"user{i}",
        )
        for i in range(4)
    ]
    await engine.start()
    results = [await asyncio.wait_for(h.wait(), 120) for h in handles]
    await engine.stop()
    assert all(isinstance(r, Done) for r in results)
    assert [len(call) for call in batching.calls] == [4]  # one call for the four users

    alone_backend = CallRecorder(backend)
    separate = Engine(alone_backend, EngineSettings(cache_entries=0))  # type: ignore[arg-type]
    await separate.start()
    handle = await separate.submit(
        GenerationRequest(prompt="prompt 2", model="tiny", steps=3, seed=102, count=1),
        user_id="again",
    )
    again = await asyncio.wait_for(handle.wait(), 120)
    await separate.stop()
    assert isinstance(again, Done) and not again.result.from_cache
    assert [[slot.seed for slot in call] for call in alone_backend.calls] == [[102]]

    batched = results[2]
    assert isinstance(batched, Done)
    assert batched.result.images[0].seed == again.result.images[0].seed == 102
    alone_image = again.result.images[0].image
    assert max_pixel_difference(batched.result.images[0].image, alone_image) <= BATCH_TOLERANCE
    # The tolerance means something: a neighbour in the same batch is far from it.
    neighbour = results[1]
    assert isinstance(neighbour, Done)
    assert max_pixel_difference(neighbour.result.images[0].image, alone_image) > 20
