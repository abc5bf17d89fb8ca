"""GPU speed, round 2 (issue 21): torch.compile, CUDA graphs, FP8 and a 4-step model.

The real SDXL and SD 1.5 architectures with random weights (bench/models.py: no download),
one process, one GPU, in this order, each part saved to $OUT as soon as it is measured:

1. SDXL 1024 px in bf16, eager: plain diffusers against the engine at batch 4, 20 steps with
   guidance; the UNet's fraction of the bf16 peak; a 4-step, guidance-free run at batch 8
   (the shape of SDXL-Lightning or DMD2: same UNet, 4 steps, no guidance); submit -> first
   progress; VAE decode and PNG-ready times; reference images for the FP8 check.
2. SD 1.5 512 px, 25 steps: plain diffusers against the engine with CUDA graphs
   (engine/cuda_graphs.py) at batch 1, 4 and 8.
3. SDXL with the UNet under torch.compile (inductor), bf16: compile time, the same figures.
4. SDXL with the UNet's linear layers in FP8 (engine/quantize.py) and compiled: the same
   figures, and the images against the bf16 references on the same seeds (mean absolute
   pixel difference and SSIM).
5. The compile cache: the SD 1.5 UNet compiled in a fresh process with an empty cache, then
   again in another fresh process with the cache the first one left (cold and warm start).

    bash bench/gpu.sh                        # on the GPU machine (this module is its default)
    python -m bench.gpu_speed --dry-run      # on a CPU at toy widths: checks the script only
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.common import (
    Report,
    add_record_args,
    describe_machine,
    ms,
    pct,
    quiet_libraries,
    record_path,
    save_outputs,
    summarize,
)
from bench.gpu_bench import (
    peak_tflops,
    unet_flops_per_image_step,
    vae_decode_seconds,
)
from bench.harness import (
    Job,
    Workload,
    alternate,
    engine_run,
    jobs_for_batch,
    plain_run,
    running_engine,
)
from bench.models import (
    Scale,
    arch_presets,
    arch_spec,
    build_sd15,
    build_sdxl,
    plain_pipeline,
    prebuilt_backend,
    synchronize,
)
from engine import cuda_graphs
from engine.engine import Engine, EngineSettings
from engine.loader import LoadedModel, LoaderOptions
from engine.quantize import quantize_fp8
from engine.types import Family, Progress

GIB = 2**30
PARTS = ("sdxl_eager", "sd15_graphs", "sdxl_compiled", "sdxl_fp8", "compile_cache")
FEW_STEPS = 4
FEW_STEP_BATCH = 8


@dataclass
class Run:
    args: argparse.Namespace
    report: Report
    device: str
    deadline: float
    out: Path | None
    results: dict[str, Any] = field(default_factory=dict)

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        save_outputs(self.out, "gpu_speed", self.report, self.results)

    async def part(self, name: str, needs_s: float, body: Callable[[], Awaitable[None]]) -> None:
        """Run one part; a failure is recorded and the next part still runs."""
        if self.left_s() < needs_s:
            self.report.text(f"({name}: skipped, {self.left_s():.0f} s left of the budget)\n")
            self.results[name] = {"skipped": f"{self.left_s():.0f} s left"}
            self.save()
            return
        started = time.monotonic()
        print(f"== {name} ({self.left_s():.0f} s left)", flush=True)
        try:
            await body()
        except Exception as error:
            self.report.text(f"({name}: failed: {type(error).__name__}: {error})\n")
            self.results[name] = {"error": traceback.format_exc()[-4000:]}
        self.results.setdefault("part_s", {})[name] = time.monotonic() - started
        self.save()


# --- measuring ------------------------------------------------------------------------------


def gpu_peak_gib(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    synchronize(device)
    return torch.cuda.max_memory_allocated() / GIB


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        synchronize(device)
        torch.cuda.reset_peak_memory_stats()


async def throughput(
    run: Run,
    runners: dict[str, Callable[[list[Job]], Awaitable[float]]],
    batch: int,
    seed_base: int,
) -> dict[str, float]:
    """Images per second for each runner at ``batch`` images (medians of alternating rounds)."""
    samples = await alternate(
        runners,
        functools.partial(jobs_for_batch, batch),
        reps=run.args.reps,
        warmup=run.args.warmup,
        seed_base=seed_base,
    )
    return {name: batch / summarize(times).median for name, times in samples.items()}


def unet_figures(run: Run, xl: Sdxl) -> dict[str, Any]:
    """The UNet alone on the inputs the pipeline gave it (recorded at batch ``--batch``): the
    same shapes, dtypes and grad mode, so a compiled UNet is not compiled again for them."""
    args, kwargs = xl.unet_inputs
    unet = xl.loaded.pipe.unet
    with torch.no_grad():
        for _ in range(2):
            unet(*args, **kwargs)
        synchronize(run.device)
        started = time.perf_counter()
        for _ in range(run.args.unet_iterations):
            unet(*args, **kwargs)
        synchronize(run.device)
    seconds = (time.perf_counter() - started) / run.args.unet_iterations
    name = torch.cuda.get_device_name() if run.device.startswith("cuda") else "cpu"
    peak = peak_tflops(name)
    achieved = xl.flops * run.args.batch / seconds
    return {
        "images": run.args.batch,
        "s_per_step": seconds,
        "tflops": achieved / 1e12,
        "fraction_of_bf16_peak": achieved / (peak * 1e12) if peak else None,
    }


async def record_unet_inputs(run: Run, xl: Sdxl) -> None:
    """Keep a copy of one UNet call's inputs from a real guided engine run."""
    recorded: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def keep(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if not recorded:
            recorded.append(clone_tree((args, kwargs)))

    hook = xl.loaded.pipe.unet.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        await engine_run(xl.engine, xl.guided, jobs_for_batch(run.args.batch, 5_000_000))
    finally:
        hook.remove()
    xl.unet_inputs = recorded[0]


def clone_tree(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {key: clone_tree(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(clone_tree(item) for item in value)
    return value


def mean_abs_difference(first: list[np.ndarray], second: list[np.ndarray]) -> float:
    return float(
        np.mean(
            [
                np.abs(a.astype(np.float64) - b.astype(np.float64)).mean()
                for a, b in zip(first, second, strict=True)
            ]
        )
    )


def ssim(first: np.ndarray, second: np.ndarray) -> float:
    """Structural similarity of two RGB images on their luminance (Gaussian window 11,
    sigma 1.5, the usual constants for 8-bit images)."""

    def luminance(image: np.ndarray) -> torch.Tensor:
        rgb = torch.from_numpy(image.astype(np.float64))
        return (rgb @ torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64))[None, None]

    x, y = luminance(first), luminance(second)
    coords = torch.arange(11, dtype=torch.float64) - 5
    gauss = torch.exp(-(coords**2) / (2 * 1.5**2))
    gauss /= gauss.sum()
    window = (gauss[:, None] * gauss[None, :])[None, None]

    def blur(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(t, window)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    value = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return float(value.mean())


def pixels(images: list[Image.Image]) -> list[np.ndarray]:
    return [np.asarray(image.convert("RGB")) for image in images]


# --- SDXL -------------------------------------------------------------------------------------


@dataclass
class Sdxl:
    """The SDXL model, its engine and plain pipeline, shared by parts 1, 3 and 4."""

    loaded: LoadedModel
    engine: Engine
    plain: Any
    guided: Workload
    few_step: Workload
    flops: int
    size: int
    reference: list[np.ndarray] = field(default_factory=list)
    unet_inputs: tuple[tuple[Any, ...], dict[str, Any]] = ((), {})
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)


async def sdxl_figures(
    run: Run, xl: Sdxl, label: str, *, with_plain: bool, seed: int
) -> dict[str, Any]:
    """One SDXL setting's numbers: UNet alone, 20-step batch 4, 4-step batch 8."""
    batch = run.args.batch
    figures: dict[str, Any] = {"unet": unet_figures(run, xl)}

    async def engine_guided(jobs: list[Job]) -> float:
        return (await engine_run(xl.engine, xl.guided, jobs))[0]

    async def plain_guided(jobs: list[Job]) -> float:
        return plain_run(xl.plain, xl.guided, jobs)[0]

    runners: dict[str, Callable[[list[Job]], Awaitable[float]]] = {"engine": engine_guided}
    if with_plain:
        runners["plain"] = plain_guided
    reset_peak(run.device)
    figures["guided"] = await throughput(run, runners, batch, seed)
    figures["guided_peak_gib"] = gpu_peak_gib(run.device)
    print(f"  {label}: {figures['guided']}", flush=True)
    run.save()

    async def engine_few(jobs: list[Job]) -> float:
        return (await engine_run(xl.engine, xl.few_step, jobs))[0]

    async def plain_few(jobs: list[Job]) -> float:
        return plain_run(xl.plain, xl.few_step, jobs)[0]

    runners = {"engine": engine_few}
    if with_plain:
        runners["plain"] = plain_few
    figures["few_step"] = await throughput(run, runners, FEW_STEP_BATCH, seed + 500_000)
    print(f"  {label} 4-step: {figures['few_step']}", flush=True)
    xl.figures[label] = figures
    return figures


def sdxl_table(run: Run, xl: Sdxl) -> None:
    base = xl.figures.get("bf16 eager", {})
    plain_guided = base.get("guided", {}).get("plain")
    plain_few = base.get("few_step", {}).get("plain")
    rows = []
    for label, figures in xl.figures.items():
        unet = figures["unet"]
        guided = figures["guided"]["engine"]
        few = figures["few_step"]["engine"]
        rows.append(
            [
                label,
                "—"
                if unet["fraction_of_bf16_peak"] is None
                else pct(unet["fraction_of_bf16_peak"]),
                f"{unet['tflops']:.0f}",
                f"**{guided:.2f}**",
                f"{guided / plain_guided:.2f}x" if plain_guided else "—",
                f"**{few:.2f}**",
                f"{few / plain_few:.2f}x" if plain_few else "—",
                f"{figures.get('guided_peak_gib') or 0:.1f}",
            ]
        )
    if plain_guided and plain_few:
        rows.insert(
            0,
            [
                "plain diffusers, bf16 eager",
                "",
                "",
                f"{plain_guided:.2f}",
                "1.00x",
                f"{plain_few:.2f}",
                "1.00x",
                "",
            ],
        )
    run.report.text(
        f"SDXL {xl.size} px: UNet alone at batch {run.args.batch} (FLOPs counted in bf16 "
        f"terms); images/s at batch {run.args.batch}, {xl.guided.steps} steps with guidance; "
        f"images/s at batch {FEW_STEP_BATCH}, {FEW_STEPS} steps without guidance (the "
        "shape of SDXL-Lightning/DMD2); ratios to plain diffusers in bf16:\n"
    )
    run.report.table(
        [
            "setting",
            "UNet % of bf16 peak",
            "UNet TFLOP/s",
            f"img/s, {xl.guided.steps} steps",
            "÷ plain",
            f"img/s, {FEW_STEPS} steps",
            "÷ plain",
            "peak GiB",
        ],
        rows,
    )
    run.results["sdxl"] = xl.figures


async def sdxl_eager(run: Run, xl: Sdxl) -> None:
    await record_unet_inputs(run, xl)
    await sdxl_figures(run, xl, "bf16 eager", with_plain=True, seed=10_000_000)
    # Reference images for the FP8 check, and the latencies.
    _, generated = await engine_run(xl.engine, xl.guided, [Job("reference", run.args.batch, 77)])
    xl.reference = pixels([g.image for g in generated])
    firsts = []
    for index in range(run.args.latency_reps):
        started = time.perf_counter()
        handle = await xl.engine.submit(
            xl.guided.request(count=1, seed=20_000 + index), user_id="latency"
        )
        async for event in handle:
            if isinstance(event, Progress):
                firsts.append(time.perf_counter() - started)
                handle.cancel()
        await idle(xl.engine)
    decode_s, to_pil_s = vae_decode_seconds(
        xl.loaded.pipe, run.args.batch, xl.size, run.device, xl.loaded.dtype
    )
    latency = {
        "first_progress_s": summarize(firsts[1:] or firsts).median,
        "vae_decode_s": decode_s,
        "to_pil_s": to_pil_s,
    }
    run.results["sdxl_latency"] = latency
    run.report.text(
        f"SDXL latency: submit → first progress {ms(latency['first_progress_s'])} ms (median, "
        f"idle engine); VAE decode of {run.args.batch} latents {ms(decode_s)} ms, tensors → "
        f"PIL {ms(to_pil_s)} ms.\n"
    )
    sdxl_table(run, xl)


async def idle(engine: Engine) -> None:
    for _ in range(2000):
        status = engine.status()
        if not (status.running or status.queued):
            return
        await asyncio.sleep(0.01)


def compile_unet(run: Run, unet: torch.nn.Module) -> None:
    torch._dynamo.reset()
    unet._compiled_call_impl = None
    backend = "eager" if run.args.dry_run else "inductor"
    unet.compile(backend=backend, mode=None if run.args.dry_run else run.args.compile_mode)


async def first_call_s(run: Run, xl: Sdxl) -> float:
    """The first guided and few-step calls after a change: compiling happens in them."""
    started = time.perf_counter()
    await engine_run(xl.engine, xl.guided, jobs_for_batch(run.args.batch, 31_000_000))
    await engine_run(xl.engine, xl.few_step, jobs_for_batch(FEW_STEP_BATCH, 32_000_000))
    return time.perf_counter() - started


async def sdxl_compiled(run: Run, xl: Sdxl) -> None:
    compile_unet(run, xl.loaded.pipe.unet)
    warm_s = await first_call_s(run, xl)
    figures = await sdxl_figures(run, xl, "bf16 compiled", with_plain=False, seed=40_000_000)
    figures["first_calls_s"] = warm_s
    run.report.text(
        f"bf16 compiled: the first two calls (compiling in them) took {warm_s:.1f} s.\n"
    )
    sdxl_table(run, xl)


async def sdxl_fp8(run: Run, xl: Sdxl) -> None:
    unet = xl.loaded.pipe.unet
    unet._compiled_call_impl = None
    started = time.perf_counter()
    converted = quantize_fp8(unet, torch.device(run.device))
    quantize_s = time.perf_counter() - started
    compile_unet(run, unet)
    warm_s = await first_call_s(run, xl)
    figures = await sdxl_figures(run, xl, "FP8 compiled", with_plain=False, seed=50_000_000)
    _, generated = await engine_run(xl.engine, xl.guided, [Job("reference", run.args.batch, 77)])
    mine = pixels([g.image for g in generated])
    quality = {
        "layers": converted,
        "quantize_s": quantize_s,
        "first_calls_s": warm_s,
        "mean_abs_pixel_difference": mean_abs_difference(mine, xl.reference),
        "ssim": float(np.mean([ssim(a, b) for a, b in zip(mine, xl.reference, strict=True)])),
    }
    figures["quality"] = quality
    run.report.text(
        f"FP8: {converted} linear layers converted in {quantize_s:.1f} s; first two calls "
        f"{warm_s:.1f} s. Against bf16 on the same {len(mine)} seeds: mean absolute pixel "
        "difference "
        f"**{quality['mean_abs_pixel_difference']:.2f}** levels of 255, SSIM "
        f"**{quality['ssim']:.3f}** (random weights: the images are noise, so this measures "
        "how far FP8 moves the numbers, not how a picture looks).\n"
    )
    sdxl_table(run, xl)


# --- SD 1.5 with CUDA graphs --------------------------------------------------------------------


async def sd15_graphs(run: Run) -> None:
    args = run.args
    size, steps = (args.dry_size, args.dry_steps) if args.dry_run else (512, 25)
    pipe = build_sd15(Scale.MINI if args.dry_run else Scale.REAL, run.device)
    spec = arch_spec(
        "sd15-arch",
        Family.SD15,
        arch_presets(Family.SD15, width=size, height=size, steps=steps, scheduler="euler_a"),
    )
    options = LoaderOptions(device=run.device, dtype=args.sd15_dtype, channels_last=True)
    backend = prebuilt_backend([spec], {"sd15-arch": pipe}, options)
    loaded = backend.manager.get(spec)
    del pipe
    workload = Workload.resolve(backend, "sd15-arch")
    plain = plain_pipeline(loaded, workload.scheduler)
    rows = []
    figures: dict[str, Any] = {}
    async with running_engine(
        backend, EngineSettings(max_queued_per_user=64, max_batch_images=8)
    ) as engine:

        async def on_engine(jobs: list[Job]) -> float:
            return (await engine_run(engine, workload, jobs))[0]

        async def on_plain(jobs: list[Job]) -> float:
            return plain_run(plain, workload, jobs)[0]

        eager: dict[int, dict[str, float]] = {}
        for batch in (1, 4, 8):
            eager[batch] = await throughput(
                run, {"plain": on_plain, "engine": on_engine}, batch, 60_000_000 + batch * 100_000
            )
        if run.device.startswith("cuda"):
            graphs = cuda_graphs.install(loaded.pipe.unet, cuda_graphs.graph_rows(8))
            # The plain pipeline shares the UNet: from here on only the engine is timed.
            for batch in (1, 4, 8):
                figures[f"graphs_{batch}"] = await throughput(
                    run, {"engine": on_engine}, batch, 70_000_000 + batch * 100_000
                )
            figures["captures"] = graphs.captures
        for batch in (1, 4, 8):
            graphed = figures.get(f"graphs_{batch}", {}).get("engine")
            plain_rate = eager[batch]["plain"]
            rows.append(
                [
                    batch,
                    f"{plain_rate:.2f}",
                    f"{eager[batch]['engine']:.2f} ({eager[batch]['engine'] / plain_rate:.2f}x)",
                    "—" if graphed is None else f"**{graphed:.2f}** ({graphed / plain_rate:.2f}x)",
                ]
            )
        figures["eager"] = eager
    run.results["sd15"] = figures
    run.report.text(
        f"SD 1.5 {size} px, {steps} steps, {args.sd15_dtype}, images/s (÷ plain diffusers, "
        "eager, same modules):\n"
    )
    run.report.table(["batch", "plain", "engine, eager", "engine, CUDA graphs"], rows)
    backend.manager.unload_all()


# --- the compile cache --------------------------------------------------------------------------

_COMPILE_ONE = """
import sys, time, torch
from bench.models import Scale, build_sd15
from bench.gpu_bench import unet_inputs
scale, device, dtype = Scale(sys.argv[1]), sys.argv[2], getattr(torch, sys.argv[3])
unet = build_sd15(scale, device).unet.to(dtype)
args, kwargs = unet_inputs(unet, 1, int(sys.argv[4]), device, dtype)
started = time.perf_counter()
compiled = torch.compile(unet)
with torch.inference_mode():
    compiled(*args, **kwargs)
if device == "cuda":
    torch.cuda.synchronize()
print(f"COMPILE_S={time.perf_counter() - started:.3f}")
"""


def compile_in_fresh_process(run: Run, cache: Path) -> float:
    args = run.args
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    scale = Scale.MINI if args.dry_run else Scale.REAL
    size = args.dry_size if args.dry_run else 512
    dtype = "float32" if args.dry_run else "float16"
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE_ONE, scale.value, run.device, dtype, str(size)],
        env=env,
        capture_output=True,
        text=True,
        timeout=max(30.0, run.left_s()),
        check=True,
    )
    return float(done.stdout.rsplit("COMPILE_S=", 1)[1].split()[0])


async def compile_cache(run: Run) -> None:
    with tempfile.TemporaryDirectory(prefix="inductor-cache-") as folder:
        cold = await asyncio.to_thread(compile_in_fresh_process, run, Path(folder))
        warm = await asyncio.to_thread(compile_in_fresh_process, run, Path(folder))
    run.results["compile_cache"] = {"cold_s": cold, "warm_s": warm}
    run.report.text(
        f"Compile cache (SD 1.5 UNet, inductor, batch 1, in a fresh process each): cold "
        f"**{cold:.1f} s**, warm **{warm:.1f} s** with the cache the cold start left "
        f"({cold / warm:.1f}x faster).\n"
    )


# --- main ---------------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> None:
    quiet_libraries()
    if args.dry_run:
        device = "cpu"
    elif torch.cuda.is_available():
        device = "cuda"
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    else:
        raise SystemExit("No CUDA GPU: run on a GPU machine, or pass --dry-run to test on a CPU.")
    title = "GPU speed, round 2: compile, CUDA graphs, FP8, 4 steps" + (
        " (dry run on CPU)" if args.dry_run else ""
    )
    report = Report(title, describe_machine(device))
    out_env = os.environ.get("OUT")
    run = Run(
        args=args,
        report=report,
        device=device,
        deadline=time.monotonic() + args.budget_s,
        out=args.out or (Path(out_env) if out_env else None),
    )
    run.results["machine"] = report.machine.lines()
    started = time.monotonic()

    size, steps = (args.dry_size, args.dry_steps) if args.dry_run else (1024, 20)
    pipe = build_sdxl(Scale.MINI if args.dry_run else Scale.REAL, device)
    spec = arch_spec(
        "sdxl-arch",
        Family.SDXL,
        arch_presets(Family.SDXL, width=size, height=size, steps=steps, scheduler="euler"),
    )
    dtype = "float32" if args.dry_run else "bfloat16"
    backend = prebuilt_backend(
        [spec], {"sdxl-arch": pipe}, LoaderOptions(device=device, dtype=dtype, channels_last=True)
    )
    loaded = backend.manager.get(spec)
    del pipe
    guided = Workload.resolve(backend, "sdxl-arch")
    few_step = dataclasses.replace(guided, steps=FEW_STEPS if not args.dry_run else 2, guidance=0.0)
    flops = unet_flops_per_image_step(loaded.pipe.unet, size, device, loaded.dtype)
    settings = EngineSettings(
        max_queued_per_user=64, max_batch_images=FEW_STEP_BATCH, cache_entries=0
    )
    async with running_engine(backend, settings) as engine:
        xl = Sdxl(
            loaded, engine, plain_pipeline(loaded, guided.scheduler), guided, few_step, flops, size
        )
        if "sdxl_eager" in args.parts:
            await run.part("sdxl_eager", 0, functools.partial(sdxl_eager, run, xl))
        else:  # what the later parts compare against
            await record_unet_inputs(run, xl)
            _, made = await engine_run(xl.engine, xl.guided, [Job("reference", args.batch, 77)])
            xl.reference = pixels([g.image for g in made])
        if "sd15_graphs" in args.parts:
            await run.part("sd15_graphs", 40, functools.partial(sd15_graphs, run))
        if "sdxl_compiled" in args.parts:
            await run.part(
                "sdxl_compiled", args.compile_needs_s, functools.partial(sdxl_compiled, run, xl)
            )
        if "sdxl_fp8" in args.parts:
            await run.part("sdxl_fp8", args.compile_needs_s, functools.partial(sdxl_fp8, run, xl))
    backend.manager.unload_all()
    if "compile_cache" in args.parts:
        await run.part("compile_cache", args.cache_needs_s, functools.partial(compile_cache, run))
    run.report.text(f"Total time: {time.monotonic() - started:.0f} s.\n")
    run.save()
    report.record(record_path(args))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy widths: checks the script")
    parser.add_argument("--batch", type=int, default=4, help="SDXL batch with guidance (default 4)")
    parser.add_argument("--reps", type=int, default=2, help="timed rounds per figure")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--latency-reps", type=int, default=4)
    parser.add_argument("--unet-iterations", type=int, default=8)
    parser.add_argument("--compile-mode", default=None, help="inductor mode (default: default)")
    parser.add_argument("--sd15-dtype", default="float16")
    parser.add_argument("--budget-s", type=float, default=440.0, help="no new part after this")
    parser.add_argument("--compile-needs-s", type=float, default=100.0, help=argparse.SUPPRESS)
    parser.add_argument("--cache-needs-s", type=float, default=70.0, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="folder for gpu_speed.md/.json (default $OUT)")
    parser.add_argument("--dry-size", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--dry-steps", type=int, default=2, help=argparse.SUPPRESS)
    add_record_args(parser)
    parser.add_argument("--parts", default=",".join(PARTS), help="which parts, in their order")
    args = parser.parse_args()
    args.parts = set(args.parts.split(","))
    if args.dry_run:
        args.reps, args.warmup, args.latency_reps, args.unet_iterations = 1, 0, 2, 1
        args.sd15_dtype = "float32"
    return args


def main() -> None:
    asyncio.run(main_async(parse_args()))


if __name__ == "__main__":
    main()
