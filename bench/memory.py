"""Peak memory per model family and batch size (issue 8).

Each (model, batch) runs in a fresh subprocess, so peaks do not carry over: it imports the
stack, loads the model through the engine's ``ModelManager``, runs one pipeline call of the
batch through ``DiffusersBackend.run``, and reports its peak resident set size (RSS), with
the RSS after imports and after loading for reference. With CUDA it also reports
``torch.cuda.max_memory_allocated`` for the call.

    python -m bench.memory                      # tiny and tiny-xl, batch 1 and 4, on the CPU
    python -m bench.memory --sd15-arch          # also SD 1.5's real architecture at 64x64
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

from bench.common import Report, add_record_args, describe_machine, quiet_libraries, record_path

MIB = 2**20


def current_rss() -> int:
    """This process's resident set size now, in bytes (Linux; 0 elsewhere)."""
    try:
        fields = Path("/proc/self/statm").read_text(encoding="utf-8").split()
    except OSError:
        return 0
    return int(fields[1]) * resource.getpagesize()


def peak_rss() -> int:
    """This process's peak resident set size so far, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def child(model: str, batch: int, device: str, size: int | None) -> dict[str, object]:
    quiet_libraries()
    import torch

    from bench.harness import Workload, jobs_for_batch
    from bench.models import (
        Scale,
        arch_presets,
        arch_spec,
        build_sd15,
        prebuilt_backend,
        tiny_backend,
    )
    from engine.loader import LoaderOptions
    from engine.types import Family

    after_imports = current_rss()
    if model == "sd15-arch":
        spec = arch_spec(
            model,
            Family.SD15,
            arch_presets(Family.SD15, width=64, height=64, steps=2, scheduler="euler_a"),
        )
        backend = prebuilt_backend(
            [spec], {model: build_sd15(Scale.REAL)}, LoaderOptions(device=device)
        )
    else:
        backend = tiny_backend(device)
    workload = Workload.resolve(backend, model, width=size, height=size)
    backend.manager.get(backend.registry.get(workload.model))
    after_load = current_rss()
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        weights_gpu = torch.cuda.memory_allocated()
    slots = []
    for index, job in enumerate(jobs_for_batch(batch, 1)):
        resolved = backend.resolve(workload.request(count=job.count, seed=job.seed))
        slots += resolved.slots(f"job-{index}")
    backend.run(resolved, slots, lambda _info: frozenset())
    result: dict[str, object] = {
        "model": model,
        "family": backend.registry.get(model).family.value,
        "batch": batch,
        "size": f"{workload.width}x{workload.height}",
        "steps": workload.steps,
        "rss_imports": after_imports,
        "rss_loaded": after_load,
        "rss_peak": peak_rss(),
        "weights": backend.manager.loaded_bytes(),
    }
    if cuda:
        torch.cuda.synchronize()
        result["gpu_weights"] = weights_gpu
        result["gpu_peak"] = torch.cuda.max_memory_allocated()
    return result


def run_child(model: str, batch: int, device: str, size: int | None) -> dict[str, object]:
    command = [sys.executable, "-m", "bench.memory", "--child", model, "--batch", str(batch)]
    command += ["--device", device, "--no-record"]
    if size is not None:
        command += ["--size", str(size)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return dict(json.loads(output.strip().splitlines()[-1]))


def mib(value: object) -> str:
    return f"{int(str(value)) / MIB:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--models", default="tiny,tiny-xl", help="registry models")
    parser.add_argument("--batches", default="1,4", help="batch sizes (default: 1,4)")
    parser.add_argument("--size", type=int, help="image side (default: the model's)")
    parser.add_argument(
        "--sd15-arch", action="store_true", help="also SD 1.5's real architecture at 64x64"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    add_record_args(parser)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.batch, args.device, args.size)))
        return

    report = Report("Peak memory per model family and batch", describe_machine(args.device))
    models = args.models.split(",") + (["sd15-arch"] if args.sd15_arch else [])
    rows = []
    for model in models:
        for batch in (int(b) for b in args.batches.split(",")):
            figures = run_child(model, batch, args.device, args.size)
            row = [
                model,
                figures["family"],
                batch,
                f"{figures['size']}, {figures['steps']} steps",
                mib(figures["weights"]),
                mib(figures["rss_imports"]),
                mib(figures["rss_loaded"]),
                f"**{mib(figures['rss_peak'])}**",
            ]
            if "gpu_peak" in figures:
                row += [mib(figures["gpu_weights"]), f"**{mib(figures['gpu_peak'])}**"]
            rows.append(row)
            print(f"  {model} batch {batch}: peak RSS {mib(figures['rss_peak'])} MiB", flush=True)
    headers = [
        "model",
        "family",
        "batch",
        "size",
        "weights MiB",
        "RSS after imports MiB",
        "RSS after loading MiB",
        "peak RSS MiB",
    ]
    if rows and len(rows[0]) > len(headers):
        headers += ["GPU after loading MiB", "peak GPU allocated MiB"]
    report.text("Each row is a fresh process: imports, load, one pipeline call.\n")
    report.table(headers, rows)
    report.record(record_path(args))


if __name__ == "__main__":
    main()
