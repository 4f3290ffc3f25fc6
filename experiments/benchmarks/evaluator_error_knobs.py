"""Which knob of a random plan makes the analytic evaluator's error: a diagnosis on zoo models (never the unseen set).

On the unseen set (session 7, quiet CPU) the analytic evaluator priced the unmodified model and the uniform plans
within a few per cent on most models but random plans 20-37 % low. A random plan differs from a uniform one in
four knobs at once (precision per unit, placement, int4 group size, kernel). Here every random plan is also run
with one knob put back to the space's default (then repaired), so each knob's share of the error shows: if the
error vanishes when a knob is reset, that knob's pricing is the cause.

Reference: the runtime (``RuntimeEvaluator.open_step``), every variant kept open and timed in interleaved rounds
(``runtime_reference.measure``), CPU clock, 1 thread. The analytic evaluator is the default (GEMV table + measured
rest + measured streaming costs), priced after the reference.

    PYTHONPATH=. python -m experiments.benchmarks.evaluator_error_knobs --model tiny-llama --plans 6 \
        --out experiments/benchmarks/results/evaluator_error_knobs_s8.md
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

import numpy as np
import torch

from autosurgeon.evaluate import AnalyticEvaluator, EvaluationCache, RuntimeEvaluator
from autosurgeon.cost.profiled import TimingSettings
from autosurgeon.hardware.resolve import resolve_profile
from autosurgeon.space.search_space import SearchSpace
from autosurgeon.zoo import load_model
from experiments.benchmarks import runtime_reference
from experiments.benchmarks.evaluator_error import uniform_vector

KNOBS = ("precision", "placement", "group_size", "kernel")


def reset_knobs(space: Any, x: np.ndarray, knobs: tuple[str, ...]) -> np.ndarray:
    """``x`` with every variable of ``knobs`` at the space's default value, repaired."""
    default = space.default_vector()
    y = np.array(x, copy=True)
    for i, v in enumerate(space.variables):
        if v.knob in knobs:
            y[i] = default[i]
    return space.repair(y)


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    load_before = os.getloadavg()
    loaded = load_model(args.model)
    profile = resolve_profile("local")
    space = SearchSpace.build(loaded, profile, knobs=KNOBS)
    runtime = RuntimeEvaluator(loaded, profile, space=space, quality=False, energy=False,
                               timing=TimingSettings(clock="cpu", step_warmup=1, step_repeats=3),
                               cache=EvaluationCache())
    analytic = AnalyticEvaluator(loaded, profile, space=space, cache=EvaluationCache())
    rng = np.random.default_rng(args.seed)
    vectors, labels = [space.default_vector()], [("unmodified", -1)]
    for fmt in ("bfloat16", "int8", "int4"):
        x = uniform_vector(space, fmt)
        if x is not None:
            vectors.append(x)
            labels.append((f"uniform {fmt}", -1))
    if args.uniform_kernels:  # every uniform int8 / int4 plan with each kernel the space allows, resident
        kernel_var = next(v for v in space.variables if v.knob == "kernel")
        for fmt in ("int8", "int4"):
            base = uniform_vector(space, fmt)
            for kernel in kernel_var.choices:
                x, took = base.copy(), 0
                for i, v in enumerate(space.variables):
                    if v.knob == "kernel" and kernel in v.choices and space.allowed(i, x)[0][v.choices.index(kernel)]:
                        x[i] = v.choices.index(kernel)
                        took += 1
                if took:
                    vectors.append(space.repair(x))
                    labels.append((f"uniform {fmt}, kernel {kernel} on {took} layers", -1))
    for p in range(args.plans):
        x = space.random_vector(rng)
        vectors.append(x)
        labels.append(("random", p))
        for knob in KNOBS:
            vectors.append(reset_knobs(space, x, (knob,)))
            labels.append((f"random, {knob} reset", p))
        vectors.append(reset_knobs(space, x, ("placement", "group_size", "kernel")))
        labels.append(("random, precision only", p))
    ref = runtime_reference.measure(runtime, vectors, rounds=args.rounds, steps=10, warmup=2, seed=args.seed + 11)
    rows = []
    for i, (x, (kind, p)) in enumerate(zip(vectors, labels)):
        m = analytic.evaluate(x)
        rows.append({"kind": kind, "plan": p, "runtime_s": ref.medians[i], "spread": ref.dispersion(i),
                     "analytic_s": m.latency_s, "error": m.latency_s / ref.medians[i] - 1.0,
                     "streamed_bytes": m.extra.get("streamed_bytes", 0), "overhead_s": m.extra.get("overhead_s")})
    return {"model": args.model, "plans": args.plans, "rounds": args.rounds, "seed": args.seed, "rows": rows,
            "load_before": load_before, "load_after": os.getloadavg(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def markdown(res: dict[str, Any]) -> str:
    kinds: dict[str, list[float]] = {}
    for r in res["rows"]:
        kinds.setdefault(r["kind"], []).append(r["error"])
    lines = [f"# Analytic error by knob on {res['model']} (zoo), this CPU, 1 thread, {res['date']}", "",
             f"Load average before {res['load_before'][0]:.1f} / after {res['load_after'][0]:.1f} (shared machine: "
             "figures under load). Runtime: interleaved rounds "
             f"({res['rounds']}), CPU clock; error = analytic / runtime - 1 (negative: priced low). "
             f"torch {res['torch']}.", "",
             "| plans | n | median error | median abs error |", "| --- | --- | --- | --- |"]
    for kind, errs in kinds.items():
        lines.append(f"| {kind} | {len(errs)} | {statistics.median(errs):+.1%} | "
                     f"{statistics.median(abs(e) for e in errs):.1%} |")
    lines += ["", "| plan | variant | runtime ms | spread | analytic ms | error |", "| --- | --- | --- | --- | --- | --- |"]
    for r in res["rows"]:
        lines.append(f"| {r['plan']} | {r['kind']} | {r['runtime_s'] * 1e3:.3f} | {r['spread']:.0%} | "
                     f"{r['analytic_s'] * 1e3:.3f} | {r['error']:+.1%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-llama")
    p.add_argument("--plans", type=int, default=6)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--uniform-kernels", action="store_true",
                   help="add every uniform int8 / int4 plan with each kernel the space allows")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    res = run(args)
    text = markdown(res)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
        with open(args.out.rsplit(".", 1)[0] + ".json", "w") as f:
            json.dump(res, f, indent=1)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
