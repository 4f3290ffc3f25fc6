"""``autosurgeon apply``: run a trained surgery policy on a model (seen in training or not) and measure the plan.

    autosurgeon apply --policy policies/cpu --model tiny-moe --out plan.json
    autosurgeon apply --policy policies/cpu --model ./my-hf-model --preference latency=0.6,memory=0.3,energy=0.1 \\
        --memory-budget 200MiB --front 8 --evaluator runtime --out plan.json

The plan passes ``check_plan`` (the policy's action masks keep it valid; it is checked anyway) and is
measured with ``--evaluator`` (default: end to end on the runtime when ``--device`` is this machine,
the analytic model on a paper profile). ``--front K`` also runs the policy
for K evenly spread preferences and writes their front next to ``--out`` (``plan.front.json``). A policy
trained for another device class is refused unless ``--force``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from autosurgeon.cli._budget import add_memory_budget, single_budget
from autosurgeon.errors import InvalidArgumentError


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
    parser.add_argument("--evaluator", choices=("analytic", "profiled", "runtime"), default=None,
                        help="how to measure the plan (default: runtime, end to end, when --device is this machine; "
                        "analytic on a paper profile)")
    parser.add_argument("--power-cap", type=float, default=None, metavar="W",
                        help="power cap in watts: a paper profile is planned in its fastest power mode within W; on "
                        "a measured profile a plan drawing more than W on average is flagged (clocks and power "
                        "limits are never changed)")
    parser.add_argument("--force", action="store_true", help="apply a policy trained for another device class")
    parser.add_argument("--out", required=True, help="plan JSON to write")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autosurgeon.files.atomic import check_out_file

    check_out_file(getattr(args, "out", None))  # before any work: one line for '', a folder, a bad parent
    from agents.apply import apply_policy, write_front
    from agents.policy_io import read_meta
    from envs.observation import OBJECTIVES
    from envs.surgery import parse_preference

    # Cheap checks first: the policy folder, preference and budget, before any model loads.
    read_meta(args.policy)
    preference = parse_preference(args.preference) if args.preference is not None else None
    budget = single_budget(args, reference_bytes=None, meaning="the plan's GPU+CPU bytes")
    if args.front is not None and args.front < 1:
        raise InvalidArgumentError(f"`--front` must be >= 1, got {args.front}.")
    if args.power_cap is not None:
        from autosurgeon.hardware.power_cap import check_power_cap

        check_power_cap(args.power_cap, argument="--power-cap")
    result = apply_policy(args.policy, args.model, device=args.device, preference=preference, memory_budget=budget,
                          front=args.front, evaluator=args.evaluator, force=args.force, power_cap_w=args.power_cap)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result.plan.save(out)
    m, base = result.metrics, result.base
    print(f"plan written to {out} (preference {dict(zip(OBJECTIVES, result.preference.round(4).tolist()))})")
    for note in result.notes:
        print(f"note: {note}")
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
        path = out.with_suffix(".front.json")
        write_front(path, result.front, result.space, power=result.power)
        print(f"front of {len(result.front.preferences)} preferences ({result.front.evaluations} distinct plans): "
              f"hypervolume {result.front.hypervolume:.4f} -> {path}")
    return 0

