"""Weight-memory reduction vs measured quality loss: uniform int8, uniform int4, and the knapsack planner.

For the zoo's trained ``tiny-llama`` and ``digits-cnn`` on this machine's profile ("local"):
  1. plans: float32 (the reference), uniform int8 and uniform int4 (group 32/64/128) on every unit the
     space lets take them, and the sensitivity-driven knapsack plan (``autosurgeon.planners.knapsack``, quality
     objective, int4 groups 32/64/128 and int8/bf16/fp16 offered) at several budgets, given as a
     reduction of the float32 model's whole weight bytes (4x ... 6x, i.e. budget = bytes / ratio);
  2. weight memory of each plan = ``footprint.plan_memory`` over all tiers: EVERY tensor of the model
     (linears, embedding, lm_head, norms; quantized layers with their scales, offsets and float32
     biases), and "linear weights only" = the bytes of the linear layers alone;
  3. measured quality: the plan really applied (``transforms.apply_plan`` -> ``runtime.Session``, the
     runtime's CPU kernels) and scored on held-out data (``autosurgeon.quality.measure``): LM perplexity on
     held-out byte windows (loss = ratio - 1, with a standard error from paired per-chunk NLL
     differences), digits accuracy on the 360-image test split (loss = drop in points / 100).

Run: ``python -m experiments.benchmarks.compression --out experiments/benchmarks/results/compression.md``
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from autosurgeon.cli.plan import sensitivity_tables
from autosurgeon.cost.footprint import memory_breakdown
from autosurgeon.hardware.resolve import resolve_profile
from autosurgeon.planners.knapsack import PLANNER_KNOBS, plan_knapsack
from autosurgeon.knobs import KNOBS
from autosurgeon.plan import Plan
from autosurgeon.quality.measure import QualityEvaluator, lm_heldout_windows, perplexity
from autosurgeon.space.search_space import SearchSpace
from autosurgeon.transforms import apply_plan
from autosurgeon.zoo import load_model

TITLE = "# Compression: weight-memory reduction vs measured quality loss\n\n"


def uniform_plan(space: Any, precision: str, group_size: int = 128) -> tuple[Plan | None, int, int]:
    """Every precision unit that may take ``precision`` (static and conditional masks) takes it.

    Returns (plan or None if no unit can, units changed, units left as they are).
    """
    x = space.default_vector()
    changed = kept = 0
    for i, v in enumerate(space.variables):
        if v.knob != "precision":
            continue
        mask, _ = space.allowed(i, x)
        j = v.choices.index(precision)
        if not mask[j]:
            kept += 1
            continue
        x[i] = j
        changed += 1
        gi = space.index_of(v.name, "group_size")
        if precision == "int4" and gi is not None:
            gv = space.variables[gi]
            gmask, _ = space.allowed(gi, x)
            if group_size not in gv.choices or not gmask[gv.choices.index(group_size)]:
                return None, 0, 0  # this group size is not valid for some unit (larger than its rows)
            x[gi] = gv.choices.index(group_size)
    if not changed:
        return None, 0, kept
    return space.decode(x, metadata={"proposer": f"uniform {precision}"}), changed, kept


def weight_bytes(space: Any, plan: Plan) -> tuple[int, int]:
    """(whole model, linear layers only) bytes under ``plan`` (all tiers, staging excluded)."""
    detail = memory_breakdown(space, plan)
    by_unit = {n: b for tier in detail["by_unit"].values() for n, b in tier.items()}
    whole = sum(by_unit.values())
    linear = sum(b for n, b in by_unit.items() if n in space.leaves and space.leaves[n].kind == "linear")
    return whole, linear


def proxy_loss(tables: Sequence[Any], plan: Plan, space: Any) -> float:
    """Sum of per-unit KL of the plan's precisions (the group-size table for int4)."""
    total = 0.0
    for v in space.variables:
        if v.knob != "precision":
            continue
        d = plan.decisions_for(v.name)
        p = d.get("precision", v.choices[0])
        if p == v.choices[0]:
            continue
        g = int(d.get("group_size", 128)) if p == "int4" else None
        for t in tables:
            if (v.name, p) in t.divergence and (g is None or int(t.settings.get("group_size", 128)) == g):
                total += t.divergence[(v.name, p)]
                break
    return total


def _chunk_nll(model: torch.nn.Module, chunks: list[torch.Tensor], batch: int) -> np.ndarray:
    return np.array([math.log(perplexity(model, c, batch_size=batch).value) for c in chunks])


def measure(loaded: Any, plan: Plan, profile: Any, full_space: Any, scorer: Any) -> dict[str, Any]:
    """Apply ``plan`` for real and score it; the model itself is left untouched (apply_plan copies it)."""
    started = time.perf_counter()
    session = apply_plan(loaded, plan, profile, space=full_space)
    with session:
        result = scorer(session.model)
    result["seconds"] = time.perf_counter() - started
    return result


def reachable(loaded: Any, profile: Any, space: Any, tables: Sequence[Any]) -> tuple[int, dict[str, int]]:
    """(whole-model bytes with every unit at its smallest valid, measured option, all resident; float32 bytes
    per leaf kind). The smallest plan is the memory objective with no effective quality bound."""
    smallest = plan_knapsack(loaded, profile, tables, max_quality_loss=1e9, objective="memory", space=space)
    kinds: dict[str, int] = {}
    for leaf in space.leaves.values():
        kinds[leaf.kind] = kinds.get(leaf.kind, 0) + leaf.own_bytes
    return weight_bytes(space, smallest.plan)[0], kinds


def run_model(name: str, args: argparse.Namespace, profile: Any) -> dict[str, Any]:
    loaded = load_model(name, device="cpu")
    space = SearchSpace.build(loaded, profile, knobs=PLANNER_KNOBS)
    full_space = SearchSpace.build(loaded, profile, knobs=KNOBS)
    groups = [32, 64, 128] if loaded.task == "causal-lm" else [32, 64]
    started = time.perf_counter()
    tables = sensitivity_tables(loaded, groups)
    sensitivity_s = time.perf_counter() - started
    if loaded.task == "causal-lm":
        windows = lm_heldout_windows(max_windows=args.eval_windows or None)
        usable = windows.shape[0] // args.chunk * args.chunk
        chunks = list(windows[:usable].split(args.chunk))
        ref_nll = _chunk_nll(loaded.model, chunks, args.eval_batch)

        def scorer(model: torch.nn.Module) -> dict[str, Any]:
            nll = _chunk_nll(model, chunks, args.eval_batch)
            diff = nll - ref_nll
            return {"quality": math.exp(nll.mean()), "loss": math.expm1(diff.mean()),
                    "se": float(diff.std(ddof=1) / math.sqrt(len(diff)))}

        reference = {"metric": "perplexity", "value": math.exp(ref_nll.mean()), "tokens": usable * 256,
                     "windows": usable}
    else:
        evaluator = QualityEvaluator(loaded)

        def scorer(model: torch.nn.Module) -> dict[str, Any]:
            acc = evaluator.evaluate(model).value
            return {"quality": acc, "loss": evaluator.reference.value - acc, "se": None}

        reference = {"metric": "accuracy", "value": evaluator.reference.value, "examples": len(evaluator.data[1])}

    fp32_plan = space.decode(space.default_vector())
    ref_whole, ref_linear = weight_bytes(space, fp32_plan)
    rows: list[dict[str, Any]] = []

    def add(label: str, family: str, plan: Plan, counts: str, note: str = "") -> None:
        whole, linear = weight_bytes(space, plan)
        m = measure(loaded, plan, profile, full_space, scorer)
        rows.append({"plan": label, "family": family, "counts": counts, "whole": whole, "linear": linear,
                     "whole_x": ref_whole / whole, "linear_x": ref_linear / linear,
                     "proxy": proxy_loss(tables, plan, space), **m, "note": note})
        print(f"  {name} {label}: {ref_whole / whole:.2f}x, loss {m['loss']:+.5f}", file=sys.stderr, flush=True)

    add("float32 (reference)", "reference", fp32_plan, "all float32")
    for precision, group in (("int8", 128), ("int4", 32), ("int4", 64), ("int4", 128)):
        plan, changed, kept = uniform_plan(space, precision, group)
        label = f"uniform {precision}" + (f" g{group}" if precision == "int4" else "")
        if plan is None:
            rows.append({"plan": label, "family": "uniform", "skip": f"group {group} is invalid for some unit"
                         if changed == 0 and kept == 0 else f"no unit can take {precision} here"})
            continue
        add(label, "uniform", plan, f"{changed} units {precision}, {kept} kept float32")
    for ratio in args.ratios if loaded.task == "causal-lm" else args.cnn_ratios:
        budget = int(ref_whole / ratio)
        try:
            result = plan_knapsack(loaded, profile, tables, budget=budget, space=space)
        except Exception as exc:  # noqa: BLE001 - an unreachable budget is a row of the report
            rows.append({"plan": f"knapsack {ratio:g}x", "family": "knapsack", "skip": str(exc).split(";")[0]})
            continue
        counts = ", ".join(f"{k} x{n}" for k, n in result.precision_counts().items())
        note = "; ".join(n for n in result.notes if "keep their own precision" not in n)
        add(f"knapsack {ratio:g}x (budget {budget} B)", "knapsack", result.plan, counts, note)
    # The memory objective: the smallest plan whose PREDICTED loss is within the target (no budget).
    result = plan_knapsack(loaded, profile, tables, max_quality_loss=args.max_loss, objective="memory", space=space)
    counts = ", ".join(f"{k} x{n}" for k, n in result.precision_counts().items())
    add(f"knapsack memory (predicted loss <= {args.max_loss:g})", "knapsack", result.plan, counts)
    floor, kinds = reachable(loaded, profile, space, tables)
    return {"model": name, "task": loaded.task, "reference": reference, "ref_whole": ref_whole, "floor": floor,
            "bytes_by_kind": kinds,
            "ref_linear": ref_linear, "rows": rows, "sensitivity_s": sensitivity_s,
            "tables": [t.key for t in tables], "units": sum(v.knob == "precision" for v in space.variables),
            "linear_units": sum(1 for v in space.variables if v.knob == "precision" and v.kind == "linear")}


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def summary(r: dict[str, Any]) -> str:
    """One line per model: the largest whole-model reduction measured within the 1 % target, per family."""
    ok = [row for row in r["rows"] if "skip" not in row and row["family"] != "reference" and row["loss"] <= 0.01]
    if not ok:
        return f"- `{r['model']}`: no plan stays within 1 % measured loss."
    parts = []
    for family in ("uniform", "knapsack"):
        rows = [row for row in ok if row["family"] == family]
        if rows:
            best = max(rows, key=lambda row: row["whole_x"])
            loss = (f"{best['loss'] * 100:+.3f}% perplexity" if r["task"] == "causal-lm"
                    else f"{best['loss'] * 100:+.2f} accuracy points")
            parts.append(f"{family}: {best['whole_x']:.2f}x whole model / {best['linear_x']:.2f}x linear weights "
                         f"({best['plan']}, {loss})")
    top = max(row["whole_x"] for row in ok)
    verdict = "meets" if top >= 6 else "does NOT meet"
    return f"- `{r['model']}` {verdict} the >= 6x whole-model target within 1 %: " + "; ".join(parts) + "."


def to_markdown(results: list[dict[str, Any]], env: dict[str, Any]) -> str:
    out = [TITLE]
    out.append("Summary (generated from the tables below):\n")
    out += [summary(r) for r in results]
    out.append("")
    out.append(f"Machine: {env['cpu']}, {env['threads']} torch threads (shared 2-core VM, no GPU); Python "
               f"{env['python']}, torch {env['torch']}; profile `local` ({env['profile']}). "
               f"Command: `{env['command']}`; "
               f"wall time {env['seconds']:.0f} s.\n")
    out.append("Method: weight memory = `footprint.plan_memory` summed over tiers (every tensor the runtime holds: "
               "linears with their int8/int4 scales/offsets and float32 biases, the embedding, `lm_head`, norms; "
               "staging excluded), reported for the **whole model** and for the **linear weights only**. The "
               "runtime has quantized kernels for `nn.Linear` only (no quantized embedding or conv), so the "
               "embedding and convs can at best be cast to bf16/fp16 (the space masks int8/int4 there). "
               "Measured quality: the plan applied for real (`transforms.apply_plan` -> `runtime.Session`, this "
               "CPU's default int8/int4 kernels) and scored on held-out data never trained on. Predicted = the "
               "knapsack's proxy (sum of per-unit KL; for the LM `exp(sum) - 1`). Knapsack: quality objective "
               "(least predicted loss within the budget), exact DP; budget = float32 whole-model bytes / ratio; "
               "the last knapsack row is the memory objective (smallest plan with predicted loss <= the bound); "
               "options int8, int4 at groups 32/64/128, bf16, fp16, int8-dynamic where valid and measured.\n")
    for r in results:
        ref = r["reference"]
        out.append(f"## `{r['model']}` ({r['task']})\n")
        if r["task"] == "causal-lm":
            out.append(f"Reference: float32 held-out perplexity {ref['value']:.4f} on {ref['tokens']} byte tokens "
                       f"({ref['windows']} windows of 256, chunks of 16 for the paired standard error). ")
        else:
            out.append(f"Reference: float32 test accuracy {ref['value'] * 100:.2f}% on {ref['examples']} images "
                       f"(one image = {100 / ref['examples']:.2f} points). ")
        out.append(f"Float32 weight memory: whole model {r['ref_whole']} B, linear layers {r['ref_linear']} B "
                   f"({r['linear_units']} linear of {r['units']} precision units; float32 bytes by kind: "
                   f"{', '.join(f'{k} {b}' for k, b in sorted(r['bytes_by_kind'].items(), key=lambda t: -t[1]))}). "
                   f"Smallest whole-model footprint this runtime can reach resident (every unit at its smallest "
                   f"valid, measured option): {r['floor']} B = {r['ref_whole'] / r['floor']:.2f}x. Sensitivity tables "
                   f"{', '.join(r['tables'])} ({r['sensitivity_s']:.1f} s to measure or load from the cache).\n")
        metric = "perplexity" if r["task"] == "causal-lm" else "accuracy"
        out.append(f"| plan | precisions | whole model B | reduction (whole) | linear B | reduction (linear only) | "
                   f"predicted loss | measured {metric} | measured loss | target met (>= 6x whole, <= 1%) |")
        out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for row in r["rows"]:
            if "skip" in row:
                out.append(f"| {row['plan']} | not reachable: {row['skip']} | | | | | | | | |")
                continue
            if r["task"] == "causal-lm":
                q = f"{row['quality']:.4f}"
                loss = f"{row['loss'] * 100:+.3f}% ± {row['se'] * 100:.3f}"
                pred = f"{math.expm1(row['proxy']) * 100:.3f}%"
            else:
                q = f"{row['quality'] * 100:.2f}%"
                loss = f"{row['loss'] * 100:+.2f} points"
                pred = f"KL {row['proxy']:.2e}"
            met = "yes" if row["whole_x"] >= 6 and row["loss"] <= 0.01 else "no"
            counts = row["counts"] + (f" ({row['note']})" if row.get("note") else "")
            out.append(f"| {row['plan']} | {counts} | {row['whole']} | {row['whole_x']:.2f}x | {row['linear']} | "
                       f"{row['linear_x']:.2f}x | {pred} | {q} | {loss} | {met} |")
        out.append("")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny-llama,digits-cnn")
    parser.add_argument("--max-loss", type=float, default=0.01, help="quality bound of the memory-objective row")
    parser.add_argument("--ratios", default="4,5,5.5,6,6.05",
                        help="knapsack budgets for the LM, as reductions vs float32")
    parser.add_argument("--cnn-ratios", default="1.5,1.9,1.98,2.5", help="knapsack budgets for the CNN")
    parser.add_argument("--eval-windows", type=int, default=0, help="held-out windows of 256 bytes; 0 = all")
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--eval-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    parser.add_argument("--from-json", default=None, metavar="FILE",
                        help="rewrite the markdown from a saved run's JSON (recomputes only the reachable floor)")
    args = parser.parse_args(argv)
    args.ratios = [float(r) for r in args.ratios.split(",")]
    args.cnn_ratios = [float(r) for r in args.cnn_ratios.split(",")]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    profile = resolve_profile("local")
    if args.from_json:
        with open(args.from_json) as fh:
            saved = json.load(fh)
        for r in saved["results"]:
            loaded = load_model(r["model"], device="cpu")
            space = SearchSpace.build(loaded, profile, knobs=PLANNER_KNOBS)
            groups = [32, 64, 128] if loaded.task == "causal-lm" else [32, 64]
            r["floor"], r["bytes_by_kind"] = reachable(loaded, profile, space, sensitivity_tables(loaded, groups))
        text = to_markdown(saved["results"], saved["env"])
        if args.out:
            with open(args.out, "w") as fh:
                fh.write(text)
            with open(os.path.splitext(args.out)[0] + ".json", "w") as fh:
                json.dump(saved, fh, indent=1, default=str)
        print(text)
        return 0
    started = time.perf_counter()
    results = [run_model(m.strip(), args, profile) for m in args.models.split(",") if m.strip()]
    env = {"cpu": _cpu_name(), "threads": torch.get_num_threads(), "python": platform.python_version(),
           "torch": torch.__version__, "profile": profile.fingerprint, "seconds": time.perf_counter() - started,
           "command": "python -m experiments.benchmarks.compression "
           + " ".join(argv if argv is not None else sys.argv[1:])}
    text = to_markdown(results, env)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as fh:
            fh.write(text)
        with open(os.path.splitext(args.out)[0] + ".json", "w") as fh:
            json.dump({"env": env, "results": results}, fh, indent=1, default=str)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
