"""What every benchmark shares: the machine's description, statistics, Markdown tables, and
the dated record each run appends to BENCHMARKS.md."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = REPO_ROOT / "BENCHMARKS.md"
# CPU use by anything else, sampled for a second before a run, above which the figures are
# flagged as measured on a busy machine.
BUSY_FRACTION = 0.15


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str:
    try:
        imported = __import__(module)
    except ImportError:
        return "not installed"
    return str(getattr(imported, "__version__", "?"))


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return device


@dataclass(frozen=True, slots=True)
class Machine:
    cpu: str
    cores: int
    torch_threads: int
    python: str
    torch: str
    diffusers: str
    transformers: str
    device: str
    load_before: float
    busy_before: float | None  # fraction of all cores in use during the second before

    @property
    def busy(self) -> bool:
        return self.busy_before is not None and self.busy_before > BUSY_FRACTION

    def lines(self) -> list[str]:
        load = f"load average (1 min) {self.load_before:.2f}"
        if self.busy_before is not None:
            load += f", CPU in use {self.busy_before * 100:.0f}% during the second before"
        if self.busy:
            load += " (other processes were running: figures may be pessimistic and noisier)"
        return [
            f"- CPU: {self.cpu}, {self.cores} cores (torch uses {self.torch_threads} threads)",
            f"- Device: {self.device}",
            f"- Python {self.python}, torch {self.torch}, diffusers {self.diffusers}, "
            f"transformers {self.transformers}",
            f"- Before the run: {load}",
        ]


def describe_machine(device: str = "cpu") -> Machine:
    import torch

    return Machine(
        cpu=cpu_model(),
        cores=os.cpu_count() or 1,
        torch_threads=torch.get_num_threads(),
        python=platform.python_version(),
        torch=torch.__version__,
        diffusers=_version("diffusers"),
        transformers=_version("transformers"),
        device=device_name(device),
        load_before=os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0,
        busy_before=cpu_busy_fraction(),
    )


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies of all CPUs from /proc/stat; None where there is none."""
    try:
        first = Path("/proc/stat").read_text(encoding="utf-8").splitlines()[0].split()
    except (OSError, IndexError):
        return None
    values = [int(v) for v in first[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return idle, sum(values)


def cpu_busy_fraction(seconds: float = 1.0) -> float | None:
    """The fraction of all cores busy over ``seconds`` (this process is idle meanwhile)."""
    before = _cpu_times()
    if before is None:
        return None
    time.sleep(seconds)
    after = _cpu_times()
    if after is None or after[1] == before[1]:
        return None
    return 1 - (after[0] - before[0]) / (after[1] - before[1])


# --- statistics ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Summary:
    """Order statistics of repeated measurements (seconds or any unit)."""

    n: int
    median: float
    p25: float
    p75: float
    low: float
    high: float
    mean: float
    stdev: float

    @property
    def cv(self) -> float:
        """Coefficient of variation (stdev / mean), a fraction."""
        return self.stdev / self.mean if self.mean else 0.0

    @property
    def iqr_fraction(self) -> float:
        """Interquartile range relative to the median, a fraction."""
        return (self.p75 - self.p25) / self.median if self.median else 0.0


def _quantile(ordered: Sequence[float], q: float) -> float:
    if len(ordered) == 1:
        return ordered[0]
    position = q * (len(ordered) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def summarize(samples: Sequence[float]) -> Summary:
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    return Summary(
        n=len(ordered),
        median=statistics.median(ordered),
        p25=_quantile(ordered, 0.25),
        p75=_quantile(ordered, 0.75),
        low=ordered[0],
        high=ordered[-1],
        mean=statistics.fmean(ordered),
        stdev=statistics.stdev(ordered) if len(ordered) > 1 else 0.0,
    )


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f}"


def pct(fraction: float) -> str:
    return f"{fraction * 100:.1f}%"


# --- reporting ----------------------------------------------------------------------------


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|")

    lines = [
        "| " + " | ".join(cell(h) for h in headers) + " |",
        "| " + " | ".join("---" for _ in headers) + " |",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Report:
    """A benchmark's output: printed as it is built, and appended to BENCHMARKS.md at the end."""

    title: str
    machine: Machine
    command: str = field(default_factory=lambda: "python -m " + _module_command())
    parts: list[str] = field(default_factory=list)
    started: str = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    )

    def __post_init__(self) -> None:
        print(self._header(), flush=True)

    def _header(self) -> str:
        return "\n".join(
            [
                f"### {self.title} — {self.started}",
                "",
                f"`{self.command}`",
                "",
                *self.machine.lines(),
                "",
            ]
        )

    def text(self, text: str) -> None:
        self.parts.append(text)
        print(text, flush=True)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        self.text(markdown_table(headers, rows) + "\n")

    def markdown(self) -> str:
        return "\n".join([self._header(), *self.parts]).rstrip() + "\n"

    def record(self, path: Path | None = BENCHMARKS_MD) -> None:
        """Append this report as a dated section of ``path`` (None: do nothing)."""
        if path is None:
            return
        existing = path.read_text(encoding="utf-8") if path.exists() else ""
        separator = "" if not existing or existing.endswith("\n\n") else "\n"
        with path.open("a", encoding="utf-8") as file:
            file.write(separator + self.markdown() + "\n")
        print(f"(appended to {path})", flush=True)


def save_outputs(out: Path | None, stem: str, report: Report, results: Mapping[str, Any]) -> None:
    """``stem``.md and ``stem``.json in ``out`` (nothing when None): written after every
    section, so a run cut short keeps what it measured."""
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(report.markdown(), encoding="utf-8")
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")


def _module_command() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = spec.name if spec is not None else Path(sys.argv[0]).stem
    return " ".join([name, *sys.argv[1:]])


def add_record_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-record",
        action="store_true",
        help="print the figures only; do not append them to BENCHMARKS.md",
    )
    parser.add_argument(
        "--record-to",
        type=Path,
        default=BENCHMARKS_MD,
        help="the Markdown file to append to (default: BENCHMARKS.md at the repository root)",
    )


def record_path(args: argparse.Namespace) -> Path | None:
    return None if args.no_record else args.record_to


def quiet_libraries() -> None:
    """Silence the warnings diffusers and transformers print on every random-weight build."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("diffusers", "transformers", "engine"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()
    except ImportError:
        pass
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
    except ImportError:
        pass
