"""A burst of small uploads that decode to huge images: each is decoded once, a few at a
time, and the memory the burst takes stays bounded.

A 4096×4096 PNG of one colour is about 75 KB and takes some 200 MB while it is decoded.
The bot resolves a request when it accepts it (``engine.resolve``) and the worker runs it
later: the upload must not be decoded again there, and twelve at once must not take twelve
times the memory.
"""

from __future__ import annotations

import asyncio
import gc
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

import engine.images
from engine.backend import DiffusersBackend
from engine.engine import Engine
from engine.types import Done, GenerationRequest, Operation, ResolvedRequest

pytestmark = pytest.mark.asyncio

BIG = (4096, 4096)
BURST = 12
BOUND = 2  # the engine's and the backend's default max_concurrent_decodes
CLEAR_REFS = Path("/proc/self/clear_refs")


@pytest.fixture(scope="module")
def big_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", BIG, (200, 30, 30, 255)).save(buffer, format="PNG")
    data = buffer.getvalue()
    assert len(data) < 100_000  # small upload, huge image
    return data


class DecodeProbe:
    """Wraps the decoder every upload goes through; records what was decoded, where, and
    how many big decodes overlapped. A big decode lingers briefly until a third one has
    started, so unbounded decoding shows its overlap however the threads are scheduled."""

    def __init__(self, linger_s: float = 0.2) -> None:
        self.decoded: list[tuple[tuple[int, int], str]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self._linger_s = linger_s
        self._changed = threading.Condition()
        self._real = engine.images._decode_upload

    def __call__(self, data: bytes, **kwargs: object) -> Image.Image:
        with self._changed:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self._changed.notify_all()
        try:
            image = self._real(data, **kwargs)  # type: ignore[arg-type]
            if image.size == BIG:
                with self._changed:
                    self._changed.wait_for(lambda: self.in_flight > BOUND, self._linger_s)
            self.decoded.append((image.size, threading.current_thread().name))
            return image
        finally:
            with self._changed:
                self.in_flight -= 1
                self._changed.notify_all()

    @property
    def big(self) -> list[str]:
        return [thread for size, thread in self.decoded if size == BIG]


@pytest.fixture
def probe(monkeypatch: pytest.MonkeyPatch) -> Iterator[DecodeProbe]:
    probe = DecodeProbe()
    monkeypatch.setattr(engine.images, "_decode_upload", probe)
    yield probe


def burst(data: bytes, count: int = BURST) -> list[GenerationRequest]:
    return [
        GenerationRequest(
            prompt="a red fox",
            model="tiny",
            operation=Operation.IMG2IMG,
            init_image=data,
            strength=0.5,
            steps=2,
            seed=100 + index,
        )
        for index in range(count)
    ]


async def test_a_burst_of_big_uploads_is_decoded_once_each_a_few_at_a_time(
    backend: DiffusersBackend, big_png: bytes, probe: DecodeProbe
) -> None:
    engine = Engine(backend)
    await engine.start()
    try:
        # As the bot does: resolve when accepting, submit the resolved request later.
        resolved: list[ResolvedRequest] = await asyncio.gather(
            *(engine.resolve(request) for request in burst(big_png))
        )
        assert len(probe.big) == BURST
        assert probe.most_in_flight <= BOUND
        for request in resolved:
            assert request.init_image is not None
            assert len(request.init_image) < 50_000  # the output-sized input, not a copy
        handles = [
            await engine.submit(request, user_id=f"user{index}")
            for index, request in enumerate(resolved)
        ]
        results = [await asyncio.wait_for(handle.wait(), 300) for handle in handles]
    finally:
        await engine.stop()
    assert all(isinstance(result, Done) for result in results)
    assert len(probe.big) == BURST  # the worker decoded none of the uploads again
    worker = [size for size, thread in probe.decoded if thread.startswith("engine")]
    assert worker and all(size == (256, 256) for size in worker)


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/self/status")


def _current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _reset_peak() -> float:
    gc.collect()
    CLEAR_REFS.write_text("5")  # Linux: VmHWM starts again from the current RSS
    return _current_rss_mb()


async def test_a_burst_of_big_uploads_takes_bounded_memory(
    backend: DiffusersBackend, big_png: bytes
) -> None:
    """Measured, not counted: the peak resident memory of resolving twelve big uploads at
    once. Each holds a 64 MB RGBA buffer while decoded and about three times that while it
    is flattened and resized; twelve at once (or one per executor thread) took over 1.5 GB.
    Bounded, the burst stays below eight decoded images' worth."""
    try:
        _reset_peak()
    except OSError:
        pytest.skip("this kernel does not let a process reset its peak memory")
    engine = Engine(backend)
    [warm] = burst(big_png, 1)
    await engine.resolve(warm)  # tokenizer and first-use allocations
    decoded_mb = BIG[0] * BIG[1] * 4 / 2**20
    before = _reset_peak()
    await asyncio.gather(*(engine.resolve(request) for request in burst(big_png)))
    many = _peak_rss_mb() - before
    print(f"peak memory of {BURST} big uploads at once: {many:.0f} MB")
    assert many < 8 * decoded_mb, f"{BURST} uploads at once took {many:.0f} MB"
