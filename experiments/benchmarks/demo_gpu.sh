#!/usr/bin/env bash
# The demo on a lent GPU (issue 15): `autosurgeon demo` (on CUDA its default is the streaming scenario:
# llama-7b-16l-shape, bf16 7.0 GB, under gpu=3GiB, raced against accelerate offload and uniform int8/int4 in one
# process), then `autosurgeon run llama-7b-16l-shape --prompt-ids random:16 --memory-budget gpu=3GiB --json`.
#
#   OUT=/some/folder bash experiments/benchmarks/demo_gpu.sh        (from the repository root; at most 330 s + 120 s by its own timeouts)
#
# Writes into $OUT (7 files, no sub-folders): gpu.txt (nvidia-smi), load.txt (uptime before/after),
# demo_gpu.txt / demo_gpu.err (the demo's table / its progress), demo_gpu_result.json (every figure with its
# label and method), run_7b_gpu.json / run_7b_gpu.err. An empty AUTOSURGEON_CACHE: nothing is reused.
# Python packages it imports beyond torch (sys.modules after the same flow on a CPU): transformers with its
# dependencies (tokenizers, huggingface_hub, safetensors, regex, pyyaml, tqdm, packaging, filelock, the hub's HTTP
# client), accelerate (+ psutil), nvidia-ml-py (pynvml, for NVML energy), numpy, scipy, pillow (pulled by
# transformers); all are in the lent H200 image (KINDS.md). Not imported: pymoo, optuna, gymnasium,
# stable-baselines3, dask, tensorboard (the streaming scenario runs no sweep). It runs from the source tree with
# `python3 -m autosurgeon` (no pip install needed).
set -uo pipefail
OUT=${OUT:?set OUT to the folder for the results}
PY=${PYTHON:-python3}
cd "$(dirname "$0")/../.." || exit 1
export PYTHONUNBUFFERED=1
AUTOSURGEON_CACHE=$(mktemp -d)
export AUTOSURGEON_CACHE
RUN_DIR=$(mktemp -d)
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
echo "host cores: $(nproc)" >> "$OUT/gpu.txt"
echo "before: $(uptime)" > "$OUT/load.txt"
start=$(date +%s)
timeout 330 "$PY" -m autosurgeon demo --out "$RUN_DIR/demo" > "$OUT/demo_gpu.txt" 2> "$OUT/demo_gpu.err"
echo "demo exit $? after $(( $(date +%s) - start )) s wall" >> "$OUT/demo_gpu.txt"
cp "$RUN_DIR/demo/result.json" "$OUT/demo_gpu_result.json" 2>> "$OUT/demo_gpu.err"
echo "after demo: $(uptime)" >> "$OUT/load.txt"
start=$(date +%s)
timeout 120 "$PY" -m autosurgeon run llama-7b-16l-shape --prompt-ids random:16 --memory-budget gpu=3GiB --json \
    > "$OUT/run_7b_gpu.json" 2> "$OUT/run_7b_gpu.err"
echo "run exit $? after $(( $(date +%s) - start )) s wall" >> "$OUT/run_7b_gpu.err"
echo "after run: $(uptime)" >> "$OUT/load.txt"
rm -rf "$AUTOSURGEON_CACHE" "$RUN_DIR"
