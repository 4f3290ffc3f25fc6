"""Scale-out benchmark: evaluations/s of sweep plans on local Dask clusters of 1, 2 and 4 worker processes
against the serial evaluator in the same run, for the analytic, profiled and runtime evaluators.

Per evaluator: the sweep's config (``--model`` on ``--device local``, quality off so only the evaluator's own
work is timed), one serial evaluator in this process and one local cluster per worker count
(``experiments.sweep.cluster.dask_client``), every evaluator with ``--threads`` torch threads (default 1: each
worker is the same device as the serial one, so their records can be equal), all started and warmed first (every worker's model and tables built: ``DaskEvaluator.warm``). Then ``--rounds`` rounds,
each with its own ``--plans`` random plans (seeded; distinct across rounds so no cache answers), measured by
every configuration in a rotated order (serial, w1, w2, w4; then w1, w2, w4, serial; ...) — the MEASURING.md
interleaving. Per configuration: evaluations/s per round (median and min-max), the per-round ratio to the
serial figure of the same round (median, min-max), and whether its metrics equal the serial ones plan by
plan (exact for the analytic and profiled evaluators, which are deterministic given their tables; for the
runtime evaluator the timed fields differ by nature, so memory and the plan set are compared).

Run: ``python -m experiments.benchmarks.scaleout --out experiments/benchmarks/results/scaleout_cpu``
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import statistics
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _plans(space: Any, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    seen: set[bytes] = set()
    while len(out) < n:
        x = space.repair(space.random_vector(rng))
        if x.tobytes() not in seen:
            seen.add(x.tobytes())
            out.append(x)
    return out


def _untimed(m: dict[str, Any]) -> Any:
    return m.get("peak_bytes")


def bench_evaluator(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from experiments.sweep import SweepConfig, build_evaluator
    from experiments.sweep.cluster import dask_client
    from experiments.sweep.dask_eval import DaskEvaluator, sweep_evaluator_factory

    config = SweepConfig(model=args.model, device="local", evaluator=name, quality="none", baselines=False)
    threads = args.threads
    torch.set_num_threads(threads)
    t = time.perf_counter()
    serial = build_evaluator(config)
    setup_serial = time.perf_counter() - t
    n_plans = args.plans_runtime if name == "runtime" else args.plans
    rounds = [_plans(serial.space, n_plans, 1000 * r + 7) for r in range(args.rounds + 1)]  # [0]: warm-up
    names = ["serial"] + [f"w{n}" for n in args.workers]
    result: dict[str, Any] = {"evaluator": name, "plans_per_round": n_plans, "rounds": args.rounds,
                              "setup_s": {"serial": setup_serial}, "threads": {"serial": threads},
                              "chunk": 1 if name == "runtime" else "auto"}
    with ExitStack() as stack:
        evs: dict[str, Any] = {"serial": serial}
        for n in args.workers:
            t = time.perf_counter()
            client = stack.enter_context(dask_client(workers=n))
            ev = DaskEvaluator(build_evaluator(config), client, factory=sweep_evaluator_factory(config.to_dict()),
                               threads=threads, chunk=1 if name == "runtime" else "auto", gpus=args.gpus)
            ev.warm()
            result["setup_s"][f"w{n}"] = time.perf_counter() - t
            result["threads"][f"w{n}"] = threads
            evs[f"w{n}"] = ev
        # Warm-up: every precision's kernels (built once, cached on disk), shapes and allocators, everywhere.
        from experiments.sweep.algorithms import uniform_vectors

        warm = list(uniform_vectors(serial.space).values()) + rounds[0]
        for key, ev in evs.items():
            ev.evaluate_many(warm) if key != "serial" else [ev.evaluate(x) for x in warm]
        rates: dict[str, list[float]] = {k: [] for k in names}
        metrics: dict[str, list[list[dict[str, Any]]]] = {k: [] for k in names}
        loads = [os.getloadavg()[0]]
        for r in range(args.rounds):
            plans = rounds[r + 1]
            order = names[r % len(names):] + names[:r % len(names)]
            for key in order:
                ev = evs[key]
                t = time.perf_counter()
                out = [ev.evaluate(x) for x in plans] if key == "serial" else ev.evaluate_many(plans)
                dt = time.perf_counter() - t
                rates[key].append(len(plans) / dt)
                metrics[key].append([m.to_dict() for m in out])
            loads.append(os.getloadavg()[0])
        result["by_worker"] = {k: evs[k].by_worker for k in names if k != "serial"}
    result["load_1min"] = {"min": min(loads), "max": max(loads), "per_round": loads}
    result["configs"] = {}
    for key in names:
        ratios = [a / b for a, b in zip(rates[key], rates["serial"])]
        exact = all(metrics[key][r] == metrics["serial"][r] for r in range(args.rounds))
        untimed = all([_untimed(m) for m in metrics[key][r]] == [_untimed(m) for m in metrics["serial"][r]]
                      for r in range(args.rounds))
        med = statistics.median(rates[key])
        result["configs"][key] = {
            "evals_per_s_median": med, "evals_per_s_min": min(rates[key]), "evals_per_s_max": max(rates[key]),
            "spread": (max(rates[key]) - min(rates[key])) / med, "per_round": rates[key],
            "ratio_to_serial_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "metrics_equal_serial": exact, "memory_equal_serial": untimed}
    return result


def _gpu_names() -> list[str]:
    """The visible CUDA devices' names, without initialising CUDA where there is none (NVML, else nothing)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return [str(pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i)))
                    for i in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no library: a CPU machine
        return []


def write_report(out: Path, results: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    lines = ["# Scale-out: sweep evaluations per second on local Dask clusters", "",
             f"Generated by `{meta['command']}` on {meta['date']} (total {meta['wall_s']:.0f} s).", "",
             f"Machine: {meta['machine']}, {meta['cores']} logical CPUs, shared with other jobs (1-min load average "
             f"{meta['load_before']:.1f} before, {meta['load_after']:.1f} after); torch {meta['torch']}. Model "
             f"`{meta['model']}` on `--device local`, quality off. Method: per evaluator, a serial evaluator in the "
             f"benchmark's process and one local Dask cluster per worker count (worker processes, each worker's "
             f"evaluator built and warmed before timing), every evaluator with {meta['threads']} torch thread(s) "
             "(the same device everywhere), "
             f"{meta['rounds']} interleaved rounds (rotated order), each round's own random plans measured by every "
             "configuration; figures are the median over rounds with min-max, ratios are per round against the "
             "serial figure of the same round.", "",
             *([f"GPUs: {', '.join(meta['gpu_names'])}; workers placed on CUDA devices {meta['gpus']} in turn"
                + (" (fewer GPUs than workers: workers share a GPU, and its time)" if meta['gpus'] and
                   max(meta.get('workers', [1])) > len(meta['gpus']) else "") + ".", ""]
               if meta.get("gpu_names") else []),
             *([f"**A {meta['cores']}-core machine caps the gain**: beyond {meta['cores']} workers, processes share "
                "cores (and other jobs share them too), so 4 workers cannot beat 2 here; the cluster's purpose is "
                "workers on other cores, GPUs and machines.", ""]
               if max(meta.get("workers", [4])) * meta["threads"] > meta["cores"] else [])]
    for res in results:
        lines += [f"## {res['evaluator']} evaluator", "",
                  f"{res['plans_per_round']} plans per round; plans per task {res['chunk']}; load (1-min) "
                  f"{res['load_1min']['min']:.1f}-{res['load_1min']['max']:.1f} during the rounds.", "",
                  "| configuration | torch threads / worker | setup s | evals/s (median) | min-max | ratio to serial "
                  "(median) | ratio min-max | metrics = serial | memory = serial |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for key, c in res["configs"].items():
            label = "serial (this process)" if key == "serial" else f"{key[1:]} worker(s)"
            noisy = " (noisy)" if c["spread"] > 0.15 else ""
            lines.append(f"| {label} | {res['threads'][key]} | {res['setup_s'][key]:.1f} | "
                         f"{c['evals_per_s_median']:.2f}{noisy} | {c['evals_per_s_min']:.2f}-{c['evals_per_s_max']:.2f} | "
                         f"{c['ratio_to_serial_median']:.2f}x | {c['ratio_min']:.2f}-{c['ratio_max']:.2f} | "
                         f"{'yes' if c['metrics_equal_serial'] else 'no'} | "
                         f"{'yes' if c['memory_equal_serial'] else 'no'} |")
        lines.append("")
    lines += ["`(noisy)`: the spread (max-min)/median of that configuration's rounds is above 15 %. `metrics = serial`: "
              "every plan's metrics equal the serial evaluator's, bit for bit (the runtime evaluator's timings are "
              "measurements and differ by nature; its memory is compared instead). Setup: starting the cluster and "
              "building every worker's evaluator (model load, tables from the disk cache).", ""]
    out.with_suffix(".md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny-llama")
    ap.add_argument("--evaluators", default="analytic,profiled,runtime")
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--plans", type=int, default=60, help="plans per round (analytic, profiled)")
    ap.add_argument("--plans-runtime", type=int, default=8, help="plans per round (runtime)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of the serial evaluator and of every worker: the same device everywhere")
    ap.add_argument("--gpus", default=None, metavar="0,1,..",
                    help="CUDA device ids: worker k sees gpus[k %% n] (fewer GPUs than workers: they share; the "
                    "report says so). Default: leave CUDA_VISIBLE_DEVICES alone")
    ap.add_argument("--out", default="experiments/benchmarks/results/scaleout_cpu")
    args = ap.parse_args(argv)
    args.workers = [int(w) for w in args.workers.split(",")]
    args.gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else None
    started = time.perf_counter()
    load0 = os.getloadavg()[0]
    results = []
    for name in args.evaluators.split(","):
        results.append(bench_evaluator(name, args))
        print(json.dumps({k: results[-1][k] for k in ("evaluator", "configs")}, indent=1))
        _report(args, argv, results, started, load0)  # after each evaluator: an interrupted run keeps its figures
    return 0


def _report(args: argparse.Namespace, argv: list[str] | None, results: list[dict[str, Any]], started: float,
            load0: float) -> None:
    meta = {"command": "python -m experiments.benchmarks.scaleout " + " ".join(sys.argv[1:] if argv is None else argv),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "wall_s": time.perf_counter() - started,
            "machine": platform.machine(), "cores": os.cpu_count(), "torch": torch.__version__,
            "load_before": load0, "load_after": os.getloadavg()[0], "model": args.model, "rounds": args.rounds,
            "threads": args.threads, "gpus": args.gpus, "gpu_names": _gpu_names(), "workers": args.workers}
    write_report(Path(args.out), results, meta)


if __name__ == "__main__":
    raise SystemExit(main())
