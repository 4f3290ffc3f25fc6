"""How well does the sensitivity proxy rank mixed-precision plans? Spearman rho, proxy vs measured quality loss.

For the zoo's trained ``tiny-llama`` (or ``--model``):
  1. measure the SensitivityTable on calibration windows from the TRAINING split (per unit x precision KL
     with only that unit changed, through runtime.kernels.QuantizedLinear; Hutchinson Hessian traces);
  2. draw random plans in two families, seeded:
       * ``mixed``: per plan a Dirichlet(1) mix over {float32, bfloat16, float16, int8, int4}, each unit
         drawn from it (plans span from nearly float to nearly all int4: the easy ranking);
       * ``budget``: every unit int8 except exactly ``--int4-units`` random units at int4 (plans of about
         equal weight bytes: the ranking a planner under a memory budget actually needs);
  3. measure each plan's quality loss for real: held-out perplexity ratio - 1 with those units really
     quantized (``precision_swap.swapped``: QuantizedLinear for int8/int4, casts for bf16/fp16);
  4. Spearman rho of (divergence proxy, measured) and (Hessian proxy Omega, measured), per family and pooled.

Run: ``python -m experiments.benchmarks.sensitivity_rank --out experiments/benchmarks/results/sensitivity_rank.md``
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from autosurgeon.calibration import lm_calibration
from autosurgeon.precision_swap import swapped
from autosurgeon.quality import QualityEvaluator
from autosurgeon.sensitivity import measure_sensitivity, spearman
from autosurgeon.zoo import load_model

MIXED_PRECISIONS = ("float32", "bfloat16", "float16", "int8", "int4")


def draw_plans(units: Sequence[str], *, n_mixed: int, n_budget: int, int4_units: int, seed: int
               ) -> list[tuple[str, dict[str, str]]]:
    """``[(family, {fqn: precision})]``: ``n_mixed`` Dirichlet-mixed plans, then ``n_budget`` int8+int4 plans."""
    rng = np.random.default_rng(seed)
    plans: list[tuple[str, dict[str, str]]] = []
    for _ in range(n_mixed):
        mix = rng.dirichlet(np.ones(len(MIXED_PRECISIONS)))
        picks = rng.choice(len(MIXED_PRECISIONS), size=len(units), p=mix)
        plans.append(("mixed", {u: MIXED_PRECISIONS[int(i)] for u, i in zip(units, picks)}))
    for _ in range(n_budget):
        chosen = set(rng.choice(len(units), size=int4_units, replace=False).tolist())
        plans.append(("budget", {u: "int4" if i in chosen else "int8" for i, u in enumerate(units)}))
    return plans


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    loaded = load_model(args.model)
    model = loaded.model
    calibration = lm_calibration(seq_len=args.calib_seq_len, n_windows=args.calib_windows, seed=args.seed)
    t_sens = time.perf_counter()
    table = measure_sensitivity(loaded, calibration=calibration, group_size=args.group_size,
                                hessian_samples=args.hessian_samples, seed=args.seed, use_cache=not args.no_cache)
    sens_wall = time.perf_counter() - t_sens
    print(f"sensitivity: {len(table.units)} units x {len(table.precisions)} precisions, wall {sens_wall:.1f} s "
          f"(measured phases: {table.seconds})", flush=True)

    evaluator = QualityEvaluator(loaded, max_samples=args.eval_windows, batch_size=args.eval_batch)
    t_ref = time.perf_counter()
    reference = evaluator.reference
    ref_s = time.perf_counter() - t_ref
    print(f"reference perplexity {reference.value:.4f} on {reference.n_samples} held-out tokens ({ref_s:.1f} s)",
          flush=True)

    plans = draw_plans(table.units, n_mixed=args.mixed_plans, n_budget=args.budget_plans,
                       int4_units=args.int4_units, seed=args.seed)
    uniform = [("uniform", {u: p for u in table.units}) for p in ("bfloat16", "int8", "int4")]
    rows = []
    t_plans = time.perf_counter()
    for i, (family, plan) in enumerate([*plans, *uniform]):
        with swapped(model, plan, group_size=args.group_size):
            measured = evaluator.loss(model)
        counts = {p: sum(1 for v in plan.values() if v == p) for p in MIXED_PRECISIONS}
        rows.append({"id": i, "family": family, "counts": counts, "measured": measured,
                     "divergence": table.predict_loss(plan, proxy="divergence"),
                     "hessian": table.predict_loss(plan, proxy="hessian") if table.hessian else float("nan")})
        print(f"plan {i:3d} {family:7s} {counts} measured {measured:+.5f} proxy {rows[-1]['divergence']:.5f}",
              flush=True)
    plans_s = time.perf_counter() - t_plans
    stats = {}
    for family in ("mixed", "budget", "pooled"):
        sel = [r for r in rows if (r["family"] == family or (family == "pooled" and r["family"] != "uniform"))]
        if len(sel) >= 2:
            measured = [r["measured"] for r in sel]
            stats[family] = {"n": len(sel), **{proxy: spearman([r[proxy] for r in sel], measured)
                                                for proxy in ("divergence", "hessian")}}
            stats[family].update(_scipy_check(sel))
    return {"args": vars(args), "table": table, "reference": reference, "rows": rows, "stats": stats,
            "sens_wall": sens_wall, "ref_s": ref_s, "plans_s": plans_s, "total_s": time.perf_counter() - t0,
            "load_start": load_start, "load_end": os.getloadavg(), "model_metrics": loaded.metrics}


def _scipy_check(sel: list[dict[str, Any]]) -> dict[str, float]:
    try:
        from scipy.stats import spearmanr
    except ImportError:
        return {}
    measured = [r["measured"] for r in sel]
    return {"scipy_divergence": float(spearmanr([r["divergence"] for r in sel], measured).statistic)}


def to_markdown(result: dict[str, Any]) -> str:
    args, table, stats = result["args"], result["table"], result["stats"]
    cpu = platform.processor() or platform.machine()
    lines = [
        "# Sensitivity proxy vs measured quality loss (Spearman)",
        "",
        f"Model `{args['model']}` (held-out perplexity of the unmodified model "
        f"{result['reference'].value:.4f} on {result['reference'].n_samples} held-out byte tokens, "
        f"{args['eval_windows']} windows of 256). CPU: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{args['threads']} threads; load average {result['load_start'][0]:.1f} at start, "
        f"{result['load_end'][0]:.1f} at end (shared machine: timings are noisy).",
        f"Generated by `python -m experiments.benchmarks.sensitivity_rank {' '.join(sys.argv[1:])}`.",
        "",
        "Method: sensitivity measured on calibration windows of the TRAINING split "
        f"({args['calib_windows']} x {args['calib_seq_len']} bytes, seed {args['seed']}); measured loss = "
        "held-out perplexity ratio - 1 with the plan's units really quantized (runtime.kernels.QuantizedLinear, "
        f"default CPU kernel, int4 group {args['group_size']}; bf16/fp16 by casts). Divergence proxy = sum of "
        "per-unit next-token KL; Hessian proxy = sum of HAWQ Omega = Tr(H)/n * ||Q(W)-W||^2 "
        f"(Hutchinson, {args['hessian_samples']} Rademacher vectors, seed {args['seed']}). Spearman computed with "
        "numpy (average ranks), checked against scipy.stats.spearmanr where installed.",
        "",
        "| plans | n | rho (divergence proxy) | rho (Hessian proxy) | scipy rho (divergence) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for family, s in stats.items():
        scipy_rho = f"{s['scipy_divergence']:.3f}" if "scipy_divergence" in s else "n/a"
        lines.append(f"| {family} | {s['n']} | {s['divergence']:.3f} | {s['hessian']:.3f} | {scipy_rho} |")
    seconds = table.seconds
    lines += [
        "",
        f"Time: sensitivity table {result['sens_wall']:.1f} s wall for {len(table.units)} units x "
        f"{len(table.precisions)} precisions ({', '.join(table.precisions)}): reference outputs "
        f"{seconds.get('reference', float('nan')):.1f} s, divergences {seconds.get('divergence', float('nan')):.1f} s, "
        f"Hessian {seconds.get('hessian', float('nan')):.1f} s (phase times are from the run that filled the cache "
        "if the table was cached). "
        f"{len(result['rows'])} plan evaluations {result['plans_s']:.1f} s; whole run {result['total_s']:.1f} s.",
        "",
        "Families: `mixed` = per-plan Dirichlet(1) mix over float32/bf16/fp16/int8/int4; `budget` = all int8 "
        f"except {args['int4_units']} random int4 units (about equal weight bytes); `uniform` rows are shown for "
        "scale and are not in any rho.",
        "",
        "| id | family | fp32/bf16/fp16/int8/int4 units | measured loss | divergence proxy | Hessian proxy |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        c = r["counts"]
        mix = "/".join(str(c[p]) for p in MIXED_PRECISIONS)
        lines.append(f"| {r['id']} | {r['family']} | {mix} | {r['measured']:+.5f} | {r['divergence']:.5f} | "
                     f"{r['hessian']:.3e} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--mixed-plans", type=int, default=30)
    parser.add_argument("--budget-plans", type=int, default=30)
    parser.add_argument("--int4-units", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calib-windows", type=int, default=8)
    parser.add_argument("--calib-seq-len", type=int, default=128)
    parser.add_argument("--eval-windows", type=int, default=32)
    parser.add_argument("--eval-batch", type=int, default=8)
    parser.add_argument("--hessian-samples", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: OpenMP spin-waits make 2 threads far slower on a loaded 2-core box)")
    parser.add_argument("--no-cache", action="store_true", help="measure the sensitivity table afresh")
    parser.add_argument("--out", default=None, help="markdown file to write")
    args = parser.parse_args(argv)
    result = run(args)
    text = to_markdown(result)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
