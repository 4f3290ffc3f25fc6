"""``autosurgeon markov``: fit the Markov placement model on earlier fronts, or propose a plan with it.

    autosurgeon markov fit runs/A runs/B --out markov.json
    autosurgeon markov predict tiny-llama --device h100-80gb --model-file markov.json --out plan.json

``fit`` reads each run's ``front.json`` (and ``space.json`` when the sweep saved one; else the space is
rebuilt on the meta device from the front's config). The model file is the ``--warm-start`` of
``autosurgeon sweep``. ``predict`` writes the model's most likely plan for a model and device it may never
have seen (matching choices by value).
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from autosurgeon.errors import InvalidArgumentError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "markov", help="fit the Markov placement model on sweep fronts, or predict a plan with it",
        description="The Markov placement model learns how earlier Pareto fronts set each knob along the units "
        "(by unit kind, size, position and intensity, and the previous decision); sweeps use it as a warm start.")
    sub = parser.add_subparsers(dest="markov_command", metavar="ACTION", required=True)
    fit = sub.add_parser("fit", help="fit on the fronts of run directories", description="Fit on every front "
                         "member of the given run directories (each holds the front.json a sweep wrote).")
    fit.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (runs/NAME) or front.json files")
    fit.add_argument("--out", required=True, help="where to write the model JSON")
    fit.add_argument("--alpha", type=float, default=1.0, help="smoothing pseudo-count (default 1.0)")
    fit.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    fit.set_defaults(func=run_fit)
    predict = sub.add_parser("predict", help="the model's most likely plan for a model on a device")
    predict.add_argument("model", metavar="MODEL", help="zoo name, Hugging Face model directory, or module:factory")
    predict.add_argument("--device", required=True, metavar="PROFILE",
                         help="hardware profile: local, a preset name (autosurgeon profile --list) or a profile JSON")
    predict.add_argument("--model-file", required=True, help="a model JSON written by `autosurgeon markov fit`")
    predict.add_argument("--knobs", default="precision,placement", metavar="K,...",
                         help="knobs of the search space (default precision,placement)")
    predict.add_argument("--out", required=True, help="where to write the plan JSON")
    predict.set_defaults(func=run_predict)


def run_fit(args: argparse.Namespace) -> int:
    from autosurgeon.files.atomic import check_out_file

    check_out_file(getattr(args, "out", None))  # before any work: one line for '', a folder, a bad parent
    from agents.markov import fit_from_runs

    if not args.alpha > 0:
        raise InvalidArgumentError(f"`--alpha` must be > 0, got {args.alpha}.")
    model = fit_from_runs(args.runs, alpha=args.alpha)
    path = model.save(args.out)
    if args.json:
        print(json.dumps({"out": str(path), "n_sequences": model.n_sequences, "sources": model.sources,
                          "contexts": len(model.counts[0])}))
    else:
        print(f"fitted on {model.n_sequences} front members from {len(model.sources)} run(s); "
              f"{len(model.counts[0])} distinct contexts; wrote {path}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from autosurgeon.files.atomic import check_out_file

    check_out_file(getattr(args, "out", None))  # before any work: one line for '', a folder, a bad parent
    from agents.markov import MarkovPlacementModel
    from autosurgeon.hardware.resolve import resolve_profile
    from autosurgeon.space.search_space import SearchSpace
    from autosurgeon.zoo import load_model

    model = MarkovPlacementModel.load(args.model_file)
    knobs = [k.strip() for k in args.knobs.split(",") if k.strip()]
    profile = resolve_profile(args.device)
    loaded = load_model(args.model, device="meta")
    space = SearchSpace.build(loaded, profile, knobs=knobs)
    plan = space.decode(model.predict(space), metadata={"proposer": "MarkovPlacementModel.predict",
                                                        "markov_model": str(args.model_file)})
    path = plan.save(args.out)
    counts: dict[str, int] = {}
    for rule in plan.rules:
        if "precision" in rule.decisions:
            counts[str(rule.decisions["precision"])] = counts.get(str(rule.decisions["precision"]), 0) + 1
    print(f"plan for {loaded.name} on {profile.name}: precisions {counts}; wrote {path}")
    return 0
