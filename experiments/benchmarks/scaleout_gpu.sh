#!/usr/bin/env bash
# Scale-out on a lent GPU machine (an H200 with 16 host cores): sweep evaluations per second with 1, 2 and 4 local
# Dask worker processes for the analytic, profiled and runtime evaluators, against the serial evaluator in the same
# run (experiments/benchmarks/scaleout.py: interleaved rounds, per-round ratios), and whether every worker count's
# metrics equal the serial ones plan by plan (the runtime evaluator: memory and plans; its timings are measured).
#
#   OUT=/some/folder bash experiments/benchmarks/scaleout_gpu.sh        # from the repository root; <= 7 min
#
# The machine's python3 holds torch, transformers, safetensors, numpy, scipy and most of Dask's small dependencies,
# but not Dask, pymoo or what only they need, and it reaches no package index. The wheels below are carried with
# the working tree in $WHEELS (default .wheels/scaleout; not committed), each the version in the project's venv,
# for CPython 3.12 on x86_64 Linux (the image's python3), made here with:
#
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
#     --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
#     -d .wheels/scaleout dask==2026.8.0 distributed==2026.8.0 tornado==6.6.1 tblib==3.2.2 zict==3.0.0 \
#     locket==1.0.0 partd==1.4.2 pymoo==0.6.2 importlib_metadata==10.2.0 lazy-importer==0.1.0
#
# Why each: dask, distributed (the cluster); tornado, tblib, zict, locket (distributed's own dependencies that the
# image lacks); partd (dask's, with locket); pymoo (experiments.sweep imports it: the sweep's algorithms);
# importlib_metadata, lazy-importer (dask's metadata lookups; lazy-importer is importlib_metadata 10's). Installed
# with --no-deps: pymoo's declared plotting and optimiser extras (matplotlib, autograd, cma, alive-progress, moocore,
# Deprecated) are never imported by this benchmark. The rest of what it imports is on the image already:
# cloudpickle click jinja2 markupsafe msgpack psutil pyyaml sortedcontainers toolz packaging zipp fsspec tqdm
# nvidia-ml-py (and torch, transformers, tokenizers, safetensors, huggingface-hub, accelerate, numpy, scipy).
set -euo pipefail

OUT=${OUT:?set OUT to the folder the results go to}
WHEELS=${WHEELS:-.wheels/scaleout}
PY=${PYTHON:-python3}
WHEEL_PINS=(dask==2026.8.0 distributed==2026.8.0 tornado==6.6.1 tblib==3.2.2 zict==3.0.0 locket==1.0.0
            partd==1.4.2 pymoo==0.6.2 importlib_metadata==10.2.0 lazy-importer==0.1.0)
IMAGE_HAS=(cloudpickle click jinja2 markupsafe msgpack psutil pyyaml sortedcontainers toolz packaging zipp fsspec
           tqdm nvidia-ml-py torch transformers tokenizers safetensors huggingface-hub accelerate numpy scipy)
mkdir -p "$OUT"
started=$(date +%s)

# 1. Install what is missing (exact pins) from the carried wheels; refuse to go on without a dependency.
missing=$("$PY" - "${WHEEL_PINS[@]}" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
out = []
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        have = version(name)
    except PackageNotFoundError:
        have = None
    if have != want:
        out.append(pin)
print(" ".join(out))
EOF
)
if [ -n "$missing" ]; then
    "$PY" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" $missing
fi
"$PY" - "${IMAGE_HAS[@]}" <<'EOF' | tee "$OUT/environment.txt"
import sys, platform
from importlib.metadata import PackageNotFoundError, version
print("python", platform.python_version(), sys.executable)
absent = []
for name in sys.argv[1:] + ["dask", "distributed", "pymoo"]:
    try:
        print(name, version(name))
    except PackageNotFoundError:
        absent.append(name)
if absent:
    sys.exit(f"missing on this machine and not carried: {', '.join(absent)}")
EOF
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >> "$OUT/environment.txt" || true

# 2. The benchmark. A fresh cache: the local profile is measured (quick), the profiled evaluator's tables and the
#    CPU kernels are built once, by the serial evaluator, before anything is timed; tiny-llama's weights ship in
#    the repository (nothing trains). 16 cores: 4 torch threads for the serial evaluator and every worker, so 4
#    workers fill the cores and every configuration is the same device setting (records can be equal). One GPU:
#    every worker sees GPU 0 and they share it (the runtime evaluator's plans run there).
export AUTOSURGEON_CACHE=${AUTOSURGEON_CACHE:-/tmp/autosurgeon-scaleout-cache}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
gpus=$("$PY" -c "import torch; print(','.join(str(i) for i in range(torch.cuda.device_count())) or '')")
threads=${THREADS:-4}
left=$(( 420 - ($(date +%s) - started) ))
timeout --signal=INT "$left" "$PY" -m experiments.benchmarks.scaleout --model tiny-llama \
    --evaluators analytic,profiled,runtime --workers 1,2,4 --rounds 3 --plans 40 --plans-runtime 6 \
    --threads "$threads" ${gpus:+--gpus "$gpus"} --out "$OUT/scaleout_gpu" 2>"$OUT/scaleout_gpu.log" \
    || echo "scaleout ended early (status $?): the report holds the evaluators finished before; see scaleout_gpu.log"
uptime >> "$OUT/environment.txt"
echo "wall $(( $(date +%s) - started )) s" | tee -a "$OUT/environment.txt"
