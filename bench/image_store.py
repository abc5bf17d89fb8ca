"""The image store's cost per call (issue 20): put, put again (the time-renewing copy), get,
stat and a presigned link, on local files and on an S3-compatible server (moto's, on this
machine, over HTTP on 127.0.0.1). moto is slower than a real S3 server per request but
shows the shape: what the thread hop, HTTP and signing add over the local disk.

    python -m bench.image_store [--rounds 40] [--size-kib 400]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable

from core.storage import ImageStore, LocalImageStore
from core.storage.s3 import S3ImageStore


async def _timed(call: Callable[[], Awaitable[object]], rounds: int) -> tuple[float, float]:
    """Median and 95th percentile, in milliseconds."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        await call()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1]


async def measure(store: ImageStore, rounds: int, size: int) -> dict[str, tuple[float, float]]:
    blobs = [os.urandom(size) for _ in range(rounds)]
    keys: list[str] = []
    results: dict[str, tuple[float, float]] = {}
    blob_iter = iter(blobs)

    async def put_new() -> None:
        keys.append(await store.put(next(blob_iter), ext="png"))

    results["put (new)"] = await _timed(put_new, rounds)
    results["put (again)"] = await _timed(lambda: store.put(blobs[0], ext="png"), rounds)
    key_iter = iter(keys)
    results["get"] = await _timed(lambda: store.get(next(key_iter)), rounds)
    results["stat"] = await _timed(lambda: store.stat(keys[0]), rounds)
    if isinstance(store, S3ImageStore):

        async def link() -> None:
            store.url_for(keys[0], public=False)

        results["presigned link"] = await _timed(link, rounds * 10)
    return results


async def main(rounds: int, size_kib: int) -> None:
    from moto.server import ThreadedMotoServer

    size = size_kib * 1024
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        with tempfile.TemporaryDirectory() as folder:
            local = await measure(LocalImageStore(folder), rounds, size)
        s3 = S3ImageStore(
            "bench-images",
            endpoint_url=f"http://{host}:{port}",
            region="us-east-1",
            access_key_id="AKIABENCH",
            secret_access_key="bench",
        )
        await s3.ensure_bucket()
        remote = await measure(s3, rounds, size)
    finally:
        server.stop()
    print(f"{rounds} rounds, {size_kib} KiB objects; median / p95 in ms")
    print(f"{'operation':<16} {'local files':>18} {'S3 (moto)':>18}")
    for name in remote:
        here = local.get(name)
        shown = f"{here[0]:.2f} / {here[1]:.2f}" if here else "-"
        there = remote[name]
        print(f"{name:<16} {shown:>18} {f'{there[0]:.2f} / {there[1]:.2f}':>18}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--size-kib", type=int, default=400)
    options = parser.parse_args()
    asyncio.run(main(options.rounds, options.size_kib))
