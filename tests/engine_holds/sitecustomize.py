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
    from engine.devices import LocalDevice
    from engine.replicas import ReplicaServer

    holds = Path(hold_dir)

    def _held(prompt: str, step: int) -> bool:
        for hold in holds.glob("*.hold"):
            try:
                piece, from_step = hold.read_text(encoding="utf-8").splitlines()[:2]
            except (OSError, ValueError):
                continue  # removed, or still being written
            if piece in prompt and step >= int(from_step):
                return True
        return False

    def holding(run: Any) -> Any:
        """``run`` (a backend's, with its arguments after ``self``) whose steps wait while
        a hold matches."""

        def held_run(*args: Any) -> Any:
            *before, request, slots, on_step = args

            def holding_on_step(info: Any) -> Any:
                while _held(request.prompt, info.step):
                    time.sleep(0.02)
                return on_step(info)

            return run(*before, request, slots, holding_on_step)

        return held_run

    # This process's device, and a Ray replica's (started with this folder on PYTHONPATH).
    LocalDevice._run_locked = holding(LocalDevice._run_locked)  # type: ignore[method-assign]
    replica_init = ReplicaServer.__init__

    def init_holding(self: ReplicaServer, *args: Any, **kwargs: Any) -> None:
        replica_init(self, *args, **kwargs)
        self._backend.run = holding(self._backend.run)  # type: ignore[method-assign]

    ReplicaServer.__init__ = init_holding  # type: ignore[method-assign]
