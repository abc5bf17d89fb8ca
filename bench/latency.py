"""What a user waits for besides denoising (issue 8):

- submit → first progress event, with the engine idle and the model loaded (target under
  100 ms); also submit → started;
- last denoising step → result: in the engine (VAE decode, images, Done event), and then the
  grid as the bot builds it (``make_grid`` and ``encode_preview(prefer="jpeg")`` under
  Discord's upload limit) for 4 images of 1024x1024 (target under 150 ms). The encode part
  uses real-size images: random noise (the worst case for JPEG) and smooth, photo-like
  content;
- per image: the PNG with its parameters chunk (``GeneratedImage.png_bytes``, which the bot
  stores), a WebP thumbnail, and a cheap latent preview.

    python -m bench.latency
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from bench.common import (
    Report,
    add_record_args,
    describe_machine,
    ms,
    quiet_libraries,
    record_path,
    summarize,
)
from bench.harness import Workload, running_engine, settle
from bench.models import tiny_backend
from engine.images import encode_preview, make_grid, make_thumbnail
from engine.preview import latent_preview
from engine.types import Done, Family, GeneratedImage, Progress, Started

# bot/delivery.py's UPLOAD_LIMIT: Discord's default upload limit, less form overhead.
UPLOAD_LIMIT = 10 * 2**20 - 64 * 1024
TARGET_FIRST_PROGRESS_S = 0.100
TARGET_GRID_S = 0.150
T = TypeVar("T")
GRID_SIDE = 1024


def noise_image(side: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))


def smooth_image(side: int, seed: int) -> Image.Image:
    """Photo-like content: large soft shapes and a little grain."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
    base = np.asarray(coarse.resize((side, side), Image.Resampling.BICUBIC), dtype=np.int16)
    grain = rng.normal(0, 4, (side, side, 3)).astype(np.int16)
    return Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8))


def timed(action: Callable[[], T], repeats: int) -> tuple[list[float], T]:
    """Run ``action`` ``repeats`` times (at least once): its times and its last result."""
    samples = []
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        result = action()
        samples.append(time.perf_counter() - started)
    return samples, result


async def engine_latencies(
    report: Report, reps: int, device: str
) -> tuple[float, dict[str, float]]:
    backend = tiny_backend(device)
    first = Workload.resolve(backend, "tiny")
    large = Workload.resolve(backend, "tiny", width=256, height=256)
    backend.manager.get(backend.registry.get(first.model))
    settle()
    to_started: list[float] = []
    to_progress: list[float] = []
    to_done: list[float] = []
    async with running_engine(backend) as engine:
        for i in range(reps + 2):
            request = first.request(count=1, seed=50_000 + i, preview_every=5)
            started = time.perf_counter()
            handle = await engine.submit(request, user_id="user")
            seen_started = seen_progress = None
            async for event in handle:
                now = time.perf_counter()
                if isinstance(event, Started) and seen_started is None:
                    seen_started = now - started
                if isinstance(event, Progress) and seen_progress is None:
                    seen_progress = now - started
            if i >= 2 and seen_started is not None and seen_progress is not None:
                to_started.append(seen_started)
                to_progress.append(seen_progress)

        for i in range(reps + 1):
            request = large.request(count=4, seed=60_000 + 8 * i, preview_every=5)
            handle = await engine.submit(request, user_id="user")
            last_step = None
            async for event in handle:
                if isinstance(event, Progress) and event.step == event.total:
                    last_step = time.perf_counter()
                if isinstance(event, Done) and last_step is not None and i >= 1:
                    to_done.append(time.perf_counter() - last_step)
    started_s = summarize(to_started)
    progress_s = summarize(to_progress)
    done_s = summarize(to_done)
    verdict = "met" if progress_s.median < TARGET_FIRST_PROGRESS_S else "NOT met"
    report.text(
        f"**Engine** ({first.label}; idle engine, model loaded; {reps} jobs each, after warm-up):\n"
    )
    report.table(
        ["interval", "median ms", "p25–p75 ms", "max ms"],
        [
            [
                "submit → Started",
                ms(started_s.median),
                f"{ms(started_s.p25)}–{ms(started_s.p75)}",
                ms(started_s.high),
            ],
            [
                "submit → first Progress (1 image)",
                f"**{ms(progress_s.median)}**",
                f"{ms(progress_s.p25)}–{ms(progress_s.p75)}",
                ms(progress_s.high),
            ],
            [
                "last step's Progress → Done (4 images of 256x256: VAE decode, PIL, events)",
                ms(done_s.median),
                f"{ms(done_s.p25)}–{ms(done_s.p75)}",
                ms(done_s.high),
            ],
        ],
    )
    report.text(
        f"Submit → first progress: {ms(progress_s.median)} ms "
        f"(target < {TARGET_FIRST_PROGRESS_S * 1000:.0f} ms: {verdict}). With a real model the "
        "first progress also waits for the text encoder and one UNet step.\n"
    )
    return progress_s.median, {"done_s": done_s.median}


def image_costs(report: Report, repeats: int) -> dict[str, float]:
    rows = []
    figures: dict[str, float] = {}
    for content, make in (("smooth", smooth_image), ("noise", noise_image)):
        images = [make(GRID_SIDE, seed) for seed in range(4)]
        grid_times, grid = timed(functools.partial(make_grid, images), repeats)
        encode_times, encoded = timed(
            functools.partial(encode_preview, grid, max_bytes=UPLOAD_LIMIT, prefer="jpeg"),
            repeats,
        )
        data, extension = encoded
        total = summarize([g + e for g, e in zip(grid_times, encode_times, strict=True)])
        generated = GeneratedImage(images[0], seed=1, parameters="a prompt\nSteps: 30, Seed: 1")
        png_times, png = timed(generated.png_bytes, repeats)
        thumb_times, _ = timed(functools.partial(make_thumbnail, images[0]), repeats)
        grid_ms = summarize(grid_times).median
        encode_ms = summarize(encode_times).median
        png_ms = summarize(png_times).median
        thumb_ms = summarize(thumb_times).median
        figures[f"grid_{content}_s"] = total.median
        figures[f"png_{content}_s"] = png_ms
        rows.append(
            [
                content,
                ms(grid_ms),
                ms(encode_ms),
                f"**{ms(total.median)}**",
                f"{extension}, {len(data) / 2**20:.2f} MiB, {grid.width}x{grid.height}",
                ms(png_ms),
                f"{len(png) / 2**20:.2f} MiB",
                ms(thumb_ms),
                ms(4 * png_ms + 4 * thumb_ms + total.median),
            ]
        )
    report.text(
        f"**Grid and encodes** for 4 images of {GRID_SIDE}x{GRID_SIDE} (medians of {repeats}):\n"
    )
    report.table(
        [
            "content",
            "make_grid ms",
            "encode_preview ms",
            "grid ready ms",
            "preview file",
            "PNG per image ms",
            "PNG size",
            "thumbnail per image ms",
            "4 PNG + 4 thumbnails + grid, in a row, ms",
        ],
        rows,
    )
    latents = torch.randn(4, GRID_SIDE // 8, GRID_SIDE // 8)
    preview_times, _ = timed(lambda: latent_preview(latents, Family.SDXL, (1024, 1024)), repeats)
    figures["latent_preview_s"] = summarize(preview_times).median
    report.text(
        f"Latent preview (128x128 latents → 512x512 image, no VAE): "
        f"{ms(figures['latent_preview_s'])} ms per preview.\n"
    )
    return figures


async def main_async(args: argparse.Namespace) -> None:
    quiet_libraries()
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch")
    )
    report = Report("Latency around the denoising loop", describe_machine(args.device))
    first_progress, engine_figures = await engine_latencies(report, args.reps, args.device)
    figures = image_costs(report, args.encode_reps)
    grid = figures["grid_smooth_s"]
    worst = figures["grid_noise_s"]
    verdict = "met" if grid < TARGET_GRID_S else "NOT met"
    report.text(
        f"Summary: submit → first progress **{ms(first_progress)} ms**; last step → grid "
        f"ready **{ms(grid)} ms** for photo-like content (noise: {ms(worst)} ms; target "
        f"< {TARGET_GRID_S * 1000:.0f} ms: {verdict}), plus the engine's own last step → Done "
        f"({ms(engine_figures['done_s'])} ms here with the tiny model's VAE). PNG per "
        f"1024x1024 image: {ms(figures['png_smooth_s'])} ms (noise "
        f"{ms(figures['png_noise_s'])} ms).\n"
    )
    report.record(record_path(args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--reps", type=int, default=20, help="engine jobs per measurement")
    parser.add_argument("--encode-reps", type=int, default=7, help="repeats of each encode")
    add_record_args(parser)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
