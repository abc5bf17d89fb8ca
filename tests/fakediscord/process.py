"""Run a bot as a separate process against a :class:`FakeDiscord` (``python -m bot``)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .server import FakeDiscord


class BotProcess:
    """A child process whose output (stdout and stderr together) is kept for assertions."""

    def __init__(self, proc: asyncio.subprocess.Process, args: Sequence[str]) -> None:
        self.proc = proc
        self.args = list(args)
        self._chunks: list[bytes] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := await self.proc.stdout.read(65536):
            self._chunks.append(chunk)

    @property
    def output(self) -> str:
        return b"".join(self._chunks).decode(errors="replace")

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (SIGKILL by default: no cleanup, like a crash or an OOM kill)."""
        if self.proc.returncode is None:
            self.proc.send_signal(sig)

    async def wait(self, timeout: float = 10.0) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.wait_for(self._reader, timeout)
        return code

    async def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited after ``timeout`` seconds."""
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                return await self.wait(timeout)
            except TimeoutError:
                self.kill()
        return await self.wait(timeout)


async def start_bot_process(
    fake: FakeDiscord,
    args: Sequence[str] = ("-m", "bot"),
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    python: str = sys.executable,
) -> BotProcess:
    """Start ``python *args`` with ``fake.env()`` (token, REST and gateway URLs) plus ``env``."""
    full_env = {**os.environ, **fake.env(), "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = await asyncio.create_subprocess_exec(
        python,
        *args,
        env=full_env,
        cwd=None if cwd is None else str(cwd),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    return BotProcess(proc, [python, *args])
