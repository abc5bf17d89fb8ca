"""Test aid, loaded only by bot processes started with this folder on PYTHONPATH: every job
record takes SLOW_JOB_CREATE_S seconds to write, as on a database busy with another writer."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

delay = float(os.environ.get("SLOW_JOB_CREATE_S", "0"))
if delay:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from core.storage.jobs import JobRepository

    original = JobRepository.create

    async def slow_create(self: JobRepository, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(delay)
        return await original(self, *args, **kwargs)

    JobRepository.create = slow_create  # type: ignore[method-assign]
