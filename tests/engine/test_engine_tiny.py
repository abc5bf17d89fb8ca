"""The engine on the real tiny pipeline: batching across users and a responsive event loop."""

from __future__ import annotations

import asyncio

import pytest

from engine.backend import DiffusersBackend
from engine.engine import Engine
from engine.types import Done, GenerationRequest

pytestmark = pytest.mark.asyncio


async def test_event_loop_stays_responsive_during_generation(backend: DiffusersBackend) -> None:
    engine = Engine(backend)
    await engine.start()
    handle = await engine.submit(
        GenerationRequest(prompt="a lighthouse", model="tiny", count=4, steps=30, seed=1),
        user_id="u",
    )
    loop = asyncio.get_running_loop()
    worst = 0.0
    while not handle.finished:
        before = loop.time()
        await asyncio.sleep(0.005)
        worst = max(worst, loop.time() - before - 0.005)
        if handle.last_event is not None and handle.finished:
            break
    result = await asyncio.wait_for(handle.wait(), 60)
    assert isinstance(result, Done)
    assert result.result.timings.generate_s > 0.2  # long enough for the measure to mean much
    assert worst < 0.05, f"event loop stalled for {worst * 1000:.0f} ms"
    await engine.stop()


async def test_batched_image_matches_the_same_request_alone(backend: DiffusersBackend) -> None:
    engine = Engine(backend)
    engine._accepting = True
    handles = [
        await engine.submit(
            GenerationRequest(prompt=f"prompt {i}", model="tiny", steps=3, seed=100 + i),
            user_id=f"user{i}",
        )
        for i in range(4)
    ]
    await engine.start()
    results = [await asyncio.wait_for(h.wait(), 60) for h in handles]
    assert all(isinstance(r, Done) for r in results)
    alone = await engine.submit(
        GenerationRequest(prompt="prompt 2", model="tiny", steps=3, seed=102, count=1),
        user_id="again",
    )
    # Served from the cache: identical request, identical pixels.
    again = await asyncio.wait_for(alone.wait(), 60)
    assert isinstance(again, Done) and again.result.from_cache
    batched = results[2]
    assert isinstance(batched, Done)
    assert batched.result.images[0].image.tobytes() == again.result.images[0].image.tobytes()
    await engine.stop()
