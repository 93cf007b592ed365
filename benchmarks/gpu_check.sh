#!/usr/bin/env bash
# The GPU check of issue 6, prepared for a lent GPU machine (the `device` tool): random weights of CLIP ViT-L/14
# and Stable Diffusion 1.5 (no network there), bf16; prints stage-1 and joint images/s, the joint step's peak
# memory at batch 8, seconds per 512 px image at 25 steps and MFU estimates; the last line is JSON. Stops itself
# after 8 minutes.
#
# The GPU image has torch, transformers and accelerate but not diffusers: before the call, on this machine (.whl/
# is git-ignored, so it travels only when carried),
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl diffusers==0.42.1 importlib_metadata
# then run it with `carry: [".whl"]`:  bash benchmarks/gpu_check.sh
# Anywhere else (a workstation with uniemo installed) it runs as it is; `bash benchmarks/gpu_check.sh --tiny` is
# the seconds-long smoke test on a CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
    $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/uniemo-site .whl/*.whl
    export PYTHONPATH=/tmp/uniemo-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -n "${OUT:-}" ]; then
    timeout 480 $PYTHON benchmarks/gpu_check.py "$@" 2>&1 | tee "$OUT/gpu_check.log"
else
    timeout 480 $PYTHON benchmarks/gpu_check.py "$@"
fi
