"""check_plan: every problem of a plan for one model on one device, found before anything changes.

What is checked, in this order (each problem names the module, the knob, the value and why):

1. fingerprints: a plan made for another model or device names both fingerprints; ``force=True`` (the
   CLI's ``--force``) turns these two into warnings;
2. rule targets that name no module (``Plan.unmatched_targets``), with the closest module names;
3. an exact-FQN rule setting a knob the module does not take (a precision on a norm, a placement on a
   linear). Pattern and default rules apply a knob only where it exists, so ``default={"precision":
   "int8"}`` means "every layer that has a precision" and is not flagged on norms;
4. values: not a choice of the space, or masked for that layer on that device, including the
   conditional rules (a precision its block's execution unit lacks, a kernel that does not read the
   precision, ...), each with the mask's reason;
5. session decisions (``Plan.session``): KV knobs on a model the runtime's paged KV cache does not support
   (not a causal LM, sliding-window attention), an fp8 KV cache where the execution unit has no fp8 (or
   torch no float8 dtype), a GPU KV tier on a device without a GPU, an expert prefetcher on a dense model
   (or "gate" without routers), expert streaming with ``packed`` (whole-block) layouts; a ``kv_budget``
   below the runtime's floor (sinks and one page per layer) is a warning (it is raised to the floor);
6. warnings: an exact rule's ``group_size``/``kernel`` that has no effect under its precision, and a
   ``dla`` placement (on paper: the runtime cannot execute it);
7. memory: per tier, the plan's resident bytes (and its session's KV cache and expert cache,
   ``footprint.py``) (``footprint.plan_memory``) against the budget given, or
   else the device's capacity (GPU memory, host RAM when the profile knows it). A budget below the
   smallest footprint this space can reach on that tier says so and gives that smallest footprint; a
   reachable budget the plan exceeds names the need, the budget and the largest offender.
   The smallest footprint is found per tier by a greedy pass (each variable in order takes the valid
   choice that minimises that tier, ties broken by the total over all tiers): the footprint of a
   feasible plan, not a proof of optimality.
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from autosurgeon._logging import get_logger
from autosurgeon.budget import MemoryBudget
from autosurgeon.cost.footprint import (
    DEFAULT_KV_CONTEXT,
    TIERS,
    FootprintTracker,
    kv_budget_bytes,
    kv_token_bytes,
    memory_breakdown,
    resolve_budget,
)
from autosurgeon.errors import AutoSurgeonError, InvalidArgumentError
from autosurgeon.hardware.profile import HardwareProfile
from autosurgeon.hardware.resolve import resolve_profile
from autosurgeon.knobs import KNOBS, KV_KNOBS, SESSION_KNOBS, SESSION_UNIT, canonical_placement, parse_kv_budget
from autosurgeon.multi.devices import device_reason
from autosurgeon.multi.footprint import device_budgets, device_footprint, device_problems
from autosurgeon.plan import Plan, model_fingerprint
from autosurgeon.space.masks import FLOAT_PRECISIONS, placement_units
from autosurgeon.space.search_space import SearchSpace
from autosurgeon.space.session import build_session_record, kv_precision_reason
from runtime.sizes import format_bytes

logger = get_logger(__name__)


@dataclass(frozen=True)
class PlanProblem:
    """One problem of a plan.

    Attributes:
        fqn: the module (or rule target) concerned; "" for the plan as a whole.
        knob: the knob concerned ("fingerprint", "budget" for those checks), or None.
        value: the offending value.
        reason: what is wrong and how to fix it.
        severity: "error" or "warning" (fingerprint mismatches under ``force=True``).
    """

    fqn: str
    knob: str | None
    value: Any
    reason: str
    severity: str = "error"

    def __str__(self) -> str:
        where = self.fqn or "<plan>"
        what = f" `{self.knob}`={self.value!r}" if self.knob is not None else ""
        return f"{self.severity}: {where}{what}: {self.reason}"


class PlanCheckError(AutoSurgeonError, ValueError):
    """A plan cannot be applied as written; the message lists every problem (``.problems`` holds them)."""

    def __init__(self, problems: list[PlanProblem], *, what: str = "plan") -> None:
        self.problems = list(problems)
        errors = [p for p in problems if p.severity == "error"]
        lines = [f"{what} has {len(errors)} problem{'s' if len(errors) != 1 else ''}:"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


def raise_for_problems(problems: list[PlanProblem], *, what: str = "plan") -> None:
    """Log the warnings; raise :class:`PlanCheckError` listing every problem if any is an error."""
    for p in problems:
        if p.severity != "error":
            logger.warning("%s", p)
    if any(p.severity == "error" for p in problems):
        raise PlanCheckError(problems, what=what)


def _fmt(n: float) -> str:
    """``"1.50 GiB (1610612736 B)"``: readable, and exact for scripts and tests."""

    text = format_bytes(n)
    return text if text.endswith(" B") else f"{text} ({int(n)} B)"


def _strip(reason: str, fqn: str) -> str:
    """Drop a leading ``"<fqn>: "`` or ``"<fqn> (<kind>): "`` (the problem names the module already)."""
    if reason.startswith(fqn):
        rest = reason[len(fqn):]
        if rest.startswith(": "):
            return rest[2:]
        if rest.startswith(" (") and "): " in rest:
            return rest[rest.index("): ") + 3:]
    return reason


def parse_budgets(budgets: Mapping[str, Any] | None) -> dict[str, int]:
    """``{tier: bytes}`` from ints or strings such as ``"2GiB"`` (absolute sizes per tier only; shares and bare
    sizes need the model: ``cost.footprint.resolve_budget``); InvalidArgumentError names a bad entry."""

    if budgets is not None and not isinstance(budgets, (Mapping, MemoryBudget)):
        raise InvalidArgumentError(f"`budgets` must be a mapping of tier -> bytes, got {type(budgets).__name__}.")
    return MemoryBudget.parse(budgets, argument="budgets").resolve()


SUGGEST_FOR = 20  # unmatched rule targets that get "did you mean" suggestions
LIST_UNMATCHED = 100  # unmatched rule targets listed one per problem; the rest are counted in one


# long: every kind of problem (fingerprints, targets, masks, session, budgets) collected in one pass, in order
def check_plan(model: Any, plan: Plan, profile: HardwareProfile | str, *, space: Any | None = None,
               budgets: Mapping[str, Any] | None = None, force: bool = False,
               inputs: Mapping[str, Any] | None = None, lookahead: int = 2,
               kv_context: int = DEFAULT_KV_CONTEXT, kv_batch: int = 1) -> list[PlanProblem]:
    """Every problem of ``plan`` for ``model`` on ``profile`` (see the module docstring); [] if none.

    Args:
        model: the ``nn.Module`` (real or meta) or ``zoo.LoadedModel`` the plan is for.
        plan: the plan to check.
        profile: a ``HardwareProfile`` or anything ``hardware.resolve_profile`` accepts.
        space: the model's SearchSpace on this profile; built with every knob when None.
        budgets: a ``MemoryBudget`` (or its text, or tier -> bytes/``"2GiB"``/``"25%"``); None: the plan's own
            (``Plan.budgets``). Tiers without one are held to the device capacity.
        force: report model/device fingerprint mismatches as warnings instead of errors.
        inputs: ``model(**inputs)`` for building the space of a bare module.
        lookahead: the runtime's streaming lookahead, for staging bytes (a ``prefetch_depth`` in the plan's
            session overrides it).
        kv_context, kv_batch: the workload the plan's KV cache is counted at (``footprint.plan_memory``).
    """

    if not isinstance(plan, Plan):
        raise InvalidArgumentError(f"`plan` must be an autosurgeon.plan.Plan, got {type(plan).__name__}.")
    if not isinstance(profile, HardwareProfile):
        profile = resolve_profile(profile)
    module = model if isinstance(model, nn.Module) else getattr(model, "model", None)
    if not isinstance(module, nn.Module):
        raise InvalidArgumentError(f"`model` must be an nn.Module or a LoadedModel, got {type(model).__name__}.")
    if budgets is not None and not isinstance(budgets, (Mapping, MemoryBudget, str)):
        raise InvalidArgumentError(f"`budgets` must be a MemoryBudget or a mapping of tier -> bytes, got "
                                   f"{type(budgets).__name__}.")
    budget = MemoryBudget.parse(plan.budgets if budgets is None else budgets, argument="budgets")
    model_fp = model_fingerprint(module)
    if space is None:
        space = SearchSpace.build(model, profile, inputs=inputs, knobs=KNOBS)
    elif space.model_fingerprint != model_fp or space.device_fingerprint != profile.fingerprint:
        raise InvalidArgumentError(
            f"`space` was built for model {space.model_fingerprint} on device {space.device_fingerprint}, not for "
            f"this model ({model_fp}) on {profile.name} ({profile.fingerprint}); build it from the same model and profile.")
    limits = resolve_budget(space, budget, lookahead=lookahead)

    problems: list[PlanProblem] = []
    severity = "warning" if force else "error"
    hint = " (forced: checking it anyway)" if force else "; re-plan for it, or pass force=True (--force) to use it anyway"
    if plan.model_fingerprint is not None and plan.model_fingerprint != model_fp:
        problems.append(PlanProblem("", "fingerprint", plan.model_fingerprint,
                                    f"plan was made for model fingerprint {plan.model_fingerprint}, but "
                                    f"{type(module).__name__} has model fingerprint {model_fp}{hint}.", severity))
    if plan.device_fingerprint is not None and plan.device_fingerprint != profile.fingerprint:
        problems.append(PlanProblem("", "fingerprint", plan.device_fingerprint,
                                    f"plan was made for device fingerprint {plan.device_fingerprint}, but device "
                                    f"{profile.name!r} has device fingerprint {profile.fingerprint}{hint}.", severity))

    names = [n for n, _ in module.named_modules() if n]
    problems += _unmatched_problems(plan, names, type(module).__name__)

    known = set(names)
    for rule in plan.rules:
        if rule.is_pattern or rule.target not in known:
            continue
        for knob, value in rule.decisions.items():
            if space.variable(rule.target, knob) is None:
                problems.append(PlanProblem(rule.target, knob, value, _not_applicable(space, rule.target, knob, module)))

    x, value_problems = _encode_checked(space, plan, profile)
    problems += value_problems
    bad_values = {(p.fqn, p.knob) for p in value_problems}
    for i, reason in space.problems(x):
        v = space.variables[i]
        if (v.name, v.knob) in bad_values or v.name == SESSION_UNIT:  # session: _session_problems says why
            continue
        value = v.choices[int(x[i])]
        context = ""
        if v.mask[int(x[i])] and v.parent is not None:  # refused by a conditional rule: say which decision
            parent = space.variables[v.parent]
            context = f" (under {parent.knob} {parent.choices[int(x[v.parent])]!r} of {parent.name})"
        problems.append(PlanProblem(v.name, v.knob, value,
                                    f"`{v.knob}` {value!r} is not valid for {v.name} on device {profile.name!r}"
                                    f"{context}: {_strip(reason, v.name)}."))
    problems += _session_problems(space, plan, x, profile, module, model, kv_context=kv_context, kv_batch=kv_batch)
    problems += _notes(space, plan, x)
    if not any(p.knob in SESSION_KNOBS and p.severity == "error" for p in problems):  # else bytes are unknown
        problems += _budget_problems(space, x, profile, limits, lookahead, session=plan.session,
                                     kv_context=kv_context, kv_batch=kv_batch)
    return problems


def _unmatched_problems(plan: Plan, names: list[str], model_name: str) -> list[PlanProblem]:
    """Rule targets that name no module: the first ``LIST_UNMATCHED`` one by one, the rest counted in one."""
    unmatched = plan.unmatched_targets(names)
    out = []
    for k, target in enumerate(unmatched[:LIST_UNMATCHED]):
        # Suggestions cost a string comparison with every module name: only the first few get them, so a
        # plan for another (much larger) model is still checked in moments.
        close = difflib.get_close_matches(target.removeprefix("re:"), names, n=3) if k < SUGGEST_FOR else []
        did = f"; did you mean {', '.join(close)}?" if close else ""
        out.append(PlanProblem(target, None, None, f"rule target names no module of {model_name}{did}"))
    if len(unmatched) > LIST_UNMATCHED:  # one line for the rest: the plan is likely for another model
        rest = unmatched[LIST_UNMATCHED:]
        out.append(PlanProblem(rest[0], None, None,
                               f"and {len(rest)} more rule targets name no module of {model_name} "
                               f"({', '.join(rest[:3])}, ...): {len(unmatched)} of the plan's "
                               f"{len(plan.rules)} rules in all; is the plan for another model?"))
    return out


def _session_problems(space: SearchSpace, plan: Plan, x: np.ndarray, profile: HardwareProfile, module: nn.Module,
                      model: Any, *,
                      kv_context: int, kv_batch: int) -> list[PlanProblem]:
    """Session decisions this model or device cannot take (module docstring, item 5)."""

    session = plan.session
    if not session:
        return []
    record = space.session or build_session_record(module, task=getattr(model, "task", None))
    name = type(module).__name__
    out = []
    kv_set = [k for k in KV_KNOBS if k in session]
    if kv_set and not record.has_kv:
        for knob in kv_set:
            out.append(PlanProblem(SESSION_UNIT, knob, session[knob],
                                   f"no KV cache decisions for {name}: {record.kv_reason}; drop `{knob}` from the "
                                   "plan's session."))
    precision = session.get("kv_precision")
    if precision is not None and record.has_kv and (why := kv_precision_reason(precision, profile)) is not None:
        out.append(PlanProblem(SESSION_UNIT, "kv_precision", precision, f"{why}."))
    if session.get("kv_tier") == "gpu" and placement_units(profile).get("gpu") is None:
        out.append(PlanProblem(SESSION_UNIT, "kv_tier", "gpu",
                               f"device {profile.name!r} has no GPU for the KV pages; use kv_tier 'cpu' or drop it."))
    if "kv_budget" in session and record.has_kv:
        tb = kv_token_bytes(record.kv_heads, record.head_dim, precision or "float", record.dtype, batch=kv_batch)

        kind, amount = parse_kv_budget(session["kv_budget"])
        budget = kv_budget_bytes(session["kv_budget"], layers=record.kv_layers, token_bytes=tb, tokens=kv_context + 1)
        want = None if kind == "none" else (int(amount * record.kv_layers * (kv_context + 1) * tb)  # type: ignore[operator]
                                            if kind == "share" else int(amount))  # type: ignore[arg-type]
        if budget is not None and want is not None and want < budget - record.kv_layers:
            out.append(PlanProblem(SESSION_UNIT, "kv_budget", session["kv_budget"],
                                   f"{want} B is below what the runtime's KV cache needs at least (the 4 sinks and one "
                                   f"16-token page per layer at {kv_batch} sequence(s)); raised to {budget} B.",
                                   "warning"))
    prefetch = session.get("prefetch", "none")
    if prefetch != "none":
        if not record.moe:
            out.append(PlanProblem(SESSION_UNIT, "prefetch", prefetch,
                                   f"{name} has no mixture-of-experts modules (dense): its blocks prefetch "
                                   "sequentially, so there is no expert prefetcher to choose; use prefetch 'none' and "
                                   "set prefetch_depth (the block lookahead)."))
        elif prefetch in ("gate", "hybrid") and not record.routers:
            out.append(PlanProblem(SESSION_UNIT, "prefetch", prefetch,
                                   f"{prefetch} prefetch reads the next layer's router, and some experts module has "
                                   "none; use 'markov' or 'lru'."))
        packed = [v.name for i, v in enumerate(space.variables)
                  if v.knob == "layout" and v.kind == "block" and v.choices[int(x[i])] == "packed"]
        if record.moe and packed:
            out.append(PlanProblem(SESSION_UNIT, "prefetch", prefetch,
                                   f"expert streaming needs module-granularity streaming, but {packed[0]} is streamed "
                                   "`packed` (as one unit, experts included); use layout 'default' or prefetch 'none'."))
    return out


def _not_applicable(space: SearchSpace, fqn: str, knob: str, module: nn.Module) -> str:
    leaf = space.leaves.get(fqn)
    block = next((b for b in space.blocks if b.name == fqn), None)
    what = leaf.kind if leaf is not None else ("block" if block is not None and block.is_block else
                                               type(module.get_submodule(fqn)).__name__)
    takers = sorted({v.kind for v in space.variables if v.knob == knob})
    if knob not in space.knobs:
        return f"knob `{knob}` is not a variable of this search space (knobs: {', '.join(space.knobs)})."
    return (f"knob `{knob}` does not apply to {fqn} ({what}); it applies to {', '.join(takers) or 'no module'} "
            "units of this model.")


def _encode_checked(space: SearchSpace, plan: Plan, profile: HardwareProfile | None = None
                    ) -> tuple[np.ndarray, list[PlanProblem]]:
    """Like ``space.encode`` but collects values that are no choice instead of raising on the first."""
    x = space.default_vector()
    problems = []
    cache: dict[str, dict[str, Any]] = {}
    for i, v in enumerate(space.variables):
        if v.name == SESSION_UNIT:
            # Session values outside the space's discretised choices (a "64MiB" budget) are valid plans;
            # _session_problems checks them, the vector keeps the default.
            if plan.session.get(v.knob, v.choices[0]) in v.choices:
                x[i] = v.choices.index(plan.session.get(v.knob, v.choices[0]))
            continue
        decisions = cache.setdefault(v.name, plan.decisions_for(v.name))
        if v.knob not in decisions:
            continue
        value = decisions[v.knob]
        canonical = canonical_placement(value) if v.knob == "placement" else value
        if canonical in v.choices:
            x[i] = v.choices.index(canonical)
        else:
            device = device_reason(str(value), profile) if v.knob == "placement" and profile is not None else None
            problems.append(PlanProblem(v.name, v.knob, value,
                                        f"{value!r} is not a `{v.knob}` choice{f' ({device})' if device else ''}; "
                                        f"choices are {', '.join(map(str, v.choices))}."))
    for i, v in enumerate(space.variables):
        if v.knob in ("group_size", "kernel") and v.parent is not None:
            precision = space.variables[v.parent].choices[int(x[v.parent])]
            if (v.knob == "group_size" and precision != "int4") or (v.knob == "kernel" and precision in FLOAT_PRECISIONS):
                x[i] = 0
    return x, problems


def _notes(space: SearchSpace, plan: Plan, x: np.ndarray) -> list[PlanProblem]:
    """Warnings: exact rules whose group_size/kernel has no effect, and placements the runtime cannot run."""
    out = []
    for rule in plan.rules:
        if rule.is_pattern or ("group_size" not in rule.decisions and "kernel" not in rule.decisions):
            continue
        for knob in ("group_size", "kernel"):
            i = space.index_of(rule.target, knob)
            if i is None or knob not in rule.decisions:
                continue
            v = space.variables[i]
            value = rule.decisions[knob]
            if v.parent is None or value == v.choices[0] or value not in v.choices:
                continue
            precision = space.variables[v.parent].choices[int(x[v.parent])]
            if (knob == "group_size" and precision != "int4") or (knob == "kernel" and precision in FLOAT_PRECISIONS):
                out.append(PlanProblem(rule.target, knob, rule.decisions[knob],
                                       f"has no effect: {rule.target} is {precision} ({knob} applies to "
                                       f"{'int4' if knob == 'group_size' else 'quantized'} layers only).", "warning"))
    for i, v in enumerate(space.variables):
        if v.knob == "placement" and v.choices[int(x[i])] == "dla":
            out.append(PlanProblem(v.name, "placement", "dla",
                                   "DLA placement is on paper: the runtime cannot execute it, so only the analytic "
                                   "evaluator can score this plan.", "warning"))
    return out


def _capacities(profile: HardwareProfile) -> dict[str, tuple[int, str]]:
    """Tier -> (bytes, label) of what the device itself holds (when the profile knows it)."""
    out: dict[str, tuple[int, str]] = {}
    for unit in profile.units:
        if unit.kind == "gpu" and "gpu" not in out and unit.memory_bytes:
            out["gpu"] = (unit.memory_bytes, f"capacity of {unit.name}")
        if unit.kind == "cpu" and "cpu" not in out and unit.memory_bytes:
            out["cpu"] = (unit.memory_bytes, "host RAM")
    if "cpu" not in out and profile.cpu.memory_bytes:
        out["cpu"] = (profile.cpu.memory_bytes, "host RAM")
    return out


def smallest_footprint(space: SearchSpace, tier: str, *, lookahead: int = 2, session: Mapping[str, Any] | None = None,
                       kv_context: int = DEFAULT_KV_CONTEXT, kv_batch: int = 1) -> tuple[int, np.ndarray]:
    """(bytes on ``tier``, vector) of a small valid plan: greedy per variable, see the module docstring.

    ``session``: a plan's session decisions, held fixed (None: the space's session variables are searched too).
    """
    tracker = FootprintTracker(space, space.default_vector(), lookahead=lookahead, batch=kv_batch,
                               context=kv_context, session=session)
    for i, v in enumerate(space.variables):
        if v.knob == "fusion":
            continue
        mask, _ = space.allowed(i, tracker.x)
        best = None
        for j in np.nonzero(mask)[0]:
            tracker.set(i, int(j))  # later variables still hold index 0; each is settled when its turn comes
            tiers = tracker.tiers()
            # Ties on the tier broken by the total: staging is a max over units, so shrinking one unit
            # may not move the tier yet, but shrinking all of them does.
            key = (tiers[tier], sum(tiers.values()))
            if best is None or key < best[0]:
                best = (key, int(j))
        tracker.set(i, best[1] if best is not None else 0)
    # Every variable took a choice allowed by the ones before it, so the vector is valid.
    return tracker.tiers()[tier], tracker.x.copy()


def _budget_problems(space: SearchSpace, x: np.ndarray, profile: HardwareProfile, limits: dict[str, int],
                     lookahead: int, *,
                     session: Mapping[str, Any] | None = None, kv_context: int = DEFAULT_KV_CONTEXT,
                     kv_batch: int = 1) -> list[PlanProblem]:
    limits_all: dict[str, tuple[int, str]] = dict(_capacities(profile))
    for tier, nbytes in limits.items():
        limits_all[tier] = (nbytes, "budget")
    problems = []
    if sum(u.kind == "gpu" for u in profile.units) > 1:
        # Several GPUs: a gpu budget (else each GPU's memory) holds per device, checked device by device.
        gpu_limit = limits_all.pop("gpu", (None, ""))[0] if "gpu" in limits else None
        limits_all.pop("gpu", None)
        per_device = device_budgets(profile, per_gpu=gpu_limit)
        footprint = device_footprint(space, x, lookahead=lookahead)
        problems += [PlanProblem("", "budget", per_device[d], message)
                     for d, message in device_problems(footprint, per_device).items()]
    if not limits_all:
        return problems
    # The plan's session is what apply_plan builds (none: Hugging Face's cache, not counted), whatever
    # session variables the space has.
    fixed = dict(session or {})
    detail = memory_breakdown(space, x, lookahead=lookahead, batch=kv_batch, context=kv_context, session=fixed)
    for tier in TIERS:
        if tier not in limits_all:
            continue
        limit, label = limits_all[tier]
        need = detail["tiers"][tier]
        if need <= limit:
            continue
        floor, _ = smallest_footprint(space, tier, lookahead=lookahead, session=fixed, kv_context=kv_context,
                                      kv_batch=kv_batch)
        if floor > limit:
            problems.append(PlanProblem("", "budget", limit,
                                        f"{tier} {label} {_fmt(limit)} is below the smallest footprint "
                                        f"reachable on {tier}: {_fmt(floor)} for this model on "
                                        f"{profile.name!r}; raise the {tier} budget to at least that."))
            continue
        units = detail["by_unit"].get(tier, {})
        staging = detail["staging"].get(tier, 0)
        worst, worst_bytes = max(units.items(), key=lambda t: t[1]) if units else ("", 0)
        if staging > worst_bytes:
            worst, worst_bytes = "staging slots", staging
        problems.append(PlanProblem(worst if worst != "staging slots" else "", "budget", limit,
                                    f"tier {tier} needs {_fmt(need)} under this plan, but its {label} "
                                    f"is {_fmt(limit)}; largest offender: {worst} ({_fmt(worst_bytes)}). "
                                    f"Plans this space allows reach {_fmt(floor)} on {tier}: stream or quantize more."))
    return problems


__all__ = ["PlanCheckError", "PlanProblem", "check_plan", "parse_budgets", "raise_for_problems", "smallest_footprint"]
