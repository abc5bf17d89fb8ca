"""Test aid, loaded only by bot processes started with this folder on PYTHONPATH and
ENGINE_HOLD_DIR set: a test holds a running job at a step of its choosing, so what it wants
to see happen "while the job runs" cannot lose a race against a fast model.

A hold is a file in ENGINE_HOLD_DIR whose first line is a piece of the job's prompt and whose
second line is a step number N: before reporting step N or any later one, a job whose prompt
contains that piece waits (in the engine's worker thread) until the file is removed.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

hold_dir = os.environ.get("ENGINE_HOLD_DIR")
if hold_dir:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from engine.engine import Engine

    holds = Path(hold_dir)
    original = Engine._run_locked

    def _held(prompt: str, step: int) -> bool:
        for hold in holds.glob("*.hold"):
            try:
                piece, from_step = hold.read_text(encoding="utf-8").splitlines()[:2]
            except (OSError, ValueError):
                continue  # removed, or still being written
            if piece in prompt and step >= int(from_step):
                return True
        return False

    def run_locked(self: Engine, request: Any, slots: Any, on_step: Any) -> Any:
        def holding_on_step(info: Any) -> Any:
            while _held(request.prompt, info.step):
                time.sleep(0.02)
            return on_step(info)

        return original(self, request, slots, holding_on_step)

    Engine._run_locked = run_locked  # type: ignore[method-assign]
