#!/usr/bin/env bash
# The GPU benchmarks: the real SD 1.5 and SDXL architectures with random weights on one
# NVIDIA GPU (H100/H200 class), no internet, in under 9 minutes. Each writes its .md and
# .json to $OUT (when set) and appends its section to BENCHMARKS.md.
#
#   bash bench/gpu.sh                      # issue 21: compile, CUDA graphs, FP8, 4 steps
#   bash bench/gpu.sh --dry-run            # on a CPU: checks the script end to end
#   bash bench/gpu.sh --arch               # issue 8: fp16, SDPA, channels_last, batch 1/4/8
#   bash bench/gpu.sh --ray                # issue 20: 1..N Ray replicas, one per GPU
#   bash bench/gpu.sh --arch --dtype bfloat16   # any python -m bench.gpu_bench option
#
# Needs python3 with torch (CUDA), transformers and diffusers. Where diffusers (or another
# pure-Python package) is missing and nothing can be downloaded, put its wheels in .whl/
# (e.g. `pip download --no-deps diffusers==0.42.1 importlib_metadata -d .whl`): they are
# installed into a private folder first.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  if ! command -v nvidia-smi >/dev/null && [ -x .venv/bin/python ]; then
    PYTHON=.venv/bin/python  # a CPU machine with the project's virtual environment
  fi
fi
if compgen -G ".whl/*.whl" >/dev/null; then
  site=${TMPDIR:-/tmp}/bench-site
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
fi
# The default is issue 21's matrix (compile, CUDA graphs, FP8, 4 steps); --arch runs issue
# 8's architecture benchmark instead. A hard stop at GPU_BENCH_TIMEOUT_S (default 8 min 30 s,
# the script plans to finish before its --budget-s); what it measured is in $OUT by then.
module=bench.gpu_speed
if [ "${1:-}" = "--ray" ]; then
  # Issue 20: the engine on 1, 2, ... Ray replicas, one per GPU, on a cluster of this machine.
  shift
  gpus=$(nvidia-smi -L | wc -l)
  counts=$(seq -s, 1 "$gpus")
  exec timeout "${GPU_BENCH_TIMEOUT_S:-510}" "$PYTHON" -m bench.ray_replicas --device cuda \
    --replicas "$counts" --record-to "${OUT:-.}/ray_replicas.md" "$@"
fi
if [ "${1:-}" = "--arch" ]; then
  module=bench.gpu_bench
  shift
fi
exec timeout "${GPU_BENCH_TIMEOUT_S:-510}" "$PYTHON" -m "$module" "$@"
