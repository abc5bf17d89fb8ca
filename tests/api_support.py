"""The product with only its HTTP API on (no Discord token), as its own process, and a real
HTTP client for it: keys made with the operator's command, server-sent events read off the
wire."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from e2e_support import ROOT, bot_env

PREFIX = "/api/cv/diffusion"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def product_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "API_"))}
    return {**env, **bot_env(data_dir), "PYTHONUNBUFFERED": "1", **extra}


@dataclass
class ApiProcess:
    data_dir: Path
    port: int
    env: dict[str, str]
    proc: asyncio.subprocess.Process | None = None
    chunks: list[bytes] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output(self) -> str:
        return b"".join(self.chunks).decode(errors="replace")

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            cwd=ROOT,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self.reader = asyncio.create_task(self._read())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 90
        async with aiohttp.ClientSession() as http:
            while True:
                if self.proc.returncode is not None:
                    raise AssertionError(f"the API exited {self.proc.returncode}:\n{self.output}")
                try:
                    async with http.get(f"{self.base}/healthz") as answer:
                        if answer.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if loop.time() > deadline:
                    raise AssertionError(f"the API did not come up:\n{self.output}")
                await asyncio.sleep(0.1)

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while chunk := await self.proc.stdout.read(65536):
            self.chunks.append(chunk)

    async def stop(self, kill: bool = False) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        if self.reader is not None:
            await self.reader

    def apikey(self, *args: str) -> str:
        """``diffusion-chat apikey ARGS`` against this product's data; its output."""
        result = subprocess.run(
            [sys.executable, "-m", "bot.cli", "apikey", *args],
            cwd=self.data_dir.parent,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def new_key(self, name: str = "tests", *options: str) -> str:
        return self.apikey("create", name, *options).splitlines()[1].strip()


async def start_api(data_dir: Path, **settings: str) -> ApiProcess:
    port = free_port()
    env = product_env(data_dir, API_PORT=str(port), **settings)
    api = ApiProcess(data_dir, port, env)
    await api.start()
    return api


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass(frozen=True)
class ServerEvent:
    id: str | None
    name: str
    data: dict[str, Any]


async def events(response: aiohttp.ClientResponse) -> AsyncIterator[ServerEvent]:
    """Parse a text/event-stream body as it arrives (comments are keep-alives)."""
    fields: dict[str, str] = {}
    async for raw in response.content:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if "event" in fields or "data" in fields:
                yield ServerEvent(
                    fields.get("id"), fields.get("event", "message"), json.loads(fields["data"])
                )
            fields = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields[name] = value[1:] if value.startswith(" ") else value
