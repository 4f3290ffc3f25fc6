"""``autosurgeon apply``: run a trained surgery policy on a model (seen in training or not) and measure the plan.

    autosurgeon apply --policy policies/cpu --model tiny-moe --out plan.json
    autosurgeon apply --policy policies/cpu --model ./my-hf-model --preference latency=0.6,memory=0.3,energy=0.1 \\
        --memory-budget 200MiB --front 8 --evaluator runtime --out plan.json

The plan passes ``check_plan`` (the policy's action masks keep it valid; it is checked anyway) and is
measured with ``--evaluator`` (default: end to end on the runtime when ``--device`` is this machine,
the analytic model on a paper profile). ``--front K`` also runs the policy
for K evenly spread preferences, each at the memory budget its memory weight asks for, and writes their front
next to ``--out`` (``plan.front.json``). A policy
trained for another device class is refused unless ``--force``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autosurgeon.cli._budget import add_memory_budget, single_budget
from autosurgeon.cli._quality import add_quality_arguments, quality_settings
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.evaluate.registry import names as evaluator_names

if TYPE_CHECKING:  # annotations only
    from autosurgeon.metrics import Metrics


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "apply", help="apply a trained surgery policy to a model: plan, check, measure",
        description="Run a policy from `autosurgeon train` on MODEL and write the plan it picks.")
    parser.add_argument("--policy", required=True, help="policy folder written by `autosurgeon train --out`")
    parser.add_argument("--model", required=True, help="zoo name, Hugging Face model directory, or module:factory")
    parser.add_argument("--device", default="local", metavar="PROFILE", help="hardware profile (default: local)")
    parser.add_argument("--preference", default=None,
                        help="weights over latency,memory,energy summing to 1, e.g. latency=0.6,memory=0.3,energy=0.1 "
                        "(default: equal)")
    add_memory_budget(parser, "one size bounding the plan's GPU+CPU bytes, e.g. 200MiB (default: the unmodified "
                      "model's)", old=("--budget-memory",))
    parser.add_argument("--front", type=int, default=None, metavar="K",
                        help="also sweep K evenly spread preferences and write their front JSON next to --out")
    parser.add_argument("--front-budgets", type=int, default=1, metavar="N",
                        help="with --front: run each preference at N memory budgets evenly spread from the unmodified "
                        "model's memory to the smallest reachable (N x K policy plans, each distinct one evaluated "
                        "once; default 1: the unmodified model's memory)")
    parser.add_argument("--no-preference-budgets", action="store_true",
                        help="with --front: do not also run each preference at the memory budget its memory weight "
                        "asks for (by default a preference's plan is the one at that budget: weight 0 the unmodified "
                        "model's memory, 1 the least reachable, log-spaced between)")
    parser.add_argument("--no-budget-fill", action="store_true",
                        help="with --front: do not also move each preference's plan towards the policy's own "
                        "full-budget plan while its budget allows (origin policy+fill; agents.apply.fill_budget)")
    parser.add_argument("--evaluator", choices=evaluator_names(), default=None,
                        help="how to measure the plan (default: runtime, end to end, when --device is this machine; "
                        "analytic on a paper profile)")
    parser.add_argument("--power-cap", type=float, default=None, metavar="W",
                        help="power cap in watts: a paper profile is planned in its fastest power mode within W; on "
                        "a measured profile a plan drawing more than W on average is flagged (clocks and power "
                        "limits are never changed)")
    parser.add_argument("--force", action="store_true", help="apply a policy trained for another device class")
    parser.add_argument("--no-baselines", action="store_true",
                        help="do not evaluate the uniform plans and the unmodified model next to the policy's plan")
    parser.add_argument("--json", action="store_true",
                        help="print JSON: the plan and (with --front) the front with ids, origins, hypervolume and "
                        "the baselines' hypervolume")
    parser.add_argument("--out", required=True, help="plan JSON to write")
    add_quality_arguments(parser)  # the measured quality of the plan and the baselines, as every command
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autosurgeon.files.atomic import check_out_file

    check_out_file(getattr(args, "out", None))  # before any work: one line for '', a folder, a bad parent
    from agents.apply import apply_policy, write_front
    from agents.policy_io import read_meta
    from envs.observation import OBJECTIVES
    from envs.surgery import parse_preference

    # Cheap checks first: the policy folder, preference and budget, before any model loads.
    quality = quality_settings(args)  # a bad --data / --quality-samples: one line naming the flag
    read_meta(args.policy)
    preference = parse_preference(args.preference) if args.preference is not None else None
    budget = single_budget(args, reference_bytes=None, meaning="the plan's GPU+CPU bytes")
    if args.front is not None and args.front < 1:
        raise InvalidArgumentError(f"`--front` must be >= 1, got {args.front}.")
    from agents.apply import budget_levels

    fractions = budget_levels(args.front_budgets)  # a bad --front-budgets: one line naming it
    if args.power_cap is not None:
        from autosurgeon.hardware.power_cap import check_power_cap

        check_power_cap(args.power_cap, argument="--power-cap")
    from experiments.sweep.baselines import uniform_vectors
    from experiments.sweep.ids import plan_id

    result = apply_policy(args.policy, args.model, device=args.device, preference=preference, memory_budget=budget,
                          front=args.front, evaluator=args.evaluator, force=args.force, power_cap_w=args.power_cap,
                          baselines=None if args.no_baselines else uniform_vectors, quality=quality,
                          budget_fractions=fractions, preference_budgets=not args.no_preference_budgets,
                          budget_fill=not args.no_budget_fill)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result.plan.save(out)
    offered = None
    if result.dominated_by is not None:  # never hand over a dominated plan silently: offer the better one
        offered = out.with_suffix(".baseline.json")
        result.space.decode(result.dominated_by.vector, metadata={"proposer": f"baseline:{result.dominated_by.label}"}
                            ).save(offered)
    if args.json:
        print(json.dumps(_json(result, out, offered, plan_id), default=str))
        if result.front is not None:
            write_front(out.with_suffix(".front.json"), result.front, result.space, power=result.power,
                        plan_id=plan_id)
        return 0
    m, base = result.metrics, result.base
    print(f"plan {plan_id(result.plan)} written to {out} (preference "
          f"{dict(zip(OBJECTIVES, result.preference.round(4).tolist()))})")
    for note in result.notes:
        print(f"note: {note}")
    if offered is not None:
        print(f"offered: the dominating baseline's plan {plan_id(result.space.decode(result.dominated_by.vector))} "
              f"({result.dominated_by.label}) written to {offered}")
    print(f"  evaluator {m.evaluator}: latency {m.latency_s * 1e3:.4f} ms [{m.labels.get('latency_s')}] "
          f"(unmodified {base.latency_s * 1e3:.4f} ms)")
    print(f"  memory {m.memory_bytes} B [{m.labels.get('peak_bytes')}] (unmodified {base.memory_bytes} B"
          + (f", budget {int(result.memory_budget)} B" if result.memory_budget else "") + ")")
    if m.energy_j is not None:
        print(f"  energy {m.energy_j * 1e3:.4f} mJ [{m.labels.get('energy_j')}]"
              + (f" (unmodified {base.energy_j * 1e3:.4f} mJ)" if base.energy_j else ""))
    if result.plan.session:
        print("  session: " + ", ".join(f"{k}={v}" for k, v in result.plan.session.items()))
    if m.quality_loss is not None:
        print(f"  quality loss {m.quality_loss * 100:+.3f}% [{m.labels.get('quality_loss')}]")
    if result.power is not None:
        p = result.power
        print(f"  power cap {p['power_cap_w']:g} W: mode {p['power_mode']!r} ({p['mode_watts']:g} W); plan draws "
              f"{p['plan_power_w']:.4g} W on average ({'within' if p['within_cap'] else 'OVER'} the cap)")
    if result.front is not None:
        _print_front(result, out.with_suffix(".front.json"), plan_id)
    return 0


def _print_front(result: Any, path: Path, plan_id: Any) -> None:
    """Write the front JSON to ``path`` and print its members (ids, origins) and hypervolumes."""
    from agents.apply import write_front
    from envs.observation import OBJECTIVES

    write_front(path, result.front, result.space, power=result.power, plan_id=plan_id)
    f, extra = result.front, result.front.extra
    own = " + its own budget" if extra.get("preference_budgets") else ""
    print(f"front of {len(f.preferences)} preferences x {len(extra['budget_fractions'])} budget(s){own} "
          f"({f.evaluations} distinct policy plans evaluated): the policy's plans' hypervolume "
          f"{extra['policy_candidates_hypervolume']:.4f} (reference {extra['reference_point']}) -> {path}")
    if "baselines_hypervolume" in extra:
        dominated = sum(1 for d in extra["dominated_by_a_baseline"] if d)
        print(f"  baselines' hypervolume {extra['baselines_hypervolume']:.4f}; policy + baselines "
              f"{extra['with_baselines_hypervolume']:.4f}; {dominated} of {len(f.preferences)} policy "
              "plans dominated by a baseline")
    for m in f.members:
        print(f"  {plan_id(result.space.decode(m.vector))}  {m.origin:<24} "
              + "  ".join(f"{k} {v:.3f}" for k, v in zip(OBJECTIVES, m.normalised)))


def _json(result: Any, out: Path, offered: Path | None, plan_id: Any) -> dict[str, Any]:
    """What ``--json`` prints: the plan, its normalised objectives, the baselines and the front (ids, origins, HV)."""
    from agents.apply import HV_REFERENCE, hypervolume
    from envs.observation import OBJECTIVES
    from envs.reward import normalised

    def row(origin: str, x: Any, metrics: Metrics) -> dict[str, Any]:
        return {"id": plan_id(result.space.decode(x)), "origin": origin,
                "normalised": dict(zip(OBJECTIVES, (float(v) for v in normalised(metrics, result.base, OBJECTIVES)))),
                "metrics": metrics.summary() if hasattr(metrics, "summary") else None}

    data: dict[str, Any] = {
        "plan": {**row("policy", result.space.encode(result.plan), result.metrics), "path": str(out)},
        "notes": result.notes,
        "baselines": [row(f"baseline:{b.label}", b.vector, b.metrics) for b in result.baselines],
        "baselines_hypervolume": hypervolume([b.normalised for b in result.baselines]) if result.baselines else None,
        "offered": None if offered is None else {**row(f"baseline:{result.dominated_by.label}",
                                                       result.dominated_by.vector, result.dominated_by.metrics),
                                                 "path": str(offered)}}
    data["reference_point"] = list(HV_REFERENCE)  # the sweep's default too (autosurgeon.metrics.HV_REFERENCE)
    if result.front is not None:
        f = result.front
        data["policy_plans"] = [{**row("policy", x, m), "preference": dict(zip(OBJECTIVES, w.tolist()))}
                                for w, x, m in zip(f.preferences, f.vectors, f.metrics)]
        # The front: the non-dominated set of every plan evaluated (the policy's and the baselines'), with origins.
        data["front"] = [{**row(m.origin, m.vector, m.metrics),
                          **({"preference": dict(zip(OBJECTIVES, m.preference.tolist())),
                              "budget_fraction": m.budget_fraction} if m.preference is not None else {})}
                         for m in f.members]
        data["hypervolume"] = f.extra.get("with_baselines_hypervolume", f.extra["policy_candidates_hypervolume"])
        data["policy_hypervolume"] = f.extra["policy_candidates_hypervolume"]
        data.update({k: v for k, v in f.extra.items() if k != "reference_point"})
    return data

