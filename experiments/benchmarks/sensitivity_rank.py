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
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from autosurgeon.quality.calibration import lm_calibration, run_model
from autosurgeon.quality.precision_swap import swapped
from autosurgeon.quality.measure import lm_heldout_windows, perplexity
from autosurgeon.quality.sensitivity import measure_sensitivity, spearman
from autosurgeon.zoo import load_model

TITLE = "# Sensitivity proxy vs measured quality loss (Spearman rank correlation over random plans)\n\n"
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


def _chunk_nll(model: torch.nn.Module, chunks: list[torch.Tensor], batch: int) -> np.ndarray:
    """Mean next-token NLL of each equal-sized chunk of held-out windows (log of quality.perplexity)."""
    return np.array([math.log(perplexity(model, c, batch_size=batch).value) for c in chunks])


@torch.no_grad()
def _heldout_kl(model: torch.nn.Module, ref_logp: list[torch.Tensor], inputs: list[torch.Tensor]) -> float:
    """Mean next-token KL(reference || model) on held-out inputs: the plan's real output change (diagnostic)."""
    total, count = 0.0, 0
    for ref, x in zip(ref_logp, inputs):
        logp = torch.log_softmax(run_model(model, "tokens", x).float(), dim=-1)
        total += float((ref.exp() * (ref - logp)).sum())
        count += ref[..., 0].numel()
    return total / count


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    loaded = load_model(args.model, device=args.device)
    model = loaded.model
    device = torch.device(args.device)
    calibration = lm_calibration(seq_len=args.calib_seq_len, n_windows=args.calib_windows, seed=args.seed)
    t_sens = time.perf_counter()
    table = measure_sensitivity(loaded, calibration=calibration, group_size=args.group_size,
                                hessian_samples=args.hessian_samples, seed=args.seed, use_cache=not args.no_cache)
    sens_wall = time.perf_counter() - t_sens
    print(f"sensitivity: {len(table.units)} units x {len(table.precisions)} precisions, wall {sens_wall:.1f} s "
          f"(measured phases: {table.seconds})", flush=True)

    # Held-out windows in equal chunks: the whole-set perplexity is exp(mean chunk NLL), and the spread of the
    # paired per-chunk differences gives each measured loss a standard error.
    windows = lm_heldout_windows(seq_len=256, max_windows=args.eval_windows or None)
    n_chunks = max(2, windows.shape[0] // args.chunk)
    chunks = [w.to(device) for w in windows[: n_chunks * args.chunk].split(args.chunk)][:n_chunks]
    kl_inputs = [c[:, :-1] for c in chunks[: args.kl_chunks]]
    t_ref = time.perf_counter()
    ref_nll = _chunk_nll(model, chunks, args.eval_batch)
    with torch.no_grad():
        ref_logp = [torch.log_softmax(run_model(model, "tokens", x).float(), dim=-1) for x in kl_inputs]
    ref_s = time.perf_counter() - t_ref
    ref_ppl = math.exp(ref_nll.mean())
    tokens = sum(int(c[:, 1:].numel()) for c in chunks)
    print(f"reference perplexity {ref_ppl:.4f} on {tokens} held-out tokens ({ref_s:.1f} s)", flush=True)

    plans = draw_plans(table.units, n_mixed=args.mixed_plans, n_budget=args.budget_plans,
                       int4_units=args.int4_units, seed=args.seed)
    uniform = [("uniform", {u: p for u in table.units}) for p in ("bfloat16", "int8", "int4")]
    rows = []
    t_plans = time.perf_counter()
    for i, (family, plan) in enumerate([*plans, *uniform]):
        with swapped(model, plan, group_size=args.group_size):
            nll = _chunk_nll(model, chunks, args.eval_batch)
            kl = _heldout_kl(model, ref_logp, kl_inputs)
        diff = nll - ref_nll
        measured = math.exp(diff.mean()) - 1.0  # = perplexity ratio - 1 over the whole held-out set
        se = math.exp(diff.mean()) * diff.std(ddof=1) / math.sqrt(len(diff))  # delta method
        counts = {p: sum(1 for v in plan.values() if v == p) for p in MIXED_PRECISIONS}
        rows.append({"id": i, "family": family, "counts": counts, "measured": measured, "se": se, "heldout_kl": kl,
                     "divergence": table.predict_loss(plan, proxy="divergence"),
                     "hessian": table.predict_loss(plan, proxy="hessian") if table.hessian else float("nan"),
                     "loss_delta": table.predict_loss(plan, proxy="loss_delta")})
        print(f"plan {i:3d} {family:7s} {counts} measured {measured:+.5f} +- {se:.5f} KL {kl:.5f} "
              f"proxy {rows[-1]['divergence']:.5f}", flush=True)
    plans_s = time.perf_counter() - t_plans
    stats = {}
    for family in ("mixed", "budget", "pooled"):
        sel = [r for r in rows if (r["family"] == family or (family == "pooled" and r["family"] != "uniform"))]
        if len(sel) >= 2:
            measured = [r["measured"] for r in sel]
            stats[family] = {"n": len(sel), **{proxy: spearman([r[proxy] for r in sel], measured)
                                                for proxy in ("divergence", "hessian", "loss_delta")},
                             "kl_vs_measured": spearman([r["heldout_kl"] for r in sel], measured),
                             "divergence_vs_kl": spearman([r["divergence"] for r in sel],
                                                          [r["heldout_kl"] for r in sel]),
                             "hessian_vs_kl": spearman([r["hessian"] for r in sel], [r["heldout_kl"] for r in sel]),
                             "resolved": sum(1 for r in sel if r["measured"] > 2 * r["se"]),
                             "median_se": float(np.median([r["se"] for r in sel]))}
            stats[family].update(_scipy_check(sel))
    return {"args": vars(args), "table": table, "ref_ppl": ref_ppl, "tokens": tokens, "n_chunks": n_chunks,
            "rows": rows, "stats": stats, "sens_wall": sens_wall, "ref_s": ref_s, "plans_s": plans_s,
            "total_s": time.perf_counter() - t0, "load_start": load_start, "load_end": os.getloadavg(),
            "model_metrics": loaded.metrics, "device_name": _device_name(device)}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA kernels: runtime defaults for cuda)"
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def _scipy_check(sel: list[dict[str, Any]]) -> dict[str, float]:
    try:
        from scipy.stats import spearmanr
    except ImportError:
        return {}
    measured = [r["measured"] for r in sel]
    return {"scipy_divergence": float(spearmanr([r["divergence"] for r in sel], measured).statistic)}


def to_markdown(result: dict[str, Any]) -> str:
    args, table, stats = result["args"], result["table"], result["stats"]
    lines = [
        f"## `{args['model']}` on {result['device_name']}",
        "",
        f"Unmodified model: held-out perplexity {result['ref_ppl']:.4f} on {result['tokens']} held-out byte tokens "
        f"({result['n_chunks']} chunks of {args['chunk']} windows of 256; the zoo's recorded figure is "
        f"{result['model_metrics'].get('perplexity', float('nan')):.4f} on its whole held-out set). "
        f"Python {platform.python_version()}, torch {torch.__version__}, {args['threads']} CPU threads; load average "
        f"{result['load_start'][0]:.1f} at start, {result['load_end'][0]:.1f} at end.",
        f"Command: `python -m experiments.benchmarks.sensitivity_rank {' '.join(sys.argv[1:])}`.",
        "",
        "Method: sensitivity on calibration windows of the TRAINING split "
        f"({args['calib_windows']} x {args['calib_seq_len']} bytes, seed {args['seed']}); measured loss = "
        "held-out perplexity ratio - 1 with the plan's units really quantized (runtime.kernels.QuantizedLinear with "
        f"the device's default kernel, int4 group {args['group_size']}; bf16/fp16 by casts), +- its standard error "
        "from the paired per-chunk NLL differences. Divergence proxy = sum of per-unit next-token KL; Hessian proxy = "
        "sum of HAWQ Omega = Tr(H)/n * ||Q(W)-W||^2 (Hutchinson, "
        f"{args['hessian_samples']} Rademacher vectors, seed {args['seed']}); loss-delta proxy = sum of per-unit "
        "SIGNED changes of the calibration NLL (first-order aware; training split). Diagnostic: the plan's real next-token "
        f"KL vs the unmodified model on {args['kl_chunks']} held-out chunks (what the additive proxy predicts, "
        "without perplexity's sign). Spearman with numpy (average ranks), checked against scipy.",
        "",
        "| plans | n | rho: divergence proxy vs measured | rho: Hessian proxy vs measured | rho: loss-delta proxy vs "
        "measured | rho: held-out KL vs measured | rho: divergence proxy vs held-out KL | rho: Hessian proxy vs "
        "held-out KL | measured > 2 SE | median SE | scipy rho (divergence) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for family, s in stats.items():
        scipy_rho = f"{s['scipy_divergence']:.3f}" if "scipy_divergence" in s else "n/a"
        lines.append(f"| {family} | {s['n']} | {s['divergence']:.3f} | {s['hessian']:.3f} | {s['loss_delta']:.3f} | "
                     f"{s['kl_vs_measured']:.3f} "
                     f"| {s['divergence_vs_kl']:.3f} | {s['hessian_vs_kl']:.3f} | {s['resolved']}/{s['n']} | "
                     f"{s['median_se']:.5f} | {scipy_rho} |")
    seconds = table.seconds
    lines += [
        "",
        f"Time: sensitivity table {result['sens_wall']:.1f} s wall for {len(table.units)} units x "
        f"{len(table.precisions)} precisions ({', '.join(table.precisions)}): reference outputs "
        f"{seconds.get('reference', float('nan')):.2f} s, divergences {seconds.get('divergence', float('nan')):.1f} s, "
        f"Hessian {seconds.get('hessian', float('nan')):.1f} s (phases as measured when the table was made; a wall "
        f"time near 0 means it came from the cache). {len(result['rows'])} plan evaluations "
        f"{result['plans_s']:.1f} s; whole run {result['total_s']:.1f} s.",
        "",
        "Families: `mixed` = per-plan Dirichlet(1) mix over float32/bf16/fp16/int8/int4; `budget` = all int8 "
        f"except {args['int4_units']} random int4 units (about equal weight bytes); `uniform` rows are shown for "
        "scale and are in no rho.",
        "",
        "<details><summary>Per-plan values</summary>",
        "",
        "| id | family | fp32/bf16/fp16/int8/int4 units | measured loss | SE | held-out KL | divergence proxy | "
        "Hessian proxy | loss-delta proxy |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        mix = "/".join(str(r["counts"][p]) for p in MIXED_PRECISIONS)
        lines.append(f"| {r['id']} | {r['family']} | {mix} | {r['measured']:+.5f} | {r['se']:.5f} | "
                     f"{r['heldout_kl']:.2e} | {r['divergence']:.2e} | {r['hessian']:.2e} | {r['loss_delta']:+.2e} |")
    lines += ["", "</details>"]
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
    parser.add_argument("--eval-windows", type=int, default=128, help="held-out windows of 256; 0 = all of them")
    parser.add_argument("--chunk", type=int, default=16, help="windows per chunk (standard errors come from chunks)")
    parser.add_argument("--kl-chunks", type=int, default=2, help="held-out chunks for the KL diagnostic")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--eval-batch", type=int, default=8)
    parser.add_argument("--hessian-samples", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: OpenMP spin-waits make 2 threads far slower on a loaded 2-core box)")
    parser.add_argument("--no-cache", action="store_true", help="measure the sensitivity table afresh")
    parser.add_argument("--out", default=None, help="markdown file to write")
    parser.add_argument("--append", action="store_true", help="append this run's section to --out")
    args = parser.parse_args(argv)
    result = run(args)
    text = to_markdown(result)
    if args.out:
        with open(args.out, "a" if args.append else "w") as handle:
            handle.write(("\n" if args.append else TITLE) + text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
