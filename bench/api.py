"""What the HTTP API adds (issue 13), against the product run as its own process with only the
API on and the tiny model:

- POST /generate -> its 202, and -> the first server-sent event on the job's stream;
- 200 event streams open at once on one running job: time to each stream's first event,
  whether every stream sees the end, and the server's memory before and with them.

    python -m bench.api
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.common import Report, add_record_args, describe_machine, ms, record_path, summarize

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "/api/cv/diffusion"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def first_event(http: aiohttp.ClientSession, url: str, key: str) -> tuple[float, bool]:
    """Seconds to the stream's first event, and whether the stream then reached the end."""
    started = time.perf_counter()
    first = None
    ended = False
    async with http.get(url, headers={"Authorization": f"Bearer {key}"}) as answer:
        async for line in answer.content:
            if line.startswith(b"event:"):
                if first is None:
                    first = time.perf_counter() - started
                if line.strip() in (b"event: succeeded", b"event: failed", b"event: canceled"):
                    ended = True
    return (first if first is not None else float("nan")), ended


async def run(args: argparse.Namespace) -> None:
    report = Report("HTTP API: request to first event, and many open streams", describe_machine())
    with tempfile.TemporaryDirectory() as folder:
        data_dir = Path(folder) / "data"
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "API_"))} | {
            "DATA_DIR": str(data_dir),
            "DEFAULT_MODEL": "tiny",
            "API_PORT": str(port),
            "API_REQUESTS_PER_MINUTE": "100000",
            "DEFAULT_DAILY_IMAGES": "unlimited",
            "DEFAULT_CONCURRENT_JOBS": "unlimited",
            "LOG_LEVEL": "WARNING",
        }
        server = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", cwd=ROOT, env=env
        )
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as http:
                for _ in range(900):
                    try:
                        async with http.get(f"{base}/healthz") as answer:
                            if answer.status == 200:
                                break
                    except aiohttp.ClientError:
                        await asyncio.sleep(0.1)
                made = await asyncio.to_thread(
                    subprocess.run,
                    [sys.executable, "-m", "bot.cli", "apikey", "create", "bench"],
                    cwd=folder,
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                key = made.stdout.splitlines()[1].strip()
                headers = {"Authorization": f"Bearer {key}"}

                async def submit(steps: int, count: int = 1) -> tuple[float, str]:
                    body = {"prompt": "a benchmark", "steps": steps, "count": count}
                    started = time.perf_counter()
                    async with http.post(
                        f"{base}{PREFIX}/generate", json=body, headers=headers
                    ) as answer:
                        job = await answer.json()
                    return time.perf_counter() - started, job["urls"]["events"]

                await submit(2)  # warm: model loaded, connections open
                post_s, first_s = [], []
                for _ in range(args.rounds):
                    started = time.perf_counter()
                    took, events_url = await submit(2)
                    got, _ = await first_event(http, events_url, key)
                    post_s.append(took)
                    first_s.append(took + got)
                    del started
                rows = []
                for name, samples in (
                    ("POST /generate -> 202", post_s),
                    ("POST -> first event on the stream", first_s),
                ):
                    summary = summarize(samples)
                    p95 = sorted(samples)[max(0, int(len(samples) * 0.95) - 1)]
                    rows.append([name, ms(summary.median), ms(p95), summary.n])
                report.table(["measure", "median ms", "p95 ms", "n"], rows)

                before = rss_mib(server.pid)
                _, events_url = await submit(args.long_steps, 4)
                streams = [
                    asyncio.create_task(first_event(http, events_url, key))
                    for _ in range(args.streams)
                ]
                await asyncio.sleep(0.5)
                during = rss_mib(server.pid)
                outcomes = await asyncio.gather(*streams)
                firsts = [seconds for seconds, _ in outcomes]
                summary = summarize(firsts)
                p95 = sorted(firsts)[max(0, int(len(firsts) * 0.95) - 1)]
                per_stream_kib = (during - before) * 1024 / args.streams
                report.table(
                    [
                        "open streams",
                        "first event median ms",
                        "p95 ms",
                        "saw the end",
                        "server RSS MiB before -> with them",
                    ],
                    [
                        [
                            args.streams,
                            ms(summary.median),
                            ms(p95),
                            f"{sum(ended for _, ended in outcomes)}/{args.streams}",
                            f"{before:.0f} -> {during:.0f} ({per_stream_kib:+.0f} KiB a stream)",
                        ]
                    ],
                )
        finally:
            server.terminate()
            await server.wait()
    report.record(record_path(args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--long-steps", type=int, default=50, help="the streamed job's steps")
    add_record_args(parser)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
