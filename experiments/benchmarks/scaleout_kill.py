"""Scale-out robustness: ``kill -9`` a Dask worker while it holds sweep evaluations, ``--kills`` times, and check
that the run folder loses and duplicates no evaluation.

One serial reference sweep (``--model`` on ``--device local``, ``--evaluator``, NSGA-II, ``--budget`` evaluations,
quality off), then sweeps of the same config on one local cluster of ``--workers`` worker processes, each with a
:class:`experiments.benchmarks.scaleout_chaos.WorkerKiller` that waits a random time (seeded per run) and
SIGKILLs a worker the scheduler reports as processing an evaluation (so one is in flight on it by construction);
the worker's nanny starts a replacement, the scheduler re-runs the lost tasks elsewhere. Runs go on until
``--kills`` kills have landed (a sweep that ends before its kill counts as a run without one). Per run: its
``evals.jsonl`` must hold exactly the budget's records, no plan twice, the same plans and metrics as the
serial reference, in the same order.

Run: ``python -m experiments.benchmarks.scaleout_kill --out experiments/benchmarks/results/scaleout_kill``
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def main(argv: list[str] | None = None) -> int:
    from experiments.benchmarks.scaleout_chaos import WorkerKiller
    from experiments.sweep import SweepConfig, run_sweep
    from experiments.sweep.cluster import sweep_cluster

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="tiny-llama-test")
    ap.add_argument("--evaluator", default="profiled", choices=("analytic", "profiled"))
    ap.add_argument("--budget", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--max-delay", type=float, default=15.0, help="seconds: a run's kill comes after U(0, this)")
    ap.add_argument("--kill-after-records", action="store_true",
                    help="kill at a random point of the recorded run instead: once the run folder holds a number of "
                    "records drawn from U{0, budget-1} (seeded by the run number), the next busy worker")
    ap.add_argument("--out", default="experiments/benchmarks/results/scaleout_kill")
    args = ap.parse_args(argv)
    args.command_text = " ".join(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(1)
    # The nannies live in this process: their restarts of killed workers go to stderr, for the record.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for name in ("distributed.nanny", "distributed.scheduler"):
        logging.getLogger(name).addHandler(handler)
    started, load0 = time.perf_counter(), os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="autosurgeon-kill-"))
    config = SweepConfig(model=args.model, device="local", evaluator=args.evaluator, quality="none",
                         baselines=False, budget_evals=args.budget, pop_size=20, seed=0)
    t = time.perf_counter()
    serial = run_sweep(config, root / "serial", outputs=False, tensorboard=False)
    serial_s = time.perf_counter() - t
    runs: list[dict[str, Any]] = []
    with sweep_cluster(workers=args.workers, threads=1) as cluster:
        k = replaced = 0
        while sum(len(r["killed"]) for r in runs) < args.kills and k < 3 * args.kills:
            for name in ("distributed.nanny", "distributed.scheduler"):  # after the cluster's own log setup
                logging.getLogger(name).setLevel(logging.INFO)
            try:  # the last run's victim is back (its nanny restarts it)
                cluster.client.wait_for_workers(args.workers, timeout=300)
            except TimeoutError:  # under heavy load Dask may give a restarting worker up: start a fresh one
                replaced += 1
                cluster.client.cluster.scale(args.workers)
                cluster.client.wait_for_workers(args.workers, timeout=600)

            def recorded(path: Path = root / f"run{k}" / "evals.jsonl") -> int:
                return len(path.read_text().splitlines()) if path.is_file() else 0

            ready = None
            if args.kill_after_records:
                target = random.Random(1000 + k).randrange(args.budget)

                def ready(target: int = target) -> bool:
                    return recorded() >= target
            killer = WorkerKiller(cluster.client, kills=1, seed=k, delay_s=(0.0, args.max_delay), probe=recorded,
                                  ready=ready)
            killer.start()
            t = time.perf_counter()
            try:
                res = run_sweep(config, root / f"run{k}", outputs=False, tensorboard=False, cluster=cluster)
            finally:
                killer.stop.set()
                killer.join()
            lines = (root / f"run{k}" / "evals.jsonl").read_text().splitlines()
            xs = [json.dumps(json.loads(line)["x"]) for line in lines]
            runs.append({
                "run": k, "wall_s": time.perf_counter() - t,
                "killed": [{"worker": a, "evaluations_in_flight": len(keys), "at_s": round(at, 3),
                            "records_before_kill": n} for a, keys, at, n in killer.killed],
                "records": len(lines), "distinct": len(set(xs)),
                "same_plans_in_order": [r["x"] for r in res.records] == [r["x"] for r in serial.records],
                "same_metrics": [r["metrics"] for r in res.records] == [r["metrics"] for r in serial.records],
                "evaluated_on_cluster": res.summary["cluster"]["evaluated"],
                "workers_used": len(res.summary["cluster"]["by_worker"])})
            print(json.dumps(runs[-1]), file=sys.stderr)
            k += 1
            _write(Path(args.out), args, runs, load0, started, serial_s, replaced)
    shutil.rmtree(root, ignore_errors=True)
    return 0 if _write(Path(args.out), args, runs, load0, started, serial_s, replaced) else 1


def _write(out: Path, args: argparse.Namespace, runs: list[dict[str, Any]], load0: float, started: float,
           serial_s: float, replaced: int) -> bool:
    """The report so far (rewritten after every run, so an interrupted benchmark keeps what it measured)."""
    kills = sum(len(r["killed"]) for r in runs)
    ok = all(r["records"] == args.budget and r["distinct"] == args.budget and r["same_plans_in_order"]
             and r["same_metrics"] for r in runs)
    meta = {"command": "python -m experiments.benchmarks.scaleout_kill " + args.command_text,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "wall_s": time.perf_counter() - started,
            "cores": os.cpu_count(), "load_before": load0, "load_after": os.getloadavg()[0],
            "model": args.model, "evaluator": args.evaluator, "budget": args.budget, "workers": args.workers,
            "serial_reference_s": serial_s, "kills": kills, "runs": len(runs), "all_runs_lossless": ok,
            "workers_replaced_by_benchmark": replaced}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=2) + "\n")
    lines = ["# Scale-out: killed workers lose and duplicate no evaluation", "",
             f"Generated by `{meta['command']}` on {meta['date']} (total {meta['wall_s']:.0f} s; 1-min load "
             f"{load0:.1f} before, {meta['load_after']:.1f} after, {meta['cores']} logical CPUs).", "",
             f"`{args.model}` on `--device local`, {args.evaluator} evaluator, NSGA-II seed 0, {args.budget} evaluations, "
             f"quality off; a local Dask cluster of {args.workers} worker processes (1 torch thread each). Each run "
             f"SIGKILLs one worker that the scheduler reports processing an evaluation, "
             + (f"once the run folder holds a number of records drawn from U{{0, {args.budget - 1}}}"
                if getattr(args, "kill_after_records", False) else f"after U(0, {args.max_delay:g}) s")
             + " (seeded by the run number); reference: the same sweep, serial, in the same process.", "",
             f"**{kills} kills in {len(runs)} runs; every run lossless and duplicate-free: "
             f"{'yes' if ok else 'NO'}.**", "",
             f"Replacements the benchmark had to start itself because Dask gave a slow-restarting worker up: "
             f"{replaced} (the nanny restarts a killed worker; under a load of 20-30 its start took up to 2 min).", "",
             "| run | killed at s | records written before the kill | evaluation tasks in flight on the killed worker "
             "| records | distinct | plans = serial (order) | metrics = serial | plans measured on the cluster | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        kill = r["killed"][0] if r["killed"] else None
        lines.append(f"| {r['run']} | {kill['at_s'] if kill else '- (ended first)'} | "
                     f"{kill['records_before_kill'] if kill else '-'} | "
                     f"{kill['evaluations_in_flight'] if kill else '-'} | {r['records']} | {r['distinct']} | "
                     f"{'yes' if r['same_plans_in_order'] else 'no'} | {'yes' if r['same_metrics'] else 'no'} | "
                     f"{r['evaluated_on_cluster']} | {r['wall_s']:.1f} |")
    lines += ["", "`records written before the kill`: lines in the run's evals.jsonl at that moment (0: during the "
              "unmodified model's reference or the first population). `evaluation tasks in flight`: the evaluation tasks the scheduler had on that worker when it was killed "
              "(a task holds one or more plans). `plans measured on the cluster` counts plans measured by a worker "
              "that returned them (the reference included); plans lost with a killed worker were measured again "
              "elsewhere and are not in that count twice, and never in the records twice.", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    return ok


if __name__ == "__main__":
    raise SystemExit(main())
