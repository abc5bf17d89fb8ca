"""Helpers shared by the storage tests (importable: pytest puts this folder on sys.path)."""

from __future__ import annotations

import datetime as dt
import io
import json
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from core.storage import NewJob
from core.storage.clock import to_db
from core.storage.usage_schema import FILL_USAGE_FACTS

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


USAGE_START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
USAGE_DAYS = 90
USAGE_GUILDS = (None, 100, 200)
USAGE_KINDS = ("txt2img", "txt2img", "txt2img", "upscale", "variation", "inpaint")


def fill_usage(path: Path, jobs: int, seed: int = 7) -> None:
    """Jobs over ``USAGE_DAYS`` days as the bot records them: statuses, timings, settings, stars."""
    rng = random.Random(seed)
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT OR IGNORE INTO users (id, created_at) VALUES (?, '2026-01-01')",
            [(user,) for user in range(1, 301)],
        )
        for guild in USAGE_GUILDS[1:]:
            conn.execute(
                "INSERT OR IGNORE INTO guilds (id, created_at, updated_at) VALUES (?, 'x', 'x')",
                (guild,),
            )
        rows = []
        for n in range(jobs):
            created = USAGE_START + dt.timedelta(seconds=rng.randrange(USAGE_DAYS * 86400))
            status = rng.choices(["done", "failed", "cancelled"], [90, 6, 4])[0]
            kind = rng.choice(USAGE_KINDS)
            request = {
                "prompt": "p",
                "model": "tiny",
                "explicit": rng.sample(["seed", "steps"], rng.randint(0, 2)),
            }
            if rng.random() < 0.3:
                request["negative_prompt"] = "blurry"
            timings = {"queued_s": rng.uniform(0, 30), "total_s": rng.uniform(1, 60)}
            rows.append(
                (
                    f"j{n:08d}",
                    rng.randint(1, 300),
                    rng.choice(USAGE_GUILDS),
                    kind,
                    json.dumps(request),
                    "p",
                    rng.randint(1, 4),
                    status,
                    "CUDA out of memory" if status == "failed" else None,
                    json.dumps(timings) if status == "done" else None,
                    rng.uniform(0.5, 20) if status == "done" else None,
                    to_db(created),
                    "j00000000" if kind != "txt2img" and n else None,
                    rng.choice([0, 0, 0, 1, 2]) if status == "done" else 0,
                    "tiny",
                )
            )
        conn.executemany(
            "INSERT INTO jobs (id, user_id, guild_id, kind, request, prompt, image_count, status,"
            " error, timings, generation_seconds, attempts, created_at, parent_job_id,"
            " favourite_count, model) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?)",
            rows,
        )
        votes = [
            (rng.randint(1, 300), f"j{n:08d}", rng.choice([1, 1, -1]), "x")
            for n in rng.sample(range(jobs), jobs // 20)
        ]
        conn.executemany(
            "INSERT OR IGNORE INTO feedback (user_id, job_id, value, created_at)"
            " VALUES (?, ?, ?, ?)",
            votes,
        )
        # Written straight into the table, as by an older version: filled as its migration does.
        for statement in FILL_USAGE_FACTS:
            conn.execute(statement)


@pytest.fixture(name="backend", params=["sqlite", "postgres"])
def both_backends(request: pytest.FixtureRequest) -> str:
    """Import as ``backend`` into a test module: its tests run on SQLite and on PostgreSQL."""
    return str(request.param)
