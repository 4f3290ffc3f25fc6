#!/usr/bin/env bash
# The GPU column of experiments/benchmarks/evaluator_error on the unseen set (issue 13), for ONE lent H200.
#
#   OUT=/some/dir PART=1 bash experiments/benchmarks/evaluator_error_gpu.sh      (run from the repository root)
#   OUT=/some/dir PART=2 bash experiments/benchmarks/evaluator_error_gpu.sh      (a second call: the other half)
#
# The whole set does not fit one call: on the H200 one model took 167 s, of which the profiled table 85 s and the
# calibrated profiled evaluator (its own table + 8 runtime plans) 57 s. So the set is cut in two halves
# (PART=1: vit, bert, opt, gpt2; PART=2: qwen2, neox, phi, gemma; PART=all or MODELS=... as before), the
# calibrated profiled evaluator is left out (CALIBRATION_PLANS=0; its CPU column exists) and the runtime and
# table take REPEATS=10 steps (wall clock on a GPU; the runtime's p10-p90 spread is reported per model and a
# noisy measurement is re-measured, then labelled). Each half: ~4 x 70 s + start-up, within LIMIT_S=450.
#
# What it does, in at most LIMIT_S seconds of device time (a hard `timeout` inside; partial results survive):
#   * prints the machine (nvidia-smi, torch, CUDA, load average) into $OUT/machine.txt;
#   * builds the unseen models (experiments/benchmarks/unseen.py: random init + a few seconds of CPU
#     training, cached under $AUTOSURGEON_CACHE, default /tmp/autosurgeon-cache: NOT under $OUT);
#   * runs `python -m experiments.benchmarks.evaluator_error --unseen --device cuda --clock wall` with
#     $PLANS random plans per model (default 30, the issue's minimum) plus the uniform plans, writing
#     $OUT/evaluator_error_unseen_gpu.md and .json after EVERY model (a timeout keeps what was done);
#   * the local profile is measured on that machine (its GPU included) on first use, with the GPU's eager dispatch
#     costs (autosurgeon/hardware/dispatch.py: per-op, per-step, each linear format's per-call floor);
#   * the uncalibrated analytic evaluator measures each model's step rest (linears nulled) and its streamed
#     placements' costs on the GPU (their time there not yet measured); the calibrated analytic row is not built there
#     (it would be the same model measured twice); "analytic (profile dispatch only)" prices from the profile alone.
# Models, in order (cheapest first, so a timeout loses the expensive ones): $MODELS, default PART's half.
# Results: $OUT/evaluator_error_unseen_gpu_part$PART.md and .json (render both halves into one table with
# `python -m experiments.benchmarks.evaluator_error --unseen --device cuda --clock wall --threads 4 --plans 30
#  --repeats 10 --from-json A.json,B.json --out experiments/benchmarks/results/evaluator_error_unseen_gpu.md`).
#
# Packages it imports besides torch (all in this project's pyproject): numpy, transformers, tokenizers
# (the unseen set's BPE tokenizer), safetensors, psutil, and where present nvidia-ml-py (pynvml: GPU
# detection and the NVML energy counter; without it energy is an estimate that says so) and triton (the
# runtime's CUDA int4/int8 kernels; without it those kernels fall back to torch's).
# It reaches nothing outside the machine (no hub, no package index).
set -euo pipefail
: "${OUT:?set OUT to the folder results go to}"
PY="${PYTHON:-python3}"
PLANS="${PLANS:-30}"
LIMIT_S="${LIMIT_S:-450}"
REPEATS="${REPEATS:-10}"
CALIBRATION_PLANS="${CALIBRATION_PLANS:-0}"
PART="${PART:-1}"
case "$PART" in
  1) HALF="unseen-vit,unseen-bert,unseen-opt,unseen-gpt2" ;;
  2) HALF="unseen-qwen2,unseen-neox,unseen-phi,unseen-gemma" ;;
  all) HALF="unseen-vit,unseen-bert,unseen-opt,unseen-gpt2,unseen-qwen2,unseen-neox,unseen-phi,unseen-gemma" ;;
  *) echo "PART must be 1, 2 or all, got '$PART'; set MODELS=a,b to choose models yourself" >&2; exit 2 ;;
esac
MODELS="${MODELS:-$HALF}"
export AUTOSURGEON_CACHE="${AUTOSURGEON_CACHE:-/tmp/autosurgeon-cache}"
export PYTHONPATH="${PWD}${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  uptime
  nvidia-smi --query-gpu=name,memory.total,driver_version,power.limit,clocks.max.sm --format=csv || true
  "$PY" - <<'PYEOF'
import importlib, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NONE")
for name in ("numpy", "transformers", "tokenizers", "safetensors", "psutil", "pynvml", "triton"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "?"))
    except ImportError as exc:
        print(name, "MISSING", exc)
PYEOF
} | tee "$OUT/machine_part$PART.txt"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible: nothing to measure')"
# One process, one card: the runtime measurements and every evaluator's run share it (MEASURING.md).
set +e
CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}" timeout --signal=INT "$LIMIT_S" \
  "$PY" -m experiments.benchmarks.evaluator_error --unseen --models "$MODELS" --device cuda --clock wall \
  --threads 4 --plans "$PLANS" --repeats "$REPEATS" --calibration-plans "$CALIBRATION_PLANS" \
  --out "$OUT/evaluator_error_unseen_gpu_part$PART.md" 2>&1 | tail -n 200 > "$OUT/log_part$PART.txt"
rc=${PIPESTATUS[0]}
set -e
uptime >> "$OUT/machine_part$PART.txt"
echo "exit status $rc (124/130: the time limit cut it; the .md/.json hold every model finished before)" \
  | tee -a "$OUT/machine_part$PART.txt"
ls -l "$OUT"
