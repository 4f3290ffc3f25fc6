"""What the measured GPU profile's dispatch record says, against the runtime's own eager step on a few models.

Prints (and writes as JSON) the local profile's ``dispatch`` record per GPU (``hardware/dispatch.py``: per-op launch,
per-step fixed cost, each linear format's per-call floor), then for each model: the step with its linears nulled on
the runtime, all resident (``cost.step_rest.rest_on_runtime``, wall clock: what no plan changes), against what the
analytic model charges for that part from the profile alone (``launched ops x op_s + step_s``). The plans' errors
come from ``experiments.benchmarks.evaluator_error`` in the same call (evaluator_error_gpu.sh).

    PYTHONPATH=. python -m experiments.benchmarks.evaluator_error_dispatch --models unseen-phi,unseen-gemma \
        --out $OUT/dispatch.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import torch

from autosurgeon.cost.profiled import TimingSettings
from autosurgeon.cost.step_rest import rest_on_runtime
from autosurgeon.evaluate import AnalyticEvaluator, EvaluationCache
from autosurgeon.hardware.resolve import resolve_profile
from autosurgeon.space.search_space import SearchSpace
from autosurgeon.zoo import load_model
from experiments.benchmarks.unseen import build_unseen


def model_rest(name: str, profile: Any, device: str) -> dict[str, Any]:
    loaded = load_model(str(build_unseen(name)), device=device)
    space = SearchSpace.build(loaded, profile, knobs=("precision",))
    analytic = AnalyticEvaluator(loaded, profile, space=space, cache=EvaluationCache())
    m = analytic.models[analytic.workload.phase]
    linears = {leaf.name for leaf in space.leaves.values() if leaf.kind == "linear" and leaf.out_features}
    clock = "wall" if device.startswith("cuda") else "cpu"
    rest = rest_on_runtime(loaded, space, profile, analytic.workload, linears,
                           timing=TimingSettings(clock=clock, step_warmup=3, step_repeats=20))
    priced = m.launched_ops * m.launch_overhead_s + m.step_fixed_s
    return {"model": name, "n_ops": m.n_ops, "launched_ops": m.launched_ops, "op_s": m.launch_overhead_s,
            "step_s": m.step_fixed_s, "priced_rest_s": priced, "rest_on_runtime_s": rest["median_s"],
            "rest_dispersion": rest["dispersion"], "rest_ops": rest["ops"],
            "runtime_s_per_rest_op": rest["median_s"] / max(1, rest["ops"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="unseen-phi,unseen-gemma")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(4 if args.device.startswith("cuda") else 1)
    started = time.perf_counter()
    profile = resolve_profile("local")
    out: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
                           "load_before": os.getloadavg(), "dispatch": profile.dispatch, "models": []}
    for unit, rec in profile.dispatch.items():
        mix = f", op mix {rec['op_mix_s'] * 1e6:.2f} us" if "op_mix_s" in rec else ""
        print(f"{unit}: op {rec['op_s'] * 1e6:.2f} us (IQR/median {rec['op_dispersion']:.0%}){mix}, step "
              f"{rec['step_s'] * 1e6:.1f} us; linear floors at {rec['shape']}:", file=sys.stderr)
        for key, e in sorted(rec["linear"].items()):
            print(f"  {key:32s} {e['s'] * 1e6:8.1f} us  {e['ops']:3d} ops{'  NOISY' if e['noisy'] else ''}",
                  file=sys.stderr)
        for s in rec.get("skipped", []):
            print(f"  skipped {s}", file=sys.stderr)
    for name in [m for m in args.models.split(",") if m]:
        try:
            r = model_rest(name, profile, args.device)
        except Exception as exc:  # noqa: BLE001 — a diagnosis: report and go on to the next model
            r = {"model": name, "error": f"{type(exc).__name__}: {exc}"}
        out["models"].append(r)
        print(json.dumps(r), file=sys.stderr)
    out["load_after"] = os.getloadavg()
    out["seconds"] = time.perf_counter() - started
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
