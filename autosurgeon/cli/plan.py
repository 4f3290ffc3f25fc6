"""``autosurgeon plan``: the knapsack baseline — a sensitivity-aware mixed-precision plan under a memory budget.

    autosurgeon plan tiny-llama --device local --memory-budget 16% --out plan.json
    autosurgeon plan tiny-llama --device h100-80gb --max-quality-loss 0.01 --objective memory --out plan.json
    autosurgeon plan tiny-llama --device local --memory-budget 2MiB --objective latency --out plan.json

The sensitivity table (per unit and precision, ``autosurgeon.quality.sensitivity``) is measured on this machine's
CPU on first use and cached; ``--group-sizes`` adds int4 options at other group sizes (one table each).
The plan is checked (``check_plan``) against the model, the device and the budget before it is written.

Session flags (``--kv-precision``, ``--kv-budget``, ``--kv-tier``, ``--kv-window``, ``--prefetch``,
``--prefetch-depth``) write the plan's session decisions (``Plan.session``), as ``autosurgeon run`` spells
them. The knapsack counts them as ``apply_plan`` builds them (``footprint.plan_memory``: streamed experts homed
on the slower tier with their expert cache; the KV cache at ``--context`` positions), so the memory it prints
is what ``evaluate --evaluator analytic`` says and what the runtime charges.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from typing import TYPE_CHECKING, Any

from autosurgeon.cli._budget import add_memory_budget, memory_budget
from autosurgeon.cli._quality import add_quality_arguments, quality_settings
from autosurgeon.errors import InvalidArgumentError

if TYPE_CHECKING:  # annotations only
    from autosurgeon.hardware.profile import HardwareProfile
    from autosurgeon.plan import Plan
    from autosurgeon.zoo import LoadedModel

OBJECTIVES = ("auto", "quality", "memory", "latency", "energy")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plan", help="make a mixed-precision plan under a memory budget (sensitivity-aware knapsack)",
        description="Choose one precision per linear unit minimising the measured sensitivity proxy under a "
        "memory budget (or the smallest plan within a quality bound), place blocks accelerate-style, check "
        "the plan and write it as JSON.")
    parser.add_argument("model", metavar="MODEL", help="zoo name, Hugging Face model directory, or module:factory")
    parser.add_argument("--device", required=True, metavar="PROFILE",
                        help="hardware profile: local, a preset name (autosurgeon profile --list) or a profile JSON")
    add_memory_budget(parser, "the plan's memory budget, written into the plan and enforced when it runs; the "
                      "knapsack fills the device's fastest tier", old=("--budget-memory",))
    parser.add_argument("--max-quality-loss", type=float, default=None, metavar="X",
                        help="bound on the predicted relative quality loss (0.01 = 1%%)")
    parser.add_argument("--objective", choices=OBJECTIVES, default="auto",
                        help="auto: quality with a budget, else memory; latency/energy use the analytic cost model")
    parser.add_argument("--group-sizes", default="128", metavar="G,...",
                        help="int4 group sizes to offer, e.g. 32,64,128 (one sensitivity table each; default 128)")
    parser.add_argument("--precisions", default=None, metavar="P,...",
                        help="precisions to measure and offer besides each unit's own (default: bfloat16, float16, "
                        "int8, int4, int8-dynamic; those the device lacks are never offered)")
    parser.add_argument("--hessian-samples", type=int, default=0,
                        help="Hutchinson vectors for the table's Hessian traces (not used by the planner; default 0)")
    parser.add_argument("--kv-precision", choices=("float", "int8", "fp8"), default=None,
                        help="session: store the KV cache paged in this precision")
    parser.add_argument("--kv-budget", default=None, metavar="SIZE|SHARE",
                        help="session: KV cache budget, a size (64MiB) or a share of the full-context KV bytes (50%%)")
    parser.add_argument("--kv-tier", choices=("gpu", "cpu"), default=None, help="session: tier of the KV pages")
    parser.add_argument("--kv-window", type=int, default=None, metavar="N",
                        help="session: keep only the N most recent tokens (plus 4 sinks) in the KV cache")
    parser.add_argument("--prefetch", choices=("none", "markov", "lru", "gate", "hybrid"), default=None,
                        help="session: expert prefetcher of a mixture-of-experts model (none: experts resident)")
    parser.add_argument("--prefetch-depth", type=int, default=None, metavar="N",
                        help="session: streaming lookahead and expert fetches ahead, 0..4")
    parser.add_argument("--context", type=int, default=32, metavar="N",
                        help="positions the KV cache is counted at in the check (default 32)")
    parser.add_argument("--out", required=True, help="where to write the plan JSON")
    parser.add_argument("--cache-dir", default=None, help="zoo and sensitivity cache folder")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    add_quality_arguments(parser, default_samples=4)
    parser.add_argument("--no-recheck", action="store_true",
                        help="with --max-quality-loss: skip measuring the plan's quality on this machine's runtime "
                             "(the bound then rests on the proxy's estimate alone)")
    parser.set_defaults(func=run)


def parse_group_sizes(text: str) -> list[int]:
    """``"32,64,128"`` -> ``[32, 64, 128]``; each a multiple of 32 (``runtime`` int4 groups)."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            g = int(part)
        except ValueError:
            raise InvalidArgumentError(f"`--group-sizes` must be integers such as 32,64,128, got {part!r}.") from None
        if g <= 0 or g % 32:
            raise InvalidArgumentError(f"`--group-sizes` entries must be positive multiples of 32, got {g}.")
        out.append(g)
    if not out:
        raise InvalidArgumentError("`--group-sizes` is empty; give at least one, e.g. 128.")
    return sorted(set(out))


def parse_precisions(text: str | None) -> tuple[str, ...]:
    """``"int8,int4"`` -> ``("int8", "int4")``, drawn from the precisions the sensitivity table measures."""
    from autosurgeon.quality.sensitivity import DEFAULT_PRECISIONS

    if text is None:
        return DEFAULT_PRECISIONS
    out = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    bad = [p for p in out if p not in DEFAULT_PRECISIONS]
    if bad or not out:
        raise InvalidArgumentError(f"`--precisions` must be a comma list drawn from {', '.join(DEFAULT_PRECISIONS)}, "
                                   f"got {text!r}.")
    return out


def sensitivity_tables(loaded: LoadedModel, group_sizes: list[int], *, precisions: tuple[str, ...] | None = None,
                       hessian_samples: int = 0, cache_dir: str | None = None) -> list[Any]:
    """One cached table per int4 group size: ``precisions`` at the first, int4 alone at the others."""
    from autosurgeon.quality.sensitivity import DEFAULT_PRECISIONS, measure_sensitivity

    precisions = precisions or DEFAULT_PRECISIONS
    tables = []
    for k, g in enumerate(group_sizes):
        if k and "int4" not in precisions:
            break
        tables.append(measure_sensitivity(loaded, precisions=precisions if k == 0 else ("int4",), group_size=g,
                                          hessian_samples=hessian_samples if k == 0 else 0, cache_dir=cache_dir))
    return tables


# long: argument checks, the plan, and the report it prints; the report is most of it
def run(args: argparse.Namespace) -> int:
    from autosurgeon.files.atomic import check_out_file

    check_out_file(getattr(args, "out", None))  # before any work: one line for '', a folder, a bad parent
    from autosurgeon.hardware.resolve import resolve_profile
    from autosurgeon.knobs import KNOBS
    from autosurgeon.plan_check import check_plan, raise_for_problems
    from autosurgeon.planners.knapsack import PLANNER_KNOBS, plan_knapsack
    from autosurgeon.space.search_space import SearchSpace
    from autosurgeon.zoo import load_model
    from runtime.sizes import format_bytes

    if args.max_quality_loss is not None and not args.max_quality_loss >= 0:
        raise InvalidArgumentError(f"`--max-quality-loss` must be >= 0 (0.01 = 1%), got {args.max_quality_loss}.")
    if args.hessian_samples < 0:
        raise InvalidArgumentError(f"`--hessian-samples` must be >= 0, got {args.hessian_samples}.")
    if args.memory_budget is None and args.max_quality_loss is None:
        raise InvalidArgumentError("give `--memory-budget` (e.g. 25% or 2GiB), `--max-quality-loss` (e.g. 0.01), "
                                   "or both.")
    if args.context < 1:
        raise InvalidArgumentError(f"`--context` must be >= 1, got {args.context}.")
    session = session_flags(args)  # flag-named errors before the model loads
    quality = quality_settings(args)
    groups = parse_group_sizes(args.group_sizes)
    precisions = parse_precisions(args.precisions)
    budget = memory_budget(args)  # refuse a malformed size before the model loads
    profile = resolve_profile(args.device)
    loaded = load_model(args.model, device="cpu", cache_dir=args.cache_dir)
    space = SearchSpace.build(loaded, profile, knobs=PLANNER_KNOBS)
    tables = sensitivity_tables(loaded, groups, precisions=precisions, hessian_samples=args.hessian_samples,
                                cache_dir=args.cache_dir)
    result = plan_knapsack(loaded, profile, tables, budget=budget or None, max_quality_loss=args.max_quality_loss,
                           objective=args.objective, space=space, session=session, context=args.context,
                           metadata={"model": loaded.name, "device": profile.name})
    budgets = {result.tier: result.budget} if result.budget is not None else None
    full = SearchSpace.build(loaded, profile, knobs=KNOBS)
    plan = result.plan  # its session is the one the knapsack counted
    raise_for_problems(check_plan(loaded, plan, profile, space=full, budgets=budgets, kv_context=args.context))
    checked = None
    if args.max_quality_loss is not None and not args.no_recheck:
        checked = _recheck(loaded, plan, profile, quality, result.predicted_loss, args.max_quality_loss)
    path = plan.save(args.out)
    kv = None
    if session:
        from autosurgeon.cost.footprint import memory_breakdown

        kv = memory_breakdown(full, plan, context=args.context)["kv"]

    counts = result.precision_counts()
    if args.json:
        print(json.dumps({
            "model": loaded.name, "device": profile.name, "out": str(path), "objective": result.objective,
            "budget_bytes": result.budget, "budget_tier": result.tier, "precision_counts": counts,
            "tier_bytes": dict(result.tier_bytes), "weight_bytes": result.weight_bytes,
            "reference_bytes": result.reference_bytes, "predicted_quality_loss": result.predicted_loss,
            "proxy_kl_sum": result.proxy, "estimated_unit_seconds": result.seconds,
            "streamed": dict(result.streamed), "dp_exact": result.exact, "notes": list(result.notes),
            "session": dict(plan.session),
            "measured_quality_loss": None if checked is None else checked.measured,
            "measured_quality_interval": None if checked is None else checked.interval,
            "kv_bytes": None if kv is None else {"tier": kv["tier"], "peak_bytes": kv["peak_bytes"],
                                                 "context": args.context},
        }))
        return 0
    ratio = result.reference_bytes / max(result.weight_bytes, 1)
    print(f"plan       {loaded.name} on {profile.name} ({result.objective} objective) -> {path}")
    print(f"precisions {', '.join(f'{k} x{n}' for k, n in counts.items())}")
    print(f"weights    {format_bytes(result.weight_bytes)} ({result.weight_bytes} B) vs "
          f"{format_bytes(result.reference_bytes)} unmodified: {ratio:.2f}x smaller")
    tiers = ", ".join(f"{t} {format_bytes(b)}" for t, b in result.tier_bytes.items() if b)
    budget = (f" (budget {format_bytes(result.budget)} on {result.tier})" if result.budget is not None else "")
    print(f"memory     {tiers}{budget}")
    if result.streamed:
        print(f"streamed   {len(result.streamed)} block(s): "
              f"{', '.join(sorted(set(result.streamed.values())))}")
    print(f"quality    predicted loss {result.predicted_loss * 100:.3f}% (sensitivity proxy, sum of per-unit KL "
          f"{result.proxy:.3g} nats; estimated, not measured)")
    if checked is not None:
        ci = checked.interval
        print(f"quality    measured loss {checked.measured * 100:.3f}%"
              + (f" [95% {ci[0] * 100:.3f}%, {ci[1] * 100:.3f}%]" if ci else "")
              + f" on this machine's runtime ({quality.method} method): holds the bound {args.max_quality_loss:g}")
    if result.seconds is not None:
        print(f"latency    units' estimated time {result.seconds * 1e3:.3f} ms per step (analytic roofline)")
    print("solver     multiple-choice knapsack DP, "
          + ("exact" if result.exact else f"rounded bytes (optimal vs plans <= {result.bound_bytes} B)"))
    if session:
        print("session    " + ", ".join(f"{k}={v}" for k, v in session.items()))
    if kv is not None:
        print(f"kv cache   {format_bytes(kv['peak_bytes'])} on {kv['tier']} at {args.context} positions "
              f"({kv['precision']}), on top of the weights")
    for note in result.notes:
        print(f"note       {note}")
    return 0


def _recheck(loaded: LoadedModel, plan: Plan, profile: HardwareProfile, quality: Any, estimate: float,
             bound: float) -> Any:
    """Measure the plan's quality before it is handed over; refuse a plan that measures above the bound."""
    from autosurgeon.hardware.resolve import resolve_profile
    from autosurgeon.knobs import KNOBS
    from autosurgeon.quality.recheck import measure_loss_with, recheck
    from autosurgeon.space.search_space import SearchSpace

    here = profile if profile.measured else resolve_profile("local")  # quality is numerics: run it here
    # The plan's own knobs (group sizes, kernels, session) must be variables, as `evaluate` builds it.
    measure_space = SearchSpace.build(loaded, here, knobs=(*KNOBS, *plan.session))
    target = plan if here is profile else dataclasses.replace(plan, device_fingerprint=None)
    result = recheck(target, estimate=estimate, bound=bound, calibration=None,
                     measure=measure_loss_with(loaded, here, settings=quality, space=measure_space))
    if not result.admitted:
        raise InvalidArgumentError(
            f"the plan measures a quality loss of {result.measured:.4%} on this machine, above "
            f"`--max-quality-loss` {bound:g} (the proxy estimated {estimate:.4%}); lower the bound's reliance on "
            "the proxy: tighten --max-quality-loss, or give --memory-budget room.")
    return result


def session_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The session decisions the flags set, validated with flag-named errors."""
    from autosurgeon.knobs import validate_session_decision

    flags = (("kv_precision", "--kv-precision"), ("kv_budget", "--kv-budget"), ("kv_tier", "--kv-tier"),
             ("kv_window", "--kv-window"), ("prefetch", "--prefetch"), ("prefetch_depth", "--prefetch-depth"))
    out = {}
    for knob, flag in flags:
        value = getattr(args, knob)
        if value is not None:
            validate_session_decision(knob, value, where=f"`{flag}`")
            out[knob] = value
    return out
