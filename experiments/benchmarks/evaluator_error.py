"""How far are the cheap evaluators from the runtime? Error of analytic and profiled vs RuntimeEvaluator.

For a zoo model (default the trained ``tiny-llama``) on THIS machine's measured profile:
  1. draw ``--plans`` random valid plans with ``SearchSpace.random_vector`` (seeded), plus the unmodified one;
  2. evaluate each with the RuntimeEvaluator (apply_plan -> runtime.Session, median of repeated steps,
     TensorStore peak bytes, held-out quality), the ProfiledEvaluator (per-unit table measured fresh in
     this run, composed), the AnalyticEvaluator uncalibrated (its defaults: on this measured CPU, GEMV
     times at the model's shapes as the runtime runs them plus the step's rest measured with the linears
     nulled, ``cost/step_rest.py``; no runtime run), and the AnalyticEvaluator calibrated with the profiled
     table's measured per-op overhead and per-fetch cost (only where the uncalibrated one measured no rest: there
     the two would be the same model, re-measured);
     The runtime's latency reference is then taken again with every plan kept open, in ``--rounds`` interleaved
     rounds (``runtime_reference.py``: median of round medians; a pair of plans is ordered only when one is faster
     in every round, else a tie); ``--rounds 0`` keeps the single block of steps per plan;
  3. report per evaluator the median absolute percentage error (MAPE) of latency and memory (GPU + CPU
     tiers, the "memory" objective; and disk) against the runtime, Spearman rho of latencies, and
     evaluations per second (cache misses only, from a fresh cache).

Timing clock: ``--clock cpu`` (default) times process CPU time, because this CI-class machine is shared
(load average reported); ``--clock wall`` times wall time. Threads: ``--threads`` (default 1: the zoo
pins tiny models to one thread on shared 2-core machines, where two threads stall each other).

Unseen set (``--unseen``, issue 13): every model of ``experiments.benchmarks.unseen`` in turn, with ``--plans``
random plans each plus a uniform plan of every precision the space allows (ranked against the runtime's
order), and for uniform int4 / int8 / bfloat16 the quality measured on the runtime (model-agnostic quality:
fidelity in the model's own vocabulary, or embedding fidelity) next to the sensitivity proxy's estimate, with
the measured figure's 95 % interval. ``--device cuda`` runs the same on a GPU
(``experiments/benchmarks/evaluator_error_gpu.sh``: one lent H200, results into ``$OUT``).

Run: ``python -m experiments.benchmarks.evaluator_error --out experiments/benchmarks/results/evaluator_error.md``
or ``python -m experiments.benchmarks.evaluator_error --unseen --out experiments/benchmarks/results/evaluator_error_unseen.md``
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import numpy as np
import torch

from autosurgeon.cost.profiled import TimingSettings
from autosurgeon.evaluate import AnalyticEvaluator, EvaluationCache, ProfiledEvaluator, RuntimeEvaluator
from autosurgeon.hardware.resolve import resolve_profile
from autosurgeon.quality.sensitivity import measure_sensitivity, spearman
from autosurgeon.space.search_space import SearchSpace
from autosurgeon.zoo import load_model
from experiments.benchmarks import runtime_reference


def ape(est: float, ref: float) -> float:
    return abs(est - ref) / abs(ref) if ref else (0.0 if est == ref else float("inf"))


def uniform_vector(space: Any, precision: str) -> np.ndarray | None:
    """Every precision variable at ``precision`` where allowed (else left as is), repaired; None if none took it."""
    x = space.default_vector()
    took = 0
    for i, v in enumerate(space.variables):
        if v.knob == "precision" and precision in v.choices:
            j = v.choices.index(precision)
            if space.allowed(i, x)[0][j]:
                x[i] = j
                took += 1
    return space.repair(x) if took else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    started = time.perf_counter()
    loaded = load_model(args.model, device=args.device)
    profile = resolve_profile("local")
    knobs = tuple(args.knobs.split(","))
    space = SearchSpace.build(loaded, profile, knobs=knobs)
    sensitivity = (measure_sensitivity(loaded, hessian_samples=0, threads=args.threads)
                   if loaded.task in ("causal-lm", "feature-extraction") or args.sensitivity
                   or (args.unseen and loaded.task == "image-classification") else None)  # unseen-vit: a proxy too
    timing = TimingSettings(clock=args.clock, repeats=args.repeats, step_repeats=args.repeats,
                            rounds=args.table_rounds)

    # With interleaved rounds the runtime's reference latency comes from them (runtime_reference.py); its own
    # evaluate then only needs a short timing (memory and quality are what it still gives; energy is not compared
    # here, and a counter's energy needs >= 1 s of steps per plan on a GPU: energy=False).
    rt_timing = (TimingSettings(clock=args.clock, repeats=args.repeats, step_warmup=1, step_repeats=3)
                 if args.rounds else timing)
    # A classifier's measured quality is a share of images whose top-1 changes: 4 images give a 95 % interval
    # 30-95 % wide, so classifiers are scored on --classifier-quality-samples images (default 64).
    quality_samples = (max(args.quality_samples, args.classifier_quality_samples)
                       if loaded.task == "image-classification" and args.quality_samples else args.quality_samples)
    runtime = RuntimeEvaluator(loaded, profile, space=space, timing=rt_timing, energy=False,
                               quality_samples=quality_samples or None, cache=EvaluationCache())
    t0 = time.perf_counter()
    profiled = ProfiledEvaluator(loaded, profile, space=space, timing=timing, sensitivity=sensitivity,
                                 use_disk_cache=False, cache=EvaluationCache())
    table_s = time.perf_counter() - t0
    table = profiled.table
    phase = profiled.workload.phase
    launch = table.launch_overhead_s[phase]
    fetches = [v["fetch_s"] for v in table.stream.values()]
    evaluators: dict[str, Any] = {"profiled": profiled}
    if args.single_block_table:  # the table as before session 6 (each entry in one block), in the same run
        evaluators["profiled (table entries one after another)"] = ProfiledEvaluator(
            loaded, profile, space=space, timing=dataclasses.replace(timing, rounds=1), sensitivity=sensitivity,
            use_disk_cache=False, cache=EvaluationCache())
    calibration_s = 0.0
    calibrated = None
    if args.calibration_plans:
        t0 = time.perf_counter()
        calibrated = ProfiledEvaluator(loaded, profile, space=space, timing=timing, sensitivity=sensitivity,
                                       use_disk_cache=False, cache=EvaluationCache(), calibrate_with=runtime,
                                       calibration_plans=args.calibration_plans, calibration_seed=args.seed + 1000)
        calibration_s = time.perf_counter() - t0
        evaluators[f"profiled (calibrated, {args.calibration_plans} plans)"] = calibrated
    evaluators.update({
        # The baseline as before measured rates: no GEMV table, and a GPU profile's dispatch record left out.
        "analytic (roofline only, before GEMV rates)": AnalyticEvaluator(
            loaded, dataclasses.replace(profile, dispatch={}), space=space, sensitivity=sensitivity,
            cache=EvaluationCache(), gemv=None),
        "analytic (uncalibrated)": AnalyticEvaluator(loaded, profile, space=space, sensitivity=sensitivity,
                                                       cache=EvaluationCache()),
    })
    # The table's launch and fetch figures change nothing where the step's rest and the streaming costs are measured
    # (measured CPU / GPU with real weights: the rest replaces the launch term, measured streaming the fetch default),
    # so the calibrated row would only re-measure them: it is built where they are not measured.
    if evaluators["analytic (uncalibrated)"].models[phase].rest_s is None:
        evaluators["analytic (calibrated)"] = AnalyticEvaluator(
            loaded, profile, space=space, sensitivity=sensitivity, launch_overhead_s=launch,
            fetch_overhead_s=(statistics.fmean(fetches) if fetches else None), cache=EvaluationCache())
    if profile.default_unit().kind == "gpu" and profile.dispatch:
        # The profile's dispatch costs alone (per-op x ops + per-step), the step's rest not measured on the model.
        evaluators["analytic (profile dispatch only)"] = AnalyticEvaluator(
            loaded, profile, space=space, sensitivity=sensitivity, cache=EvaluationCache(), gpu_rest=False)

    rng = np.random.default_rng(args.seed)
    vectors = [space.default_vector()] + [space.random_vector(rng) for _ in range(args.plans)]
    kinds = ["unmodified"] + ["random"] * args.plans
    formats = sorted({c for v in space.variables if v.knob == "precision" for c in v.choices} - {"float32"})
    for fmt in formats:
        x = uniform_vector(space, fmt)
        if x is not None:
            vectors.append(x)
            kinds.append(f"uniform {fmt}")
    # Interleave: the runtime measures plans in a shuffled order (seeded), so load drift does not line up
    # with plan index or kind.
    order = list(range(len(vectors)))
    np.random.default_rng(args.seed + 7).shuffle(order)
    rows: list[dict[str, Any]] = [{} for _ in vectors]
    for i in order:
        ref = runtime.evaluate(vectors[i])
        rows[i] = {"plan": i, "kind": kinds[i], "runtime": ref.to_dict()["_data"]}
    reference = None
    if args.rounds:
        t0 = time.perf_counter()
        reference = runtime_reference.measure(runtime, vectors, rounds=args.rounds, steps=args.round_steps,
                                              warmup=args.round_warmup, seed=args.seed + 11)
        for i, row in enumerate(rows):
            extra = row["runtime"]["extra"]
            extra["single_block_latency_s"] = row["runtime"]["latency_s"]
            extra["rounds_s"] = reference.rounds[i]
            extra["round_dispersion"] = reference.dispersion(i)
            row["runtime"]["latency_s"] = reference.medians[i]
        print(f"interleaved reference: {args.rounds} rounds x {args.round_steps} steps in "
              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    # The cheap evaluators price every plan now, as a user's later use of a table measured earlier: the profiled
    # table re-validates itself on this first use (cost/profiled_drift.py), the same code path a user gets.
    for i in order:
        row = rows[i]
        for name, ev in evaluators.items():
            row[name] = ev.evaluate(vectors[i]).to_dict()["_data"]
        print(f"plan {i:2d}: runtime {row['runtime']['latency_s'] * 1e3:7.3f} ms  "
              + "  ".join(f"{n.split()[0]}{'*' if 'calib' in n else ''} {row[n]['latency_s'] * 1e3:7.3f}"
                          for n in evaluators), file=sys.stderr)
    load_after = os.getloadavg()

    def mem(m: dict[str, Any], tiers: tuple[str, ...]) -> int:
        return sum(m["peak_bytes"].get(t, 0) for t in tiers)

    summary: dict[str, Any] = {}
    ref_lat = [r["runtime"]["latency_s"] for r in rows]
    uniform = [r for r in rows if r["kind"].startswith("uniform") or r["kind"] == "unmodified"]
    runtime_order = [r["kind"] for r in sorted(uniform, key=lambda r: r["runtime"]["latency_s"])]
    uniform_idx = [r["plan"] for r in uniform]
    for name, ev in evaluators.items():
        lat = [r[name]["latency_s"] for r in rows]
        lat_err = [ape(e, g) for e, g in zip(lat, ref_lat)]
        mem_err = [ape(mem(r[name], ("gpu", "cpu")), mem(r["runtime"], ("gpu", "cpu"))) for r in rows]
        disk_err = [ape(mem(r[name], ("disk",)), mem(r["runtime"], ("disk",))) for r in rows
                    if mem(r["runtime"], ("disk",))]
        entry = {
            "latency_mape": statistics.median(lat_err), "latency_p90_ape": float(np.percentile(lat_err, 90)),
            "latency_spearman": spearman(lat, ref_lat),
            "memory_mape": statistics.median(mem_err), "memory_max_ape": max(mem_err),
            "disk_mape": statistics.median(disk_err) if disk_err else None,
            "evals_per_s": ev.evaluations_per_second, "evaluated": ev.evaluated,
            "uniform_order": [r["kind"] for r in sorted(uniform, key=lambda r: r[name]["latency_s"])],
        }
        entry["uniform_order_matches_runtime"] = entry["uniform_order"] == runtime_order
        if reference is not None:  # ties allowed: only pairs the runtime resolves in every round count
            entry["uniform_pairs"] = runtime_reference.order_check(
                reference, uniform_idx, [r[name]["latency_s"] for r in uniform], [r["kind"] for r in uniform])
        if len(uniform) > 1:
            entry["uniform_spearman"] = spearman([r[name]["latency_s"] for r in uniform],
                                                 [r["runtime"]["latency_s"] for r in uniform])
        if rows[0][name].get("quality_loss") is not None and rows[0]["runtime"].get("quality_loss") is not None:
            entry["quality_spearman"] = spearman([r[name]["quality_loss"] for r in rows],
                                                 [r["runtime"]["quality_loss"] for r in rows])
        summary[name] = entry
    summary["runtime"] = {"evals_per_s": runtime.evaluations_per_second, "evaluated": runtime.evaluated,
                          "uniform_order": runtime_order,
                          # the same plan, the same runtime, two moments: the reference vs the table's own step
                          "unmodified_over_table": rows[0]["runtime"]["latency_s"] / table.baseline_s[phase],
                          # what the profiled evaluator's own re-validation on first use found and did
                          "table_check": rows[0]["profiled"]["extra"].get("table_check"),
                          "median_dispersion": statistics.median(
                              r["runtime"]["extra"]["round_dispersion"] if reference is not None else
                              (r["runtime"]["extra"]["p90_s"] - r["runtime"]["extra"]["p10_s"])
                              / r["runtime"]["latency_s"] for r in rows),
                          "dispersion_kind": ("rounds' min-max / median" if reference is not None
                                              else "steps' p10-p90 / median")}
    quality_rows = []
    for r in rows:
        if r["kind"] in ("uniform int4", "uniform int8", "uniform bfloat16"):
            q = r["runtime"]["extra"].get("quality") or {}
            est = r["profiled"].get("quality_loss")
            measured = r["runtime"].get("quality_loss")
            quality_rows.append({"plan": r["kind"], "measured": measured, "interval": q.get("loss_interval"),
                                 "estimated": est, "error": (None if est is None or measured is None
                                                             else est - measured),
                                 "method": (q.get("candidate") or {}).get("method"),
                                 "top1_agreement": ((q.get("candidate") or {}).get("details") or {}).get(
                                     "top1_agreement"),
                                 "reference": q.get("reference")})
    return {
        "model": args.model, "plans": len(vectors), "quality": quality_rows,
        "step": ("decode step at 32 positions, batch 1" if loaded.task == "causal-lm" else "one forward of 1 sample"),
        "seed": args.seed, "knobs": list(knobs), "clock": args.clock,
        "threads": args.threads, "repeats": args.repeats, "quality_samples": args.quality_samples,
        "reference": ({"rounds": args.rounds, "steps": args.round_steps, "warmup": args.round_warmup,
                       "orders": reference.orders} if reference is not None else None),
        "device": {"profile": profile.name, "fingerprint": profile.fingerprint, "cpu": profile.cpu.model,
                   "cores": profile.cpu.physical_cores, "python": platform.python_version(),
                   "torch": torch.__version__},
        "load_average_before": load_before, "load_average_after": load_after,
        "calibration": ({"plans": args.calibration_plans, "seed": args.seed + 1000, "seconds": calibration_s,
                         "a_s": calibrated.calibration["a"], "b": calibrated.calibration["b"]}
                        if calibrated is not None else None),
        "table": {"seconds": table_s, "entries": len(table.unit_s), "overhead_s": table.overhead_s,
                  "baseline_s": table.baseline_s, "n_ops": table.n_ops, "launch_overhead_s": table.launch_overhead_s,
                  "stream": {k: {"fetch_s": v["fetch_s"], "s_per_byte": v["s_per_byte"]}
                             for k, v in table.stream.items()}},
        "summary": summary, "rows": rows, "seconds": time.perf_counter() - started,
    }


def markdown(res: dict[str, Any]) -> str:
    s = res["summary"]
    d = res["device"]
    lines = [
        f"# Evaluator error vs the runtime — {res['model']}",
        "",
        f"Device: {d['cpu']} ({d['cores']} cores, no GPU), profile `{d['profile']}` ({d['fingerprint']}), "
        f"torch {d['torch']}, {res['threads']} thread(s). Machine SHARED with other jobs: load average "
        f"{', '.join(f'{v:.2f}' for v in res['load_average_before'])} before, "
        f"{', '.join(f'{v:.2f}' for v in res['load_average_after'])} after (1/5/15 min).",
        f"Plans: {res['plans']} ({res['plans'] - 1} random valid plans from `SearchSpace.random_vector`, seed "
        f"{res['seed']}, knobs {', '.join(res['knobs'])}, plus the unmodified model). Reference: RuntimeEvaluator "
        f"(apply_plan -> runtime.Session; {res['step']}; median of {res['repeats']} steps "
        f"after 3 warm-up on the {res['clock']} clock; TensorStore peak bytes; quality on "
        f"{res['quality_samples'] or 'all'} held-out windows/test images). Total run {res['seconds']:.0f} s.",
        ("" if not res.get("reference") else
         f"The latency reference is then retaken: {res['reference']['rounds']} interleaved rounds over the open plans, "
         f"{res['reference']['warmup']} + {res['reference']['steps']} steps per plan and round, median of round "
         "medians (runtime_reference.py); the figures below use it."),
        "",
        "| evaluator | latency MAPE | latency p90 APE | latency Spearman | memory (gpu+cpu) MAPE | memory max APE | "
        "disk MAPE | quality Spearman (proxy vs measured) | evaluations/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, e in s.items():
        if name == "runtime":
            continue
        q = e.get("quality_spearman")
        disk = "-" if e["disk_mape"] is None else f"{e['disk_mape'] * 100:.2f}%"
        quality = "-" if q is None else f"{q:.2f}"
        lines.append(
            f"| {name} | {e['latency_mape'] * 100:.1f}% | {e['latency_p90_ape'] * 100:.1f}% | "
            f"{e['latency_spearman']:.2f} | {e['memory_mape'] * 100:.2f}% | {e['memory_max_ape'] * 100:.2f}% | "
            f"{disk} | {quality} | {e['evals_per_s']:.0f} |")
    lines.append(f"| runtime (reference) | - | - | - | - | - | - | - | {s['runtime']['evals_per_s']:.2f} |")
    t = res["table"]
    lines += [
        "",
        "Targets (issue 4): latency MAPE <= 15%, memory MAPE <= 5%.",
        "",
        f"Profiled table: measured fresh in this run in {t['seconds']:.1f} s, {t['entries']} unit entries; "
        f"runtime baseline step {', '.join(f'{k} {v * 1e3:.3f} ms' for k, v in t['baseline_s'].items())}; fixed "
        f"overhead {', '.join(f'{k} {v * 1e3:.3f} ms' for k, v in t['overhead_s'].items())} over "
        f"{', '.join(f'{k} {v}' for k, v in t['n_ops'].items())} ops (= "
        f"{', '.join(f'{k} {v * 1e6:.2f} us/op' for k, v in t['launch_overhead_s'].items())}, the calibrated "
        "analytic's launch term); streaming "
        + (", ".join(f"{k}: {v['fetch_s'] * 1e6:.0f} us/fetch + {v['s_per_byte'] * 1e9:.3f} ns/byte"
                     for k, v in t["stream"].items()) or "none (no streamed placement in this space)") + ".",
        "",
        (f"Calibrated profiled: its own table measured the same way, plus a line step = a + b x composed fitted on "
         f"{res['calibration']['plans']} OTHER random plans (seed {res['calibration']['seed']}) run on the runtime "
         f"at setup ({res['calibration']['seconds']:.1f} s incl. its own table): a = "
         f"{res['calibration']['a_s'] * 1e3:.3f} ms, b = {res['calibration']['b']:.3f}."
         if res["calibration"] else "Calibrated profiled: not run (`--calibration-plans 0`)."),
        "",
        "Evaluations per second count cache misses only (every plan is new to each evaluator); the profiled "
        "table build is not included (one-off, cached on disk). Analytic (uncalibrated): its defaults, no runtime "
        "run (on a measured CPU: GEMV times at the model's shapes + the step's rest with the linears nulled; "
        "on paper profiles: rates + the documented default launch (6 us/op) and fetch (30 us) costs).",
        "",
        "Per plan (latency ms; memory MiB gpu+cpu / disk):",
        "",
        "| plan | runtime | profiled | profiled calibrated | analytic | analytic calibrated | memory runtime | "
        "memory estimated |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in res["rows"]:
        rt = r["runtime"]

        def mib(m: dict[str, Any]) -> str:
            pb = m["peak_bytes"]
            return f"{(pb['gpu'] + pb['cpu']) / 2**20:.3f} / {pb['disk'] / 2**20:.3f}"

        cal = next((v for k, v in r.items() if k.startswith("profiled (calibrated")), None)
        lines.append(f"| {r['plan']} | {rt['latency_s'] * 1e3:.3f} | {r['profiled']['latency_s'] * 1e3:.3f} | "
                     f"{'-' if cal is None else format(cal['latency_s'] * 1e3, '.3f')} | "
                     f"{r['analytic (uncalibrated)']['latency_s'] * 1e3:.3f} | "
                     f"{'-' if 'analytic (calibrated)' not in r else format(r['analytic (calibrated)']['latency_s'] * 1e3, '.3f')} | "
                     f"{mib(rt)} | {mib(r['profiled'])} |")
    return "\n".join(lines) + "\n"


def reference_text(args: argparse.Namespace, ref: dict[str, Any] | None) -> str:
    """How the runtime reference was taken (``ref``: a result's "reference", else the arguments), and the tie rule
    (experiments/benchmarks/runtime_reference.py)."""
    rounds, steps, warmup = ((ref["rounds"], ref["steps"], ref["warmup"]) if ref else
                             (getattr(args, "rounds", 0), args.round_steps, args.round_warmup))
    if not rounds:
        return (f"Reference: RuntimeEvaluator, median of {args.repeats} decode steps (batch 1, 32 cached positions; "
                f"encoders: one forward) in one block per plan, plans in a seeded shuffled order, on the {args.clock} "
                f"clock, {args.threads} thread(s).")
    return (f"Reference: the runtime (RuntimeEvaluator.open_step: apply_plan -> Session), every plan kept open and timed "
            f"in {rounds} interleaved rounds (a new seeded shuffled plan order each round; per plan and round "
            f"{warmup} warm-up + {steps} timed decode steps at batch 1, 32 cached positions; "
            f"encoders: forwards), on the {args.clock} clock, {args.threads} thread(s); a plan's latency is the median "
            "of its round medians, its spread the rounds' (max - min) / median. Tie rule: the runtime orders plan A "
            "before plan B only when A is faster in EVERY round; any other pair is a tie and cannot be mis-ordered. "
            "'uniform pairs' counts the pairs of uniform plans (and the unmodified one) the runtime resolves and "
            "those an evaluator orders the other way (mis-ordered, listed below the table); 'strict' compares the "
            "full order of medians, ties included.")


def check_text(runtime_summary: dict[str, Any]) -> str:
    """The profiled evaluator's own re-validation on first use (cost/profiled_drift.py), in words."""
    c = runtime_summary.get("table_check")
    if not c or "ratio" not in c:
        return ""
    return (f"; the profiled evaluator's re-validation on first use, after the reference: unmodified step now / "
            f"table {c['ratio']:.2f} (load {c.get('load_1m')}; {c.get('how')}) -> time terms x{c['scale']:.2f}")


def pairs_text(pairs: dict[str, Any] | None) -> str:
    if not pairs:
        return "-"
    return f"{pairs['resolved']} of {pairs['pairs']} / {len(pairs['misordered'])}"


def unseen_markdown(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """One table per figure over the unseen models (the per-plan rows are in the JSON)."""
    where = "this CPU" if args.device == "cpu" else f"{args.device} of this machine"
    lines = [f"# Evaluator error vs the runtime on the unseen set ({where})", "",
             "Models: `experiments/benchmarks/unseen.py` (architectures never tuned on; benchmarks only). Per model: "
             f"{args.plans} random valid plans (seed {args.seed}, knobs {args.knobs}) + the unmodified model + a "
             "uniform plan of every precision. " + reference_text(args, results[0].get("reference") if results else None) + " Profiled: its table measured fresh in the same process before the runtime runs; every cheap evaluator prices the plans after the reference, the profiled one re-validating its table on that first use. "
             "Quality measured with the model-agnostic default (fidelity in the model's own "
             f"vocabulary: KL + top-1 agreement; encoders: embedding cosine; classifiers: top-1 agreement on "
             f"{args.classifier_quality_samples} images), {args.quality_samples} samples, vs the sensitivity proxy's "
             "estimate (classifiers: expected top-1 flips, quality/flip_proxy.py).", "",
             "| model | plans | load avg before -> after | runtime spread (median over plans) | evaluator | latency "
             "median APE | Spearman | uniform order = runtime's (strict) | uniform pairs: resolved by the runtime / "
             "mis-ordered | uniform Spearman |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for res in results:
        s = res["summary"]
        name = os.path.basename(res["model"].rstrip("/")).rsplit("-", 1)[0]
        load = f"{res['load_average_before'][0]:.1f} -> {res['load_average_after'][0]:.1f}"
        spread = (f"{s['runtime']['median_dispersion'] * 100:.0f}% "
                  f"({s['runtime'].get('dispersion_kind', 'steps p10-p90 / median')})")
        for ev, e in s.items():
            if ev == "runtime":
                continue
            lines.append(f"| {name} | {res['plans']} | {load} | {spread} | {ev} | {e['latency_mape'] * 100:.1f}% | "
                         f"{e['latency_spearman']:.2f} | {'yes' if e['uniform_order_matches_runtime'] else 'no'} | "
                         f"{pairs_text(e.get('uniform_pairs'))} | {e.get('uniform_spearman', float('nan')):.2f} |")
    lines += ["", ("Drift check: the unmodified plan's reference latency over the profiled table's own runtime step of "
                   "the same plan (same process, measured before the reference; 1.00 = no drift between the two "
                   "moments; the table's composition of the unmodified plan IS that table step). The cheap evaluators "
                   "price the plans after the reference; the profiled one re-validates its table on that first use "
                   "(cost/profiled_drift.py: outside +-15 % its time terms are scaled by now / table):"), ""]
    lines += [f"- {os.path.basename(res['model'].rstrip('/')).rsplit('-', 1)[0]}: "
              f"{res['summary']['runtime']['unmodified_over_table']:.2f}" + check_text(res['summary']['runtime'])
              for res in results if "unmodified_over_table" in res["summary"]["runtime"]]
    lines += ["", "Uniform plans, fastest first (runtime vs each evaluator):", ""]
    for res in results:
        s = res["summary"]
        name = os.path.basename(res["model"].rstrip("/")).rsplit("-", 1)[0]
        lines.append(f"- {name}: runtime {' < '.join(s['runtime']['uniform_order'])}; "
                     + "; ".join(f"{ev} {' < '.join(e['uniform_order'])}" for ev, e in s.items() if ev != "runtime"))
        for ev, e in s.items():
            if ev != "runtime" and (e.get("uniform_pairs") or {}).get("misordered"):
                lines.append(f"  - {ev} mis-orders pairs the runtime resolves: "
                             f"{'; '.join(e['uniform_pairs']['misordered'])} (runtime order shown)")
    lines += ["", "The proxy's stated error per model (``quality.recheck.ProxyCalibration`` fitted on every plan of the "
              "run: estimated = profiled evaluator's sensitivity proxy, measured = runtime), and the plans the bound "
              "would mis-admit:", "",
              "| model | plans with both | scale (median measured/estimated) | error (p90 residual) | measured > 1% "
              "but estimated <= 1% | same, after recheck() (scale + error; unscored plans measured) |", "| --- | --- | --- | --- | --- | --- |"]
    from autosurgeon.quality.recheck import ProxyCalibration

    for res in results:
        name = os.path.basename(res["model"].rstrip("/")).rsplit("-", 1)[0]
        both = [r for r in res["rows"]
                if r["profiled"].get("quality_loss") is not None and r["runtime"].get("quality_loss") is not None]
        pairs = [(r["profiled"]["quality_loss"], r["runtime"]["quality_loss"]) for r in both]
        unscored = [int(r["profiled"].get("extra", {}).get("quality_unscored", 0)) for r in both]
        if len(pairs) < 3:
            lines.append(f"| {name} | {len(pairs)} | - | - | - | - |")
            continue
        cal = ProxyCalibration.from_pairs(pairs)
        miss = sum(m > 0.01 and e <= 0.01 for e, m in pairs)
        # recheck(): measured when near the bound by the stated error, or when the proxy left decisions unscored.
        miss_after = sum(m > 0.01 and u == 0 and not cal.needs_recheck(e, 0.01) for (e, m), u in zip(pairs, unscored))
        unscored_plans = sum(u > 0 for u in unscored)
        lines.append(f"| {name} | {len(pairs)} ({unscored_plans} with unscored decisions) | {cal.scale:.3g} | "
                     f"{cal.error * 100:.4f}% | {miss} | {miss_after} |")
    lines += ["", "Quality of uniform plans: measured on the runtime (95 % interval) vs the proxy's estimate:", "",
              "| model | plan | measured loss | 95% interval | top-1 agreement | estimated (proxy) | error (est - "
              "measured) | measured > 1% but estimated <= 1% |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for res in results:
        name = os.path.basename(res["model"].rstrip("/")).rsplit("-", 1)[0]
        for q in res["quality"]:
            m, e, ci = q["measured"], q["estimated"], q["interval"]
            miss = m is not None and e is not None and m > 0.01 and e <= 0.01

            def pct(v: Any) -> str:
                return "-" if v is None else f"{v * 100:+.3f}%"

            lines.append(f"| {name} | {q['plan']} | {pct(m)} | "
                         f"{'-' if not ci else f'[{pct(ci[0])}, {pct(ci[1])}]'} | "
                         f"{'-' if q['top1_agreement'] is None else format(q['top1_agreement'], '.3f')} | {pct(e)} | "
                         f"{pct(q['error'])} | {'MISS' if miss else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny-llama")
    p.add_argument("--plans", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--knobs", default="precision,placement,group_size,kernel")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5,
                   help="interleaved rounds of the runtime reference (runtime_reference.py; 0: one block per plan)")
    p.add_argument("--round-steps", type=int, default=10, help="timed steps per plan per round")
    p.add_argument("--round-warmup", type=int, default=2, help="untimed steps per plan per round")
    p.add_argument("--table-rounds", type=int, default=3,
                   help="interleaved rounds of the profiled table's build (TimingSettings.rounds; 1: one block each)")
    p.add_argument("--single-block-table", action="store_true",
                   help="also run a profiled evaluator whose table is built one entry after another (rounds=1)")
    p.add_argument("--quality-samples", type=int, default=4, help="held-out windows / test images (0: all)")
    p.add_argument("--classifier-quality-samples", type=int, default=64,
                   help="images a classifier's quality is measured on (at least --quality-samples)")
    p.add_argument("--calibration-plans", type=int, default=8,
                   help="runtime plans (seed + 1000, apart from the test plans) the calibrated profiled "
                        "evaluator fits on")
    p.add_argument("--sensitivity", action="store_true", help="measure the sensitivity proxy for classifiers too")
    p.add_argument("--out", default=None, help="markdown results file (a .json with rows is written beside it)")
    p.add_argument("--unseen", action="store_true", help="run every model of the unseen set (see the docstring)")
    p.add_argument("--models", default=None, help="with --unseen: a comma list of unseen names (default all)")
    p.add_argument("--device", default="cpu", help="where the model runs (cpu; cuda on a GPU machine)")
    p.add_argument("--from-json", default=None, metavar="A.json,B.json",
                   help="with --unseen: render --out from saved result files (e.g. two processes' parts)")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and args.clock == "cpu":
        p.error("`--device cuda` needs `--clock wall` (the CPU clock does not see GPU work).")
    if args.unseen and args.from_json:
        results = [r for f in args.from_json.split(",") for r in json.load(open(f))]
        text = unseen_markdown(results, args)
        if args.out:
            with open(args.out, "w") as fh:
                fh.write(text)
        print(text)
        return 0
    if args.unseen:
        from experiments.benchmarks.unseen import build_unseen, unseen_names

        results = []
        # Every model of the set (GPT-2's Conv1D and OPT's learned positions apply since the quantize fix).
        default = unseen_names()
        for name in (args.models.split(",") if args.models else default):
            args.model = str(build_unseen(name))
            results.append(run(args))
            if args.out:  # after every model: a partial run still leaves its results
                with open(os.path.splitext(args.out)[0] + ".json", "w") as fh:
                    json.dump(results, fh, indent=1, default=str)
                with open(args.out, "w") as fh:
                    fh.write(unseen_markdown(results, args))
        print(unseen_markdown(results, args))
        return 0
    res = run(args)
    text = markdown(res)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
        with open(os.path.splitext(args.out)[0] + ".json", "w") as fh:
            json.dump(res, fh, indent=1, default=str)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
