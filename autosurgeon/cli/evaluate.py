"""``autosurgeon evaluate``: Metrics of a plan from one evaluator, each figure with its label.

    autosurgeon evaluate tiny-llama --plan plan.json                       # analytic, this machine's profile
    autosurgeon evaluate tiny-llama --plan plan.json --evaluator runtime   # applied and run end to end
    autosurgeon evaluate tiny-llama --plan plan.json --device h100-80gb --json

The plan is read before the model loads (a corrupt or unknown-version file is refused naming the field
and version), then checked for this model and device: a plan made for another model or device names
both fingerprints, and ``--force`` evaluates it anyway where the space still accepts every decision.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from autosurgeon.cli._quality import add_quality_arguments, quality_settings
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.evaluate.registry import names as evaluator_names

EVALUATORS = evaluator_names()


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="evaluate a plan: latency, memory per tier, energy, quality loss (each labelled)",
        description="Evaluate a plan JSON for MODEL with one evaluator and print its Metrics, each figure "
        "labelled measured, profiled or estimated.")
    parser.add_argument("model", metavar="MODEL", help="zoo name, Hugging Face model directory, or module:factory")
    parser.add_argument("--plan", required=True, help="a plan JSON (autosurgeon plan --out)")
    parser.add_argument("--evaluator", choices=EVALUATORS, default="analytic",
                        help="analytic: roofline on the profile (default); profiled: per-unit measurements on this "
                        "machine; runtime: apply the plan and run it here")
    parser.add_argument("--device", default="local", metavar="PROFILE",
                        help="hardware profile (profiled and runtime measure this machine: local)")
    parser.add_argument("--force", action="store_true",
                        help="evaluate a plan made for another model or device fingerprint (when its decisions "
                        "are still valid here)")
    parser.add_argument("--proxy", action="store_true",
                        help="analytic/profiled: add the sensitivity proxy's quality loss (measures the table once)")
    add_quality_arguments(parser, default_samples=4)
    parser.add_argument("--cache-dir", default=None, help="zoo and sensitivity cache folder")
    parser.add_argument("--json", action="store_true", help="print the Metrics record as JSON")
    parser.set_defaults(func=run)


def _fmt_value(name: str, value: Any, phase: str) -> str:
    from runtime.sizes import format_bytes

    per = "token" if phase == "decode" else "sample"
    if value is None:
        return "not evaluated"
    if name == "latency_s":
        return f"{value * 1e3:.4f} ms/{per}"
    if name == "prefill_s":
        return f"{value * 1e3:.4f} ms"
    if name == "tokens_per_s":
        return f"{value:.2f} tokens/s"
    if name == "peak_bytes":
        return ", ".join(f"{t} {format_bytes(b)}" for t, b in value.items())
    if name == "energy_j":
        return f"{value * 1e3:.4f} mJ/{per}"
    if name == "quality_loss":
        return f"{value * 100:+.3f}%"
    return str(value)


def run(args: argparse.Namespace) -> int:
    from autosurgeon.evaluate.registry import get as evaluator_kind
    from autosurgeon.hardware.resolve import resolve_profile
    from autosurgeon.knobs import KNOBS
    from autosurgeon.metrics import METRIC_FIELDS
    from autosurgeon.plan import Plan, model_fingerprint
    from autosurgeon.plan_check import check_plan, raise_for_problems
    from autosurgeon.space.search_space import SearchSpace
    from autosurgeon.zoo import load_model

    quality = quality_settings(args)  # one-line errors for a bad --data / --quality-samples, before any load
    plan = Plan.load(args.plan)  # PlanFormatError names the field and version, before the model loads
    profile = resolve_profile(args.device)
    if evaluator_kind(args.evaluator).measures_here and args.device != "local" and not profile.measured:
        raise InvalidArgumentError(f"`--evaluator {args.evaluator}` measures this machine; `--device` "
                                   f"{args.device!r} is a profile on paper. Use --device local or --evaluator "
                                   "analytic.")
    loaded = load_model(args.model, device="cpu", cache_dir=args.cache_dir)
    # The plan's session knobs become variables too, so the evaluators see its KV cache and prefetch depth
    # (their values must be among the space's discretised choices, e.g. a kv_budget of none/75%/50%/25%).
    space = SearchSpace.build(loaded, profile, knobs=(*KNOBS, *plan.session))
    raise_for_problems(check_plan(loaded, plan, profile, space=space, force=args.force), what=f"plan {args.plan}")
    if args.force:  # checked as warnings above; the evaluators compare fingerprints too
        mismatch = {}
        if plan.model_fingerprint not in (None, model_fingerprint(loaded.model)):
            mismatch["model_fingerprint"] = None
        if plan.device_fingerprint not in (None, profile.fingerprint):
            mismatch["device_fingerprint"] = None
        plan = dataclasses.replace(plan, **mismatch)
    sensitivity = None
    if args.proxy and evaluator_kind(args.evaluator).cheap:
        from autosurgeon.quality.sensitivity import measure_sensitivity

        sensitivity = measure_sensitivity(loaded, hessian_samples=0, cache_dir=args.cache_dir)
    evaluator = evaluator_kind(args.evaluator).build(loaded, profile, space=space, sensitivity=sensitivity,
                                                     quality=quality, quality_samples=args.quality_samples)
    metrics = evaluator.evaluate(plan)

    if args.json:
        print(json.dumps(metrics.to_dict(), default=_json_default))
        return 0
    print(f"evaluate   {loaded.name} under {args.plan} on {profile.name} ({metrics.evaluator} evaluator)")
    for name in METRIC_FIELDS:
        value = getattr(metrics, name)
        label = metrics.labels.get(name, "-")
        print(f"{name:<13} {_fmt_value(name, value, metrics.phase):<40} [{label}]")
    report = metrics.extra.get("quality")
    if report is not None:
        ref, cand = report["reference"], report.get("candidate") or {}
        interval = report.get("loss_interval")
        print(f"quality    {cand.get('metric')} {cand.get('value', float('nan')):.4g} vs reference "
              f"{ref['value']:.4g} on {cand.get('n_samples')} samples"
              + (f"; loss 95% [{interval[0] * 100:+.3f}%, {interval[1] * 100:+.3f}%]" if interval else "")
              + "".join(f"; {k} {v:.3f}" for k, v in (cand.get("details") or {}).items() if "agreement" in k
                        and not k.endswith(("_low", "_high")))
              + (" -- REFERENCE AT CHANCE LEVEL" if ref.get("at_chance") else ""))
    print(f"method     {metrics.method}")
    return 0


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
