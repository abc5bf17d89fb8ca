"""The request stored with a job comes back equal (and hashable) after a restart."""

from __future__ import annotations

from core.jobcodec import StoredRequest
from engine.types import GenerationRequest, Operation


def test_a_stored_request_round_trips_with_every_field() -> None:
    stored = StoredRequest(
        GenerationRequest(
            prompt="a {red|blue} fox",
            operation=Operation.OUTPAINT,
            count=2,
            seed=7,
            outpaint_sides=("left", "top"),
            prompts=("a red fox", "a blue fox"),
            loras=(("ink", 0.5), ("film", None)),
        ),
        init_image_key="ab/cd.png",
        priority=2,
        role_ids=(5, 6),
        explicit=("seed",),
        style="cinematic",
        locale="ko",
    )
    loaded = StoredRequest.loads(stored.dumps())
    assert loaded == stored
    hash(loaded.request)  # tuples, not lists: usable as a cache key


def test_a_request_stored_by_an_older_version_still_loads() -> None:
    loaded = StoredRequest.loads('{"prompt": "a fox", "count": 1, "operation": "txt2img"}')
    assert loaded.request.prompts == () and loaded.request.loras == () and loaded.locale is None
