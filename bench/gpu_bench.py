"""The GPU benchmark: the real SD 1.5 and SDXL architectures with random weights (issue 8).

No download and no internet: the models are built from the configs in bench/models.py (the
released models' UNet, VAE and CLIP text encoders; an in-memory tokenizer), so the compute
is that of the real models and the images are noise. For each family, at its native size:

- the UNet's floating-point operations per denoising step (FlopCounterMode, one forward with
  classifier-free guidance), its steps per second alone, and the fraction of the GPU's
  dense bf16/fp16 peak it reaches;
- engine against plain diffusers over the same modules (half precision, SDPA,
  channels_last; torch.compile with --compile), same process, alternating rounds: per-image
  latency and images per second at batch 1, 4 and 8;
- cross-user batching gain (SD 1.5): 1, 2, 4 and 8 users, together against one by one;
- submit → first progress with an idle engine, and last step → grid ready for 4 images
  (SDXL: 4 of 1024x1024, with make_grid and encode_preview as the bot calls them);
- peak GPU memory (torch.cuda.max_memory_allocated) per family and batch size.

Results are printed, written to $OUT (or --out) as gpu_bench.md and gpu_bench.json after
every section (so a run cut short still leaves what it measured), and appended to
BENCHMARKS.md. ``--budget-s`` bounds the run: later rounds are dropped to fit.

    bash bench/gpu.sh                          # on a GPU machine
    python -m bench.gpu_bench --dry-run        # the same code on a CPU, tiny widths, seconds
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import gc
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline
from torch.utils.flop_counter import FlopCounterMode

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
from bench.harness import (
    Job,
    Workload,
    alternate,
    engine_run,
    engine_run_one_by_one,
    jobs_for_batch,
    jobs_for_users,
    max_pixel_difference,
    plain_run,
    running_engine,
)
from bench.models import (
    CountingBackend,
    Scale,
    arch_presets,
    arch_spec,
    build_sd15,
    build_sdxl,
    parameter_count,
    plain_pipeline,
    prebuilt_backend,
    synchronize,
)
from engine.engine import Engine, EngineSettings
from engine.images import encode_preview, make_grid
from engine.loader import LoaderOptions
from engine.types import Done, Family, Progress

UPLOAD_LIMIT = 10 * 2**20 - 64 * 1024  # bot/delivery.py: Discord's limit less form overhead
GIB = 2**30

# Dense (no sparsity) bf16/fp16 tensor-core peaks in TFLOP/s, from the vendors' data sheets.
# Order matters: the first name found in the device name wins.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("RTX 4090", 165.2),
)


def peak_tflops(device_name: str) -> float | None:
    for marker, tflops in PEAK_TFLOPS:
        if marker in device_name:
            return tflops
    return None


@dataclass(frozen=True, slots=True)
class FamilyPlan:
    family: Family
    name: str
    size: int
    steps: int
    scheduler: str
    build: Callable[[Scale, str], DiffusionPipeline]


PLANS = {
    "sd15": FamilyPlan(Family.SD15, "sd15-arch", 512, 25, "euler_a", build_sd15),
    "sdxl": FamilyPlan(Family.SDXL, "sdxl-arch", 1024, 30, "dpmpp_2m_karras", build_sdxl),
}


# Relative cost of a family's part of the run, for sharing the time budget.
FAMILY_WEIGHT = {"sdxl": 2.0, "sd15": 1.0}


@dataclass
class Run:
    """Everything a run measured, and where it goes."""

    args: argparse.Namespace
    report: Report
    device: str
    dtype: torch.dtype
    deadline: float
    out: Path | None
    results: dict[str, Any] = field(default_factory=dict)

    family_deadline: float = 0.0  # this family's share of what is left

    def left_s(self) -> float:
        return self.family_deadline - time.monotonic()

    def save(self) -> None:
        save_outputs(self.out, "gpu_bench", self.report, self.results)


# --- the UNet alone -----------------------------------------------------------------------


def unet_inputs(
    unet: torch.nn.Module, images: int, size: int, device: str, dtype: torch.dtype
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """One denoising step's UNet inputs for ``images`` images with classifier-free guidance
    (a batch of 2 x images), as the pipelines build them."""
    config: Any = unet.config
    rows = 2 * images
    latents = torch.randn(
        rows, config.in_channels, size // 8, size // 8, device=device, dtype=dtype
    )
    timestep = torch.tensor(500, device=device)
    text = torch.randn(rows, 77, config.cross_attention_dim, device=device, dtype=dtype)
    kwargs: dict[str, Any] = {"encoder_hidden_states": text}
    if config.addition_embed_type == "text_time":
        pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(rows, pooled, device=device, dtype=dtype),
            "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * rows, device=device).to(
                dtype
            ),
        }
    return (latents, timestep), kwargs


def unet_flops_per_image_step(
    unet: torch.nn.Module, size: int, device: str, dtype: torch.dtype
) -> int:
    args, kwargs = unet_inputs(unet, 1, size, device, dtype)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        # forward, not __call__: a compiled module's __call__ would hide the operations.
        unet.forward(*args, **kwargs)
    return int(counter.get_total_flops())


def unet_seconds_per_forward(
    unet: torch.nn.Module,
    images: int,
    size: int,
    device: str,
    dtype: torch.dtype,
    iterations: int,
) -> float:
    args, kwargs = unet_inputs(unet, images, size, device, dtype)
    with torch.inference_mode():
        for _ in range(2):
            unet(*args, **kwargs)
        synchronize(device)
        started = time.perf_counter()
        for _ in range(iterations):
            unet(*args, **kwargs)
        synchronize(device)
    return (time.perf_counter() - started) / iterations


def measure_unet(run: Run, plan: FamilyPlan, unet: torch.nn.Module, size: int) -> None:
    flops = unet_flops_per_image_step(unet, size, run.device, run.dtype)
    name = torch.cuda.get_device_name() if run.device.startswith("cuda") else "cpu"
    peak = peak_tflops(name)
    rows = []
    figures = []
    for images in run.args.batch_list:
        seconds = unet_seconds_per_forward(
            unet, images, size, run.device, run.dtype, run.args.unet_iterations
        )
        achieved = flops * images / seconds
        fraction = achieved / (peak * 1e12) if peak else None
        figures.append(
            {
                "images": images,
                "s_per_step": seconds,
                "steps_per_s": 1 / seconds,
                "image_steps_per_s": images / seconds,
                "tflops": achieved / 1e12,
                "fraction_of_peak": fraction,
            }
        )
        rows.append(
            [
                images,
                f"{1 / seconds:.2f}",
                f"{images / seconds:.2f}",
                f"{achieved / 1e12:.1f}",
                "unknown peak" if fraction is None else f"**{pct(fraction)}**",
            ]
        )
    run.results.setdefault(plan.name, {})["unet"] = {
        "params": parameter_count(unet),
        "flops_per_image_step": flops,
        "peak_tflops": peak,
        "rows": figures,
    }
    run.report.text(
        f"UNet alone ({parameter_count(unet) / 1e6:.0f}M parameters), "
        f"{flops / 1e12:.3f} TFLOP per image per step (with guidance: 2 rows), peak "
        f"{'unknown' if peak is None else f'{peak:.0f} TFLOP/s'} for {name}:\n"
    )
    run.report.table(
        ["images", "UNet steps/s", "image-steps/s", "TFLOP/s", "fraction of bf16/fp16 peak"],
        rows,
    )


# --- engine against plain diffusers -------------------------------------------------------


async def compare(
    run: Run,
    plan: FamilyPlan,
    backend: CountingBackend,
    engine: Engine,
    workload: Workload,
    plain: DiffusionPipeline,
) -> None:
    async def on_plain(jobs: list[Job]) -> float:
        return plain_run(plain, workload, jobs)[0]

    async def on_engine(jobs: list[Job]) -> float:
        return (await engine_run(engine, workload, jobs))[0]

    rows = []
    figures = []
    memory_rows = []
    for batch in run.args.batch_list:
        if run.left_s() < 0:
            run.report.text(f"(batch {batch} skipped: the time budget is spent)\n")
            continue
        if run.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        seed_base = 1_000_000 * batch
        samples = await alternate(
            {"plain": on_plain, "engine": on_engine},
            functools.partial(jobs_for_batch, batch),
            reps=run.args.reps,
            warmup=run.args.warmup,
            seed_base=seed_base,
            deadline=run.family_deadline,
        )
        plain_s = summarize(samples["plain"])
        engine_s = summarize(samples["engine"])
        ratio = engine_s.median / plain_s.median
        figures.append(
            {
                "batch": batch,
                "plain_s": samples["plain"],
                "engine_s": samples["engine"],
                "ratio": ratio,
                "plain_images_per_s": batch / plain_s.median,
                "engine_images_per_s": batch / engine_s.median,
            }
        )
        rows.append(
            [
                batch,
                f"{ms(plain_s.median)} ({ms(plain_s.low)}–{ms(plain_s.high)})",
                f"{ms(engine_s.median)} ({ms(engine_s.low)}–{ms(engine_s.high)})",
                f"{ms(plain_s.median / batch)} / {ms(engine_s.median / batch)}",
                f"{batch / plain_s.median:.2f} / {batch / engine_s.median:.2f}",
                f"**{ratio:.3f}**",
                plain_s.n,
            ]
        )
        if run.device.startswith("cuda"):
            peak = torch.cuda.max_memory_allocated() / GIB
            memory_rows.append([batch, f"{peak:.2f}"])
            figures[-1]["peak_gpu_gib"] = peak
        print(f"  {plan.name} batch {batch}: engine ÷ plain {ratio:.3f}", flush=True)
        run.save()
    jobs = jobs_for_batch(1, 999)
    _, plain_images = plain_run(plain, workload, jobs)
    _, engine_images = await engine_run(engine, workload, jobs)
    difference = max_pixel_difference(plain_images, [g.image for g in engine_images])
    run.results.setdefault(plan.name, {})["compare"] = figures
    run.results[plan.name]["pixel_difference"] = difference
    run.report.text(
        f"Engine against plain diffusers ({workload.label}; same modules; rounds "
        "alternate; min–max in brackets):\n"
    )
    run.report.table(
        [
            "batch",
            "plain ms/call",
            "engine ms/call",
            "ms/image plain / engine",
            "images/s plain / engine",
            "engine ÷ plain",
            "rounds",
        ],
        rows,
    )
    run.report.text(
        f"Same seeds, plain against engine: max pixel difference {difference} (0 = identical).\n"
    )
    if memory_rows:
        run.report.text(f"Peak GPU memory allocated ({plan.name}, weights included):\n")
        run.report.table(["batch", "GiB"], memory_rows)


async def batching(
    run: Run, plan: FamilyPlan, backend: CountingBackend, workload: Workload
) -> None:
    settings = EngineSettings(max_queued_per_user=64, max_batch_images=8, cache_entries=0)
    rows = []
    figures = []
    async with running_engine(backend, settings) as engine:

        async def together(jobs: list[Job]) -> float:
            return (await engine_run(engine, workload, jobs))[0]

        async def one_by_one(jobs: list[Job]) -> float:
            return (await engine_run_one_by_one(engine, workload, jobs))[0]

        for users in run.args.user_list:
            if run.left_s() < 0:
                run.report.text(f"({users} users skipped: the time budget is spent)\n")
                continue
            samples = await alternate(
                {"together": together, "one by one": one_by_one},
                functools.partial(jobs_for_users, users),
                reps=run.args.batching_reps,
                warmup=1,
                seed_base=2_000_000 * users,
                deadline=run.family_deadline,
            )
            gain = summarize(samples["one by one"]).median / summarize(samples["together"]).median
            figures.append({"users": users, "gain": gain, **samples})
            rows.append(
                [
                    users,
                    ms(summarize(samples["one by one"]).median),
                    ms(summarize(samples["together"]).median),
                    f"**{gain:.2f}x**",
                ]
            )
            run.save()
    run.results.setdefault(plan.name, {})["batching"] = figures
    run.report.text(f"Cross-user batching ({workload.label}), one image per user:\n")
    run.report.table(["users", "one by one ms", "together ms", "throughput gain"], rows)


def vae_decode_seconds(
    pipe: DiffusionPipeline, images: int, size: int, device: str, dtype: torch.dtype
) -> tuple[float, float]:
    """(VAE decode of ``images`` latents, conversion to PIL images), measured directly."""
    vae: Any = pipe.vae
    latents = torch.randn(
        images, vae.config.latent_channels, size // 8, size // 8, device=device, dtype=dtype
    )
    with torch.inference_mode():
        vae.decode(latents / vae.config.scaling_factor, return_dict=False)  # warm-up
        synchronize(device)
        started = time.perf_counter()
        decoded = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
        synchronize(device)
        decoded_at = time.perf_counter()
        pipe.image_processor.postprocess(decoded, output_type="pil")
    return decoded_at - started, time.perf_counter() - decoded_at


async def latencies(
    run: Run,
    plan: FamilyPlan,
    engine: Engine,
    backend: CountingBackend,
    workload: Workload,
    pipe: DiffusionPipeline,
) -> None:
    """Submit → first progress (idle engine), and last step → Done → grid ready for 4 images.

    The first jobs are cancelled after their first progress event. The 4-image job runs a
    few steps only (what follows the last step does not depend on the step count), with
    each step synchronised: on a GPU the CPU queues steps ahead of the device, and a
    Progress event would otherwise mark a step queued, not done.
    """
    firsts = []
    for i in range(run.args.latency_reps):
        started = time.perf_counter()
        handle = await engine.submit(
            workload.request(count=1, seed=3_000_000 + i, preview_every=5), user_id="latency"
        )
        async for event in handle:
            if isinstance(event, Progress):
                firsts.append(time.perf_counter() - started)
                handle.cancel()
        for _ in range(1000):  # until the cancelled call has stopped: the engine is idle
            if not (engine.status().running or engine.status().queued):
                break
            await asyncio.sleep(0.01)
    short = dataclasses.replace(workload, steps=min(4, workload.steps))
    backend.sync_steps = True
    try:
        handle = await engine.submit(short.request(count=4, seed=3_100_000), user_id="latency")
        last_step = done_at = None
        images = []
        async for event in handle:
            if isinstance(event, Progress) and event.step == event.total:
                last_step = time.perf_counter()
            if isinstance(event, Done):
                done_at = time.perf_counter()
                images = [generated.image for generated in event.result.images]
    finally:
        backend.sync_steps = False
    assert last_step is not None and done_at is not None
    grid_started = time.perf_counter()
    grid = make_grid(images)
    data, extension = encode_preview(grid, max_bytes=UPLOAD_LIMIT, prefer="jpeg")
    grid_s = time.perf_counter() - grid_started
    decode_s, to_pil_s = vae_decode_seconds(pipe, 4, workload.width, run.device, run.dtype)
    first = summarize(firsts[1:] or firsts)
    figures = {
        "first_progress_s": first.median,
        "last_step_to_done_s": done_at - last_step,
        "vae_decode_4_s": decode_s,
        "to_pil_4_s": to_pil_s,
        "grid_s": grid_s,
        "last_step_to_grid_s": done_at - last_step + grid_s,
    }
    run.results.setdefault(plan.name, {})["latency"] = figures
    run.report.text(f"Latency ({workload.label}):\n")
    run.report.table(
        ["interval", "ms"],
        [
            ["submit → first Progress, idle engine (median)", f"**{ms(first.median)}**"],
            ["last step done → Done, 4 images (VAE decode, PIL, events)", ms(done_at - last_step)],
            ["of which: VAE decode of 4 latents, measured alone", ms(decode_s)],
            ["of which: decoded tensors → 4 PIL images, measured alone", ms(to_pil_s)],
            [
                f"make_grid + encode_preview ({grid.width}x{grid.height} → "
                f"{extension}, {len(data) / 2**20:.2f} MiB)",
                ms(grid_s),
            ],
            ["last step → grid ready", f"**{ms(figures['last_step_to_grid_s'])}**"],
        ],
    )


# --- one family ---------------------------------------------------------------------------


async def bench_family(run: Run, plan: FamilyPlan) -> None:
    args = run.args
    scale = Scale.MINI if args.dry_run else Scale.REAL
    size = args.dry_size if args.dry_run else plan.size
    steps = args.dry_steps if args.dry_run else plan.steps
    run.report.text(f"#### {plan.name}: {plan.family.value} architecture, random weights\n")
    started = time.perf_counter()
    pipe = plan.build(scale, run.device)
    build_s = time.perf_counter() - started
    spec = arch_spec(
        plan.name,
        plan.family,
        arch_presets(plan.family, width=size, height=size, steps=steps, scheduler=plan.scheduler),
    )
    options = LoaderOptions(
        device=run.device,
        dtype=args.dtype,
        channels_last=args.channels_last,
        torch_compile=args.compile,
        warmup_batches=tuple(args.batch_list),
        fuse_qkv=args.fuse_qkv,
    )
    backend = prebuilt_backend([spec], {plan.name: pipe}, options)
    loaded = backend.manager.get(spec)
    del pipe
    workload = Workload.resolve(backend, plan.name)
    plain = plain_pipeline(loaded, workload.scheduler)
    run.report.text(
        f"Built in {build_s:.1f} s; weights {loaded.size_bytes / GIB:.2f} GiB in "
        f"{loaded.dtype}; channels_last {args.channels_last}; torch.compile {args.compile}; "
        f"fused QKV {args.fuse_qkv}.\n"
    )
    run.results.setdefault(plan.name, {})["setup"] = {
        "build_s": build_s,
        "weights_bytes": loaded.size_bytes,
        "dtype": str(loaded.dtype),
        "size": size,
        "steps": steps,
        "scheduler": workload.scheduler,
    }

    measure_unet(run, plan, loaded.pipe.unet, size)
    run.save()
    settings = EngineSettings(max_queued_per_user=64, max_batch_images=max(args.batch_list))
    async with running_engine(backend, settings) as engine:
        await compare(run, plan, backend, engine, workload, plain)
        run.save()
        if run.left_s() > 0:
            await latencies(run, plan, engine, backend, workload, loaded.pipe)
            run.save()
    if plan.family is Family.SD15 and run.left_s() > 0:
        await batching(run, plan, backend, workload)
        run.save()
    backend.manager.unload_all()
    del plain, loaded, backend, engine
    gc.collect()
    if run.device.startswith("cuda"):
        torch.cuda.empty_cache()


# --- main ---------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="run everything on the CPU at toy widths and sizes (checks the script, not speed)",
    )
    parser.add_argument("--families", default="sdxl,sd15", help="in order (default sdxl,sd15)")
    parser.add_argument("--dtype", default="float16", help="float16 or bfloat16 (GPU)")
    parser.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="keep the UNet in the default memory format",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the UNet and VAE decoder (warmed for each --batches size at load)",
    )
    parser.add_argument("--fuse-qkv", action="store_true", help="fuse attention's QKV matmuls")
    parser.add_argument("--batches", default="1,4,8", help="batch sizes (default 1,4,8)")
    parser.add_argument("--users", default="1,2,4,8", help="users for the batching gain")
    parser.add_argument("--reps", type=int, default=3, help="timed rounds per batch size")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--batching-reps", type=int, default=3, help="rounds per user count")
    parser.add_argument("--latency-reps", type=int, default=5, help="first-progress samples")
    parser.add_argument("--unet-iterations", type=int, default=10, help="timed UNet forwards")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=360.0,
        help="start no new round after this many seconds (default 360; rounds in flight end)",
    )
    parser.add_argument("--out", type=Path, help="folder for gpu_bench.md/.json (default $OUT)")
    parser.add_argument("--dry-size", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--dry-steps", type=int, default=2, help=argparse.SUPPRESS)
    add_record_args(parser)
    args = parser.parse_args()
    args.batch_list = [int(b) for b in args.batches.split(",")]
    args.user_list = [int(u) for u in args.users.split(",")]
    if args.dry_run:
        args.dtype = "float32"
        args.reps = min(args.reps, 1)
        args.warmup = 0
        args.batching_reps = 1
        args.latency_reps = 2
        args.unet_iterations = 1
    return args


async def main_async(args: argparse.Namespace) -> None:
    quiet_libraries()
    if args.dry_run:
        device = "cpu"
    elif torch.cuda.is_available():
        device = "cuda"
    else:
        raise SystemExit("No CUDA GPU: run on a GPU machine, or pass --dry-run to test on a CPU.")
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    title = "GPU: SD 1.5 and SDXL architectures" + (" (dry run on CPU)" if args.dry_run else "")
    report = Report(title, describe_machine(device))
    out_env = os.environ.get("OUT")
    out = args.out or (Path(out_env) if out_env else None)
    run = Run(
        args=args,
        report=report,
        device=device,
        dtype={"float16": torch.float16, "bfloat16": torch.bfloat16}.get(args.dtype, torch.float32),
        deadline=time.monotonic() + args.budget_s,
        out=out,
    )
    run.results["machine"] = report.machine.lines()
    run.results["args"] = {k: v for k, v in vars(args).items() if k not in ("record_to",)}
    started = time.monotonic()
    names = args.families.split(",")
    for index, name in enumerate(names):
        # Share what is left of the budget by each family's expected cost.
        weights = [FAMILY_WEIGHT[n] for n in names[index:]]
        now = time.monotonic()
        run.family_deadline = now + (run.deadline - now) * weights[0] / sum(weights)
        await bench_family(run, PLANS[name])
    run.report.text(f"Total time: {time.monotonic() - started:.0f} s.\n")
    run.save()
    report.record(record_path(args))


def main() -> None:
    asyncio.run(main_async(parse_args()))


if __name__ == "__main__":
    main()
