#!/usr/bin/env bash
# The GPU benchmark (issue 8): the real SD 1.5 and SDXL architectures with random weights on
# one NVIDIA GPU (H100/H200 class), no internet, in under 8 minutes. It writes gpu_bench.md
# and gpu_bench.json to $OUT (when set) and appends its section to BENCHMARKS.md.
#
#   bash bench/gpu.sh                      # defaults: fp16, SDPA, channels_last
#   bash bench/gpu.sh --dtype bfloat16     # any python -m bench.gpu_bench option
#   bash bench/gpu.sh --dry-run            # on a CPU: checks the script end to end
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
# A hard stop at 7 min 50 s; the script itself plans to finish well before (--budget-s).
exec timeout 470 "$PYTHON" -m bench.gpu_bench "$@"
