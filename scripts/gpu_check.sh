#!/usr/bin/env bash
# One unattended device check: a demo tilt, a LoRA tilt, a phrase tilt in chat and a GGUF export on a
# simulated 1B Llama model with a 128k vocabulary, built in process (no network, no data packages).
#   scripts/gpu_check.sh                      # CUDA, the 1B model; the table is /tmp/gpu-check/table.md
#   scripts/gpu_check.sh --device cpu --tiny  # the dry run the test suite makes
# Options: --device cuda|cpu, --tiny, --size tiny|135m-128k|0.5b|1b, --out DIR (see scripts/gpu_check.py).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python}" scripts/gpu_check.py "$@"
