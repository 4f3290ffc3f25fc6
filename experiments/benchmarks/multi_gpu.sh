#!/usr/bin/env bash
# Issue 19's Done-when benchmark on a lent 2-GPU machine (nvidia-h200-x2: 2 H200, 32 cores, 256 GiB RAM):
# Llama-70B shape in bf16 (~129 GiB, random seeded weights built on the machine) with a per-GPU cap that forces
# streaming; per-link pinned copy bandwidth, the reference (all weights on the two GPUs), ours on 1 and on 2 GPUs at
# the same per-GPU cap, accelerate's multi-GPU offload at the same caps, and the int4 rows, in one process
# (experiments/benchmarks/multi_gpu.py says how each row is measured).
#
#   OUT=/some/folder bash experiments/benchmarks/multi_gpu.sh          # from the repository root; <= 8 min
#
# Imports besides torch: transformers, accelerate, safetensors (all on the GPU machines' image). Nothing is
# downloaded. With fewer than 2 GPUs it refuses in one line and exits 2. If the full 80 layers do not finish in
# time, the JSON keeps every row that did; LAYERS=40 halves the model (say so when quoting it).
set -euo pipefail

OUT=${OUT:?set OUT to the folder the results go to}
PY=${PYTHON:-python3}
CAP=${CAP:-40GiB}
LAYERS=${LAYERS:-0}
ROUNDS=${ROUNDS:-1}
mkdir -p "$OUT"
started=$(date +%s)
{
    "$PY" -c "import torch, transformers, accelerate as a; print('torch', torch.__version__,
'transformers', transformers.__version__, 'accelerate', a.__version__)"
    nvidia-smi --query-gpu=index,name,memory.total,pcie.link.gen.max,pcie.link.width.max --format=csv,noheader || true
    nvidia-smi topo -m || true
    free -g | head -2
    uptime
} > "$OUT/environment.txt" 2>&1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
left=$(( 470 - ($(date +%s) - started) ))
timeout --signal=INT "$left" "$PY" -m experiments.benchmarks.multi_gpu --out "$OUT" --cap "$CAP" --layers "$LAYERS" \
    --rounds "$ROUNDS" 2>"$OUT/multi_gpu.log" \
    || echo "multi_gpu ended early (status $?): multi_gpu.json holds the rows that finished; see multi_gpu.log"
uptime >> "$OUT/environment.txt"
echo "wall $(( $(date +%s) - started )) s" | tee -a "$OUT/environment.txt"
