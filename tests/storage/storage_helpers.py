"""Helpers shared by the storage tests (importable: pytest puts this folder on sys.path)."""

from __future__ import annotations

import datetime as dt
import io
import json
import random
from typing import Any

from core.storage import NewJob

UTC = dt.UTC
START = dt.datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


def make_png(seed: int = 0, size: tuple[int, int] = (64, 48)) -> bytes:
    """A small PNG whose pixels (hence bytes and hash) depend on ``seed``."""
    from PIL import Image

    rng = random.Random(seed)
    image = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def job_spec(user_id: int = 1, **overrides: Any) -> NewJob:
    fields: dict[str, Any] = {
        "user_id": user_id,
        "kind": "txt2img",
        "request": json.dumps({"prompt": overrides.get("prompt", "a cat"), "count": 1}),
        "prompt": "a cat",
        "image_count": 1,
        "guild_id": 100,
        "channel_id": 200,
    }
    fields.update(overrides)
    return NewJob(**fields)
