"""``autosurgeon sweep`` and ``autosurgeon front``: Pareto sweeps over surgery plans, and picking from a front.

    autosurgeon sweep tiny-llama --device local --evaluator profiled --budget-evals 200 --algo nsga2 --out runs/a
    autosurgeon sweep tiny-llama --config experiments/configs/tiny-llama-h100.json --out runs/h100
    autosurgeon sweep tiny-llama --device local --budget-evals 300 --out runs/a --resume   # continue, more evals
    autosurgeon sweep tiny-llama --device jetson-agx-orin-64gb --evaluator analytic --power-cap 15 --out runs/orin15
    autosurgeon front runs/a --memory-budget 40% --out plan.json
    autosurgeon front runs/a --preference latency=0.6,memory=0.3,energy=0.1 --json
    autosurgeon front runs/a --plan 3fa2c1d0 --out plan.json          # any plan by its id

Every finished evaluation is in ``runs/NAME/evals.jsonl`` the moment it is measured; ``--resume`` replays the
seeded algorithm against those records (nothing is measured twice) and continues to ``--budget-evals``.
The sweep code lives in ``experiments.sweep`` (imported inside the commands). A ``module:factory`` MODEL
imports and runs code: accepted as typed on the command line, from ``--config`` or a run's ``config.json``
only with ``--allow-code`` (``autosurgeon.files.trust``). ``--out`` is locked while a sweep runs.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from autosurgeon.cli._budget import add_memory_budget, single_budget
from autosurgeon.cli._quality import add_quality_arguments, quality_settings
from autosurgeon.cli.scaleout_args import add_cluster_args, add_storage_args
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.evaluate.registry import names as evaluator_names

EVALUATORS = evaluator_names()  # the registry is light to import (no torch): --help reads it


def algorithm_names() -> tuple[str, ...]:
    """The registered search algorithms (``experiments.sweep.registry``: cheap to import, no pymoo/optuna)."""
    from experiments.sweep.registry import names

    return names()


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "sweep", help="Pareto sweep of surgery plans (NSGA-II, random, Optuna) over latency/memory/energy",
        description="Search the model's plan space for the latency / memory / energy Pareto front under a quality "
        "bound, evaluating plans with the chosen evaluator; writes runs/NAME (records, front, plots, TensorBoard, "
        "summary.json). Options override the --config file; on --resume, the run's own config.")
    p.add_argument("model", metavar="MODEL", nargs="?", default=None,
                   help="zoo name, Hugging Face model directory, or module:factory (optional with --config/--resume)")
    p.add_argument("--device", default=None, metavar="PROFILE", help="local, a preset name, or a profile JSON")
    p.add_argument("--evaluator", choices=EVALUATORS, default=None, help="how plans are scored (default profiled)")
    p.add_argument("--budget-evals", type=int, default=None, metavar="N",
                   help="distinct plans to evaluate, the baselines included (default: from the evaluator's speed, "
                   "40-400)")
    p.add_argument("--algo", choices=algorithm_names(), default=None,
                   help="search algorithm (default nsga2); each starts from the baselines' plans")
    p.add_argument("--config", default=None, metavar="FILE", help="a sweep config (experiments/configs/*.json|toml)")
    p.add_argument("--warm-start", default=None, metavar="MARKOV.json",
                   help="seed NSGA-II's initial population from a Markov placement model (agents.markov)")
    p.add_argument("--seed", type=int, default=None, help="seed of every random choice (default 0)")
    p.add_argument("--pop-size", type=int, default=None, metavar="N", help="NSGA-II population (default 20)")
    p.add_argument("--max-quality-loss", type=float, default=None, metavar="X",
                   help="quality constraint: relative loss <= X (0.01 = 1%%; default 0.01)")
    p.add_argument("--power-cap", type=float, default=None, metavar="W",
                   help="power cap in watts: a paper profile is evaluated in its fastest power mode within W (e.g. a "
                   "Jetson's 15 W nvpmodel mode); on a measured profile plans whose mean power exceeds W are "
                   "infeasible (clocks and power limits are never changed)")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder, e.g. runs/NAME (must be empty)")
    p.add_argument("--resume", action="store_true", help="continue the sweep in --out")
    p.add_argument("--overwrite", action="store_true", help="replace what --out holds (default: refuse)")
    p.add_argument("--allow-code", action="store_true",
                   help="let --config or the run's config.json name a module:factory MODEL (imports and runs that "
                   "code: only for files you trust)")
    p.add_argument("--no-baselines", action="store_true",
                   help="do not evaluate the unmodified model and the uniform/greedy/knapsack/least-memory baselines first (nor "
                   "seed the search with them)")
    p.add_argument("--cache-dir", default=None, help="zoo and sensitivity cache folder")
    p.add_argument("--json", action="store_true",
                   help="print summary.json (front with ids and origins, hypervolume, the baselines' hypervolume)")
    add_quality_arguments(p, default_method=None)  # measured quality (runtime evaluator), as every command
    add_cluster_args(p)
    add_storage_args(p)
    p.set_defaults(func=run)

    f = subparsers.add_parser(
        "front", help="print a sweep's Pareto front and pick a plan by memory budget or preference",
        description="Print the feasible Pareto front of a run folder; with --memory-budget and/or --preference "
        "pick one member (and write its plan with --out).")
    f.add_argument("run_dir", metavar="RUN", help="a folder written by autosurgeon sweep")
    add_memory_budget(f, "pick the front member that fits: one size (4MiB) or share (40%) bounding the memory "
                      "objective, GPU+CPU bytes", old=("--budget-memory",))
    f.add_argument("--preference", default=None, metavar="W",
                   help="weights over normalised objectives, e.g. latency=0.6,memory=0.3,energy=0.1 (sum 1)")
    f.add_argument("--plan", default=None, metavar="ID",
                   help="pick the plan with this id (or a unique prefix; any evaluated plan, not only the front's)")
    f.add_argument("--json", action="store_true", help="print JSON instead of a table")
    f.add_argument("--out", default=None, metavar="PLAN.json", help="write the picked plan")
    f.set_defaults(func=run_front)


class _Progress:
    """One self-rewriting line on stderr: evaluations done, rate, best latency/memory so far."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.started: float | None = None  # at the first evaluation: setup (model, tables) is not in the rate
        self.first = 0
        self.last = 0.0

    def __call__(self, done: int, total: int, record: dict[str, Any]) -> None:
        now = time.perf_counter()
        if self.started is None:
            self.started, self.first = now, done
        if not self.enabled or (now - self.last < 0.2 and done < total):
            return
        self.last = now
        width = 30
        filled = int(width * min(done, total) / max(total, 1))
        elapsed = now - self.started
        rate = f" ({(done - self.first) / elapsed:.1f}/s)" if elapsed > 0 else ""
        sys.stderr.write(f"\rsweep [{'#' * filled}{'.' * (width - filled)}] {done}/{total} evals{rate}")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _check(args: argparse.Namespace) -> None:
    if args.budget_evals is not None and args.budget_evals < 1:
        raise InvalidArgumentError(f"`--budget-evals` must be >= 1, got {args.budget_evals}.")
    if args.pop_size is not None and args.pop_size < 2:
        raise InvalidArgumentError(f"`--pop-size` must be >= 2, got {args.pop_size}.")
    if args.seed is not None and args.seed < 0:
        raise InvalidArgumentError(f"`--seed` must be >= 0, got {args.seed}.")
    if args.max_quality_loss is not None and not args.max_quality_loss >= 0:
        raise InvalidArgumentError(f"`--max-quality-loss` must be >= 0 (0.01 = 1%), got {args.max_quality_loss}.")
    quality_settings(args)  # a bad --data / --quality-samples: one line naming the flag, before any work
    if args.power_cap is not None:
        from autosurgeon.hardware.power_cap import check_power_cap

        check_power_cap(args.power_cap, argument="--power-cap")


def run(args: argparse.Namespace) -> int:
    _check(args)
    from pathlib import Path

    from experiments.sweep import SweepConfig, load_config, run_sweep
    from experiments.sweep.cluster import sweep_cluster
    from experiments.sweep.store import CONFIG, RunStore

    store = RunStore(args.out)
    from autosurgeon.files.trust import check_code_spec

    if args.resume and (store.path(CONFIG)).is_file():
        base = SweepConfig.from_dict(store.read_json(CONFIG))
        if args.model is None:
            check_code_spec(base.model, source=str(store.path(CONFIG)), allow=args.allow_code)
    elif args.config is not None:
        base = load_config(args.config)
        if args.model is None:
            check_code_spec(base.model, source=f"--config {args.config}", allow=args.allow_code)
    elif args.model is None:
        raise InvalidArgumentError("give MODEL (e.g. tiny-llama) or `--config` (experiments/configs/*.json).")
    else:
        base = SweepConfig(model=args.model, name=Path(args.out).name)
    if args.model is not None and args.model != base.model:
        if args.resume:
            raise InvalidArgumentError(f"`--resume`: MODEL {args.model!r} differs from the run's {base.model!r}.")
        base = base.replace(model=args.model)
    config = base.replace(device=args.device, evaluator=args.evaluator, budget_evals=args.budget_evals,
                          algo=args.algo, warm_start=args.warm_start, seed=args.seed, pop_size=args.pop_size,
                          max_quality_loss=args.max_quality_loss, power_cap_w=args.power_cap,
                          baselines=False if args.no_baselines else None, quality_data=args.data,
                          quality_samples=args.quality_samples, quality_method=args.quality_method)
    progress = _Progress(enabled=not args.json)
    with sweep_cluster(workers=args.workers, scheduler=args.scheduler, gpus=args.worker_gpus,
                       threads=args.worker_threads) as cluster:
        result = run_sweep(config, args.out, resume=args.resume, progress=progress, cache_dir=args.cache_dir,
                           cluster=cluster, optuna_storage=args.storage, study_name=args.study_name,
                           overwrite=args.overwrite)
    s = result.summary
    if args.json:
        print(json.dumps(s, default=str))
        return 0
    print(f"sweep      {s['model']} on {s['device']} ({s['evaluator']} evaluator), {s['algorithm']} seed {s['seed']}"
          f" -> {result.run_dir}")
    print(f"evals      {s['evaluations']}/{s['budget_evals']} ({s['status']}; {s['feasible']} feasible, "
          f"{s['measured_this_attempt']} measured now, {s['replayed']} replayed), {s['wall_s']:.1f} s")
    print(f"front      {s['front_size']} plans; hypervolume {s['hypervolume']:.4f} (reference point "
          f"{s['reference_point']} in units of the unmodified model's {', '.join(s['objectives'])})")
    if "hypervolume_baselines" in s:
        origins = ", ".join(f"{k} x{v}" for k, v in sorted(s.get("front_origins", {}).items()))
        print(f"baselines  hypervolume {s['hypervolume_baselines']:.4f} of the baselines alone; front members by "
              f"origin: {origins or '-'}")
    if s.get("power"):
        p = s["power"]
        print(f"power cap  {p['power_cap_w']:g} W: mode {p['power_mode']!r} ({p['mode_watts']:g} W); {p['how']}")
    curve = ", ".join(f"{k}: {v:.4f}" for k, v in s["hv_curve"].items())
    print(f"hv curve   {curve}")
    for fam, b in s.get("baselines", {}).items():
        print(f"baseline   {fam}: {b['n']} plans, hypervolume {b['hypervolume']:.4f}")
    if s.get("cluster"):
        c = s["cluster"]
        print(f"cluster    {c['evaluated']} plans on {len(c['by_worker'])} worker(s), "
              f"{c['evaluations_per_s']:.2f} evals/s while waiting on them")
    for note in s.get("notes", []):
        print(f"note       {note}")
    print(f"next       autosurgeon front {result.run_dir} --preference latency=0.5,memory=0.5  (or --plan ID)")
    return 0


def _fmt_row(rec: dict[str, Any], names: list[str]) -> list[str]:
    out = []
    for n, v in zip(names, rec["objectives"]):
        if n == "latency":
            out.append(f"{v * 1e3:.4f}")
        elif n.startswith("memory"):
            out.append(f"{v / 2**20:.3f}")
        elif n == "energy":
            out.append(f"{v * 1e3:.4f}")
        else:
            out.append(f"{v:.4g}")
    q = rec.get("quality_loss")
    out.append("-" if q is None else f"{q * 100:.3f}")
    return out


def _precisions(rec: dict[str, Any]) -> str:
    counts: dict[str, int] = {}
    placements: dict[str, int] = {}
    for rule in rec["plan"]["_data"]["rules"]:
        decisions = rule.get("decisions", {}) if isinstance(rule, dict) else {}
        if "precision" in decisions:
            counts[decisions["precision"]] = counts.get(decisions["precision"], 0) + 1
        if "placement" in decisions:
            placements[decisions["placement"]] = placements.get(decisions["placement"], 0) + 1
    parts = [f"{k}x{v}" for k, v in sorted(counts.items(), key=lambda t: -t[1])]
    streamed = sum(v for k, v in placements.items() if "<-" in k)
    return " ".join(parts) + (f" | {streamed} streamed" if streamed else "")


def run_front(args: argparse.Namespace) -> int:
    from autosurgeon.files.atomic import check_out_file

    check_out_file(getattr(args, "out", None))  # before any work: one line for '', a folder, a bad parent
    from autosurgeon.plan import Plan
    from experiments.sweep import load_run
    from experiments.sweep.front import parse_preference, pick
    from experiments.sweep.hypervolume import front_indices
    from experiments.sweep.ids import find_by_id, origin, record_id

    config, records, reference, _ = load_run(args.run_dir)
    names = list(config.objective_names)
    scales = reference["scales"]
    preference = parse_preference(args.preference, names) if args.preference is not None else None
    unmodified = scales[names.index("memory")] if "memory" in names else 0
    budget = single_budget(args, reference_bytes=int(unmodified), meaning="the memory objective (GPU+CPU bytes)")
    front = sorted(front_indices(records), key=lambda i: records[i]["objectives"][0])
    chosen = None
    if args.plan is not None:
        if budget is not None or preference is not None:
            raise InvalidArgumentError("`--plan` picks one plan by id; drop `--memory-budget`/`--preference`, or "
                                       "drop `--plan` to pick by budget or preference.")
        chosen = find_by_id(records, args.plan)
    elif budget is not None or preference is not None:
        chosen = pick(records, front, names, scales, budget_memory=budget, preference=preference)
    path = None
    if chosen is not None and args.out:
        path = Plan.from_dict(records[chosen]["plan"]).save(args.out)
    if args.json:
        print(json.dumps({"run": str(args.run_dir), "objectives": names, "scales": scales,
                          "front": [{"id": record_id(records[i]), "origin": origin(records[i]),
                                     "eval": records[i]["eval"], "objectives": records[i]["objectives"],
                                     "quality_loss": records[i].get("quality_loss"), "x": records[i]["x"]}
                                    for i in front],
                          "chosen": None if chosen is None else records[chosen]["eval"],
                          "chosen_id": None if chosen is None else record_id(records[chosen]),
                          "plan_out": None if path is None else str(path)}))
        return 0
    units = {"latency": "ms", "energy": "mJ", "memory": "MiB"}
    header = ["id", "origin"] + [f"{n} ({units.get(n.split(':')[0], '')})" for n in names] + ["quality %", "plan"]
    shown = front + ([chosen] if chosen is not None and chosen not in front else [])
    rows = [[("*" if i == chosen else "") + record_id(records[i]), origin(records[i]) + ("" if i in front else
                                                                                        " (not on front)")]
            + _fmt_row(records[i], names) + [_precisions(records[i])] for i in shown]
    widths = [max(len(h), *(len(r[k]) for r in rows)) if rows else len(h) for k, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    print(f"{len(front)} front plans of {len(records)} evaluations ({config.algo}, {config.evaluator} evaluator)")
    if chosen is not None:
        print(f"picked     {record_id(records[chosen])} (eval {records[chosen]['eval']}, *)"
              + (f" -> {path}" if path else ""))
    return 0
