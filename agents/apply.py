"""Run a trained surgery policy: one plan per preference, a front from K preferences, hypervolume.

The policy acts deterministically (the most likely masked action) in a :class:`envs.surgery.SurgeryEnv`
built on the target model and device, with the preference and memory budget fixed; the finished vector
is a valid plan by construction (masks + the env's repair), and :func:`apply_policy` still runs
``check_plan`` on it before measuring it with the chosen evaluator.

Hypervolume (:func:`hypervolume`): objectives (latency, memory, energy) each divided by the unmodified
model's value under the same evaluator, against ``HV_REFERENCE`` — the project's one reference point
(``autosurgeon.metrics.HV_REFERENCE``, the sweep's default too, so ``apply --json`` and ``sweep --json`` give
comparable figures for the same model, device and objectives), computed exactly by pymoo's ``HV`` indicator.

The front (:func:`policy_front`): the policy's plans for K evenly spread preferences, each at the memory budget
its memory weight asks for (:func:`preference_budget`, an epsilon constraint: a weighted sum alone reaches only a
front's supported points) and at ``budget_fractions`` of the way between the smallest reachable memory and the
unmodified model's (1.0 only by default; more fractions are more candidates from the same policy, counted in
``evaluations``), evaluated next to
the baselines the caller gives; the returned front is the non-dominated set of all of them, each member with its
origin (``policy`` or ``baseline:<label>``), so a policy plan a baseline dominates never stands in it.
"""
from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agents.apply_baselines import dominates, dominating_baseline, evaluate_baselines
from agents.policy_io import check_device, load_policy, read_meta
from autosurgeon._logging import get_logger
from autosurgeon.cost.footprint import plan_memory
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.hardware.power_cap import mean_power_w
from autosurgeon.hardware.resolve import resolve_profile
from autosurgeon.metrics import hv_reference
from autosurgeon.plan_check import check_plan, raise_for_problems
from autosurgeon.space.search_space import SearchSpace
from envs.context import build_context
from envs.observation import OBJECTIVES
from envs.reward import normalised
from envs.surgery import SurgeryEnv, parse_preference

logger = get_logger(__name__)

HV_REFERENCE: tuple[float, ...] = hv_reference(OBJECTIVES)


def simplex_preferences(k: int, n_obj: int = len(OBJECTIVES)) -> np.ndarray:
    """``k`` preference vectors evenly spread on the simplex (deterministic).

    Candidates: the Das-Dennis lattice fine enough to hold ``k`` points; picked greedily by farthest-point
    sampling starting from the corners (pure single-objective preferences), then the centre.
    """
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidArgumentError(f"`--front` must be an integer >= 1, got {k!r}.")
    h = 1
    while True:
        pts = np.array([c for c in itertools.product(range(h + 1), repeat=n_obj) if sum(c) == h], float) / h
        if len(pts) >= max(k, n_obj + 1):
            break
        h += 1
    centre = np.full(n_obj, 1.0 / n_obj)
    chosen = [np.eye(n_obj)[i] for i in range(min(k, n_obj))]
    if k > n_obj:
        chosen.append(pts[np.argmin(np.linalg.norm(pts - centre, axis=1))])
    while len(chosen) < k:
        d = np.min(np.linalg.norm(pts[:, None, :] - np.array(chosen)[None], axis=2), axis=1)
        chosen.append(pts[int(np.argmax(d))])
    return np.array(chosen[:k])


def hypervolume(points: np.ndarray, reference: Sequence[float] = HV_REFERENCE) -> float:
    """Exact hypervolume of normalised minimisation ``points`` (n, m) against ``reference``; 0 if none dominate."""
    from pymoo.indicators.hv import HV

    pts = np.asarray(points, dtype=np.float64).reshape(-1, len(reference))
    ref = np.asarray(reference, dtype=np.float64)
    pts = pts[np.all(pts < ref, axis=1)]
    if len(pts) == 0:
        return 0.0
    return float(HV(ref_point=ref)(pts))


def run_policy(model: Any, env: Any, *, preference: np.ndarray, memory_budget: float | None = None,
               context: int = 0, budget_fraction: float = 1.0) -> np.ndarray:
    """The plan vector the policy picks (deterministic, masked) for one preference and budget (``memory_budget``
    bytes, else ``budget_fraction`` of the way from the smallest reachable memory to the unmodified model's)."""
    options: dict[str, Any] = {"model": context, "preference": preference}
    if memory_budget is not None:
        options["memory_budget"] = memory_budget
    else:
        options["budget_fraction"] = float(budget_fraction)
    obs, _ = env.reset(seed=0, options=options)
    done = False
    while not done:
        action, _ = model.predict(obs, action_masks=env.action_masks(), deterministic=True)
        obs, _, done, _, _ = env.step(action)
    # Masks hold at every step, but a later step (the budget shield lowering a precision) can leave an
    # earlier dependent choice stale (a group size that only int4 can take on that layer): the finished
    # vector goes through the space's repair so no invalid decision ever leaves here.
    space = env.contexts[context].space
    x = space.repair(env.x)
    if not np.array_equal(x, env.x):
        logger.info("apply: the space's masks changed %d decision(s) of the policy's finished plan",
                    int(np.sum(x != env.x)))
    return x


@dataclass
class FrontMember:
    """One evaluated plan of a front: origin (``policy`` / ``baseline:<label>``), vector, metrics, normalised
    objectives; for a policy plan the preference and budget fraction it was asked for."""

    origin: str
    vector: np.ndarray
    metrics: Any
    normalised: np.ndarray
    preference: np.ndarray | None = None
    budget_fraction: float | None = None


@dataclass
class FrontResult:
    """A policy's plans for several preferences, their metrics and the hypervolume of their normalised front.

    ``vectors``/``metrics``/``normalised``/``hypervolume``: the K plans at the full budget, one per preference.
    ``members``: the non-dominated set of every plan evaluated (all the policy's candidates and the baselines),
    with origins; ``extra`` holds its hypervolume and the policy's and the baselines' alone."""

    preferences: np.ndarray
    vectors: list[np.ndarray]
    metrics: list[Any]
    normalised: np.ndarray
    hypervolume: float
    evaluations: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    members: list[FrontMember] = field(default_factory=list)
    candidates: list[FrontMember] = field(default_factory=list)  # every distinct policy plan evaluated


def preference_budget(preference: np.ndarray, base_memory: float, floor: float) -> float:
    """The memory budget a preference asks for (an epsilon constraint): its memory weight is how far, in log space,
    the budget lies from the unmodified model's memory (weight 0) towards the floor (weight 1, the least memory a
    plan reaches, ``envs.smallest``). Log space because memory ratios span orders of magnitude (0.03-1 of the
    unmodified model here): equal steps of the weight are equal factors of memory."""
    w = float(np.asarray(preference, dtype=np.float64)[OBJECTIVES.index("memory")])
    if not (floor > 0 and base_memory > floor):
        return float(base_memory)
    return float(base_memory * (floor / base_memory) ** w)


def fill_budget(space: Any, units: Sequence[Any], x: np.ndarray, target: np.ndarray, budget: float, *,
                lookahead: int = 2) -> np.ndarray:
    """``x`` with whole blocks (a block's placement and its layers' decisions together; other units alone) moved
    to ``target``'s decisions while GPU + CPU bytes stay <= ``budget``.

    Moves in order of the bytes they add (least first), each repaired and kept only if the plan still fits;
    prices footprints only (no evaluation). Why: a policy that has learned to stream every block as soon as the
    budget is below its resident plan returns the floor for every such budget (session 7, Jetson seed 1: 2
    distinct plans of 48 candidates); its own unconstrained plan (``target``) says which decisions it prefers,
    and this spends the slack the budget leaves on them, so distinct budgets give distinct plans wherever the
    front has members between the floor and the resident plan. A block moves whole: a streamed block's layers
    at the target's (resident) precision would cost no GPU + CPU bytes but more bytes to stream."""
    x = space.repair(np.asarray(x, dtype=np.int64))
    target = np.asarray(target, dtype=np.int64)
    moves = []
    for k, idx in enumerate(_block_groups(units)):
        if np.array_equal(x[idx], target[idx]):
            continue
        y = x.copy()
        y[idx] = target[idx]
        moves.append((_budgeted_memory(space, space.repair(y), lookahead), k, idx))
    for _, _, idx in sorted(moves):
        y = x.copy()
        y[idx] = target[idx]
        y = space.repair(y)
        if _budgeted_memory(space, y, lookahead) <= budget:
            x = y
    return x


def _budgeted_memory(space: Any, x: np.ndarray, lookahead: int = 2) -> float:
    """GPU + CPU bytes of plan ``x`` (what the env's budget and the memory objective count)."""
    tiers = plan_memory(space, x, lookahead=lookahead)
    return float(tiers.get("gpu", 0) + tiers.get("cpu", 0))


def _block_groups(units: Sequence[Any]) -> list[list[int]]:
    """The variables of each block (a unit with a placement knob, with every unit named under it) and of each
    unit outside every block, in unit order."""
    blocks = [u.name for u in units if "placement" in u.knobs]
    groups: dict[str, list[int]] = {}
    for u in units:
        owner = max((b for b in blocks if u.name == b or u.name.startswith(b + ".")), key=len, default=u.name)
        groups.setdefault(owner, []).extend(u.variables)
    return list(groups.values())


def _non_memory_score(normalised_objectives: np.ndarray, preference: np.ndarray) -> float | None:
    """The preference's weighted sum of the objectives other than memory (the epsilon constraint's objective, the
    budget being the constraint); None when those weights are all 0 (a pure memory preference)."""
    w = np.asarray(preference, dtype=np.float64).copy()
    w[OBJECTIVES.index("memory")] = 0.0
    if not w.sum() > 0:
        return None
    return float(np.dot(w, np.asarray(normalised_objectives, dtype=np.float64)))


def policy_front(model: Any, env: Any, *, k: int = 8, context: int = 0, evaluator: Any = None,
                 memory_budget: float | None = None, budget_fractions: Sequence[float] = (1.0,),
                 baselines: Sequence[Any] = (), preference_budgets: bool = True,
                 budget_fill: bool = True) -> FrontResult:
    """Run the policy for ``k`` evenly spread preferences (each at every budget fraction; module docstring),
    evaluate each distinct plan once, and keep the non-dominated set of those and of ``baselines``
    (``agents.apply_baselines.BaselinePlan``, evaluated by the caller with the same evaluator).

    ``preference_budgets`` (default): each preference is also run at the budget its memory weight asks for
    (:func:`preference_budget`), and that plan is the preference's own (``vectors``, ``metrics``): a weighted sum
    reaches only the supported points of a front, and on a GPU where every resident plan has the same latency and
    energy it has two, so K preferences gave one or two plans (session 6); a budget per preference reaches the
    members between them. Off (or with ``memory_budget``): a preference's own plan is the one at the full budget.

    ``budget_fill`` (default, with ``preference_budgets``): a preference's budget spans from the memory of the
    policy's own plan for it at the unmodified model's budget (not the unmodified memory: a budget above the
    policy's plan cannot change it) to the floor, and the policy's plan at that budget is also
    filled towards the policy's own plan at the full budget for that preference while the budget allows
    (:func:`fill_budget`, origin ``policy+fill``); the preference's own plan is the filled one when it scores
    better on the preference's latency and energy weights (the epsilon constraint's objective), else the policy's.
    Each distinct plan is evaluated once and both stay candidates, so the front is never worse for it."""
    ctx = env.contexts[context]
    evaluator = evaluator or ctx.evaluator
    fractions = [float(f) for f in budget_fractions]
    if not fractions or not all(0.0 <= f <= 1.0 for f in fractions):
        raise InvalidArgumentError(f"`budget_fractions` must be fractions in [0, 1], got {list(budget_fractions)}.")
    prefs = simplex_preferences(k)
    base = evaluator.evaluate(ctx.space.default_vector())
    candidates: list[FrontMember] = []
    seen: dict[bytes, FrontMember] = {}

    def run(w: np.ndarray, *, frac: float | None = None, budget: float | None = None,
            x: np.ndarray | None = None, origin: str = "policy") -> FrontMember:
        if x is None:
            x = run_policy(model, env, preference=w, memory_budget=budget, context=context,
                           budget_fraction=1.0 if frac is None else frac)
        known = seen.get(x.tobytes())
        m = known.metrics if known is not None else evaluator.evaluate(x)
        if frac is None:  # the fraction of the way from the floor that ``budget`` is, for the record
            span = float(ctx.base.objective("memory")) - ctx.min_memory
            frac = 1.0 if budget is None or span <= 0 else float(np.clip((budget - ctx.min_memory) / span, 0, 1))
        member = FrontMember(origin if known is None else known.origin, x, m,
                             np.asarray(normalised(m, base, OBJECTIVES)), w, frac)
        candidates.append(member)
        seen.setdefault(x.tobytes(), member)
        return member

    own: list[FrontMember] = []
    if memory_budget is not None:
        own = [run(w, budget=memory_budget) for w in prefs]
    elif preference_budgets:
        base_mem = float(ctx.base.objective("memory"))
        for w in prefs:
            if budget_fill:
                # The budgets span the range where they bind: from the memory of the policy's own plan for this
                # preference at the unmodified model's budget (a budget above it cannot change the plan) to the
                # floor. Anchored at the unmodified memory, 3 of the 4 distinct budgets of 8 preferences lay above a
                # policy plan at 0.19 of it (gpt2, Jetson; tiny-llama 2 of 4 at 0.16), so the policy's one plan and
                # the floor were all there was to return.
                full = run_policy(model, env, preference=w, memory_budget=base_mem, context=context)
                budget = preference_budget(w, _budgeted_memory(ctx.space, full), ctx.min_memory)
            else:
                budget = preference_budget(w, base_mem, ctx.min_memory)
            raw = run(w, budget=budget)
            own.append(raw)
            if not budget_fill:
                continue
            run(w, budget=preference_budget(w, base_mem, ctx.min_memory))  # session 7's budget: a candidate too,
            # so the candidates only grow and the front is never below the one without the fill
            filled = fill_budget(ctx.space, ctx.units, raw.vector, full, budget)
            if np.array_equal(filled, raw.vector):
                continue
            fill = run(w, budget=budget, x=filled, origin="policy+fill")
            score_raw, score_fill = (_non_memory_score(m.normalised, w) for m in (raw, fill))
            if score_raw is not None and score_fill < score_raw:
                own[-1] = fill
    for frac in fractions if memory_budget is None else []:
        for w in prefs:
            member = run(w, frac=frac)
            if len(own) < len(prefs) and frac == fractions[0]:
                own.append(member)  # no budget per preference: its plan at the first fraction (1.0 by default)
    norm = np.array([c.normalised for c in own])
    result = FrontResult(preferences=prefs, vectors=[c.vector for c in own], metrics=[c.metrics for c in own],
                         normalised=norm, hypervolume=hypervolume(norm), evaluations=len(seen))
    pool = list(seen.values()) + [FrontMember(f"baseline:{b.label}", b.vector, b.metrics, np.asarray(b.normalised))
                                  for b in baselines]
    result.members = [pool[i] for i in _non_dominated([p.normalised for p in pool])]
    result.candidates = list(seen.values())
    result.extra.update(
        reference_point=list(HV_REFERENCE), budget_fractions=fractions, preference_budgets=bool(
            preference_budgets and memory_budget is None), budget_fill=bool(
            budget_fill and preference_budgets and memory_budget is None),
        preference_budget_fractions=[float(c.budget_fraction) for c in own],
        evaluations={"policy": len(seen), "baselines": len(baselines)},
        policy_candidates_hypervolume=hypervolume(np.array([p.normalised for p in seen.values()])),
        front_origins=[m.origin for m in result.members])
    if baselines:
        base_pts = np.array([b.normalised for b in baselines])
        result.extra["baselines_hypervolume"] = hypervolume(base_pts)
        result.extra["with_baselines_hypervolume"] = hypervolume(np.array([p.normalised for p in pool]))
        result.extra["dominated_by_a_baseline"] = [
            next((b.label for b in baselines if dominates(b.normalised, n)), None) for n in norm]
    return result


def _non_dominated(points: Sequence[np.ndarray]) -> list[int]:
    """Indices of the non-dominated points (minimisation); of equal points the first is kept."""
    pts = np.asarray(points, dtype=np.float64)
    keep = []
    for i in range(len(pts)):
        if not any(dominates(pts[j], pts[i]) or (j < i and np.array_equal(pts[j], pts[i])) for j in range(len(pts))
                   if j != i):
            keep.append(i)
    return keep


@dataclass
class ApplyResult:
    """What ``autosurgeon apply`` returns: the plan, its metrics, notes, and the front when asked for."""

    plan: Any
    metrics: Any
    base: Any
    preference: np.ndarray
    memory_budget: float | None
    notes: list[str]
    space: Any = None
    front: FrontResult | None = None
    power: dict[str, Any] | None = None  # the cap, the mode and the plan's mean power, with --power-cap
    baselines: list[Any] = field(default_factory=list)  # agents.apply_baselines.BaselinePlan, evaluated alike
    dominated_by: Any = None  # the BaselinePlan that dominates the policy's plan, offered instead (None: none)


def apply_policy(policy: str | os.PathLike[str], model_spec: str, *, device: Any = "local",
                 preference: Any = None, memory_budget: float | None = None, front: int | None = None,
                 evaluator: str | None = None, force: bool = False, power_cap_w: float | None = None,
                 baselines: Callable[[Any], Mapping[str, np.ndarray]] | None = None,
                 quality: Any = None, budget_fractions: Sequence[float] = (1.0,),
                 preference_budgets: bool = True, budget_fill: bool = True) -> ApplyResult:
    """Apply a saved policy to ``model_spec`` on ``device`` (module docstring).

    Args:
        policy: the folder ``autosurgeon train --out`` wrote.
        model_spec: any zoo name, Hugging Face directory or ``module:factory`` (need not be a training model).
        device: the target profile; its device class must equal the policy's unless ``force``.
        preference: weights over latency/memory/energy (mapping, sequence or "latency=0.6,..."); default equal.
        memory_budget: bytes on the memory tiers (GPU + CPU); None: the unmodified model's memory.
        front: sweep this many preferences (evenly spread) and return their front too: the non-dominated set of
            the policy's plans and the baselines, with origins (``policy_front``).
        budget_fractions: with ``front``, run each preference at each of these budget fractions (``budget_levels``;
            more candidates from the same policy, each distinct plan evaluated once: ``front.evaluations``).
        preference_budgets: with ``front``, also run each preference at the memory budget its memory weight asks
            for (``preference_budget``), which is then its own plan (``policy_front``).
        budget_fill: with ``front`` and ``preference_budgets``, also fill each preference's plan towards the policy's
            full-budget plan while its budget allows (``fill_budget``; ``policy_front``).
        evaluator: "analytic", "profiled" or "runtime" for the measurement (default: "runtime" when
            ``device`` is this machine's measured profile, else "analytic"); the policy itself acts on the
            observations of the evaluator it trained with (analytic on paper profiles).
        force: apply a policy trained for another device class.
        power_cap_w: a power cap in watts: on a paper profile the plan is chosen and evaluated in the fastest
            power mode within it; on a measured one a plan whose mean power exceeds it gets a note (clocks and
            power limits are never changed). ``result.power`` records the cap, the mode and the plan's power.
        baselines: ``space -> {label: vector}``: plans evaluated next to the policy's with the same evaluator
            (the CLI passes the uniform plans and the unmodified model); a baseline that dominates the policy's
            plan within the budget is noted and offered as ``result.dominated_by`` (``agents.apply_baselines``).
        quality: a ``QualitySettings`` (``--data``, ``--quality-samples``, ``--quality-method``) for the
            measured quality of the plan and the baselines (runtime evaluator); None: each task's default.
    """

    meta = read_meta(policy)  # clear error before anything loads
    pref = parse_preference(preference) if preference is not None else np.full(len(OBJECTIVES), 1 / len(OBJECTIVES))
    if front is not None and (not isinstance(front, int) or front < 1):
        raise InvalidArgumentError(f"`--front` must be an integer >= 1, got {front!r}.")
    if memory_budget is not None and not memory_budget > 0:
        raise InvalidArgumentError(f"`--budget-memory` must be > 0 bytes, got {memory_budget!r}.")
    profile = resolve_profile(device)
    notes = [n for n in [check_device(meta, profile, force=force)] if n]
    model, meta = load_policy(policy)
    local = profile.measured and profile.fingerprint == resolve_profile("local").fingerprint
    # The policy acts on observations from the evaluator it trained with where that can run here (profiled
    # needs this machine); the plan it returns is measured with `evaluator`: by default end to end on the
    # runtime when the target is this machine, else the analytic model of the (paper) profile.
    act_with = meta.get("evaluator", "analytic") if local else "analytic"
    measure_with = evaluator or ("runtime" if local else act_with)
    env = SurgeryEnv(models=[model_spec], device=profile, evaluator=act_with, knobs=tuple(meta["knobs"]),
                     budget_shield=bool(meta.get("budget_shield", True)), power_cap_w=power_cap_w, quality=quality)
    ctx = env.contexts[0]
    measurer = ctx.evaluator
    if measure_with != act_with:

        # env.profile: the profile in the power cap's mode on paper (the profile itself otherwise).
        mctx = build_context(model_spec, env.profile, evaluator=measure_with, knobs=tuple(meta["knobs"]),
                             quality=env.quality)
        if mctx.space.digest() != ctx.space.digest():
            raise InvalidArgumentError(f"the {measure_with} evaluator's search space of {model_spec!r} differs from "
                                       f"the {act_with} one; measure with --evaluator {act_with}.")
        measurer = mctx.evaluator
    x = run_policy(model, env, preference=pref, memory_budget=memory_budget)
    plan = ctx.space.decode(x, metadata={"proposer": "agents.apply", "policy": str(policy),
                                         "preference": dict(zip(OBJECTIVES, pref.tolist())),
                                         "memory_budget": memory_budget})
    plan = _with_valid_group_sizes(plan, ctx, env.profile, tuple(meta["knobs"]))
    budgets = None
    if memory_budget is not None:
        tier = "gpu" if profile.default_unit().kind == "gpu" else "cpu"
        budgets = {tier: int(memory_budget)}
    # The plan may now decide group sizes the policy's space has no variable for: check it in a space that has.
    decides_groups = any("group_size" in r.decisions for r in plan.rules)
    space = ctx.space if "group_size" in ctx.space.knobs or not decides_groups else None
    problems = check_plan(ctx.loaded, plan, profile, space=space, budgets=budgets)
    errors = [p for p in problems if getattr(p, "severity", "error") == "error"]
    if errors and all(p.knob == "budget" for p in errors):
        notes.append("the policy's plan exceeds the memory budget: " + "; ".join(map(str, errors[:2])))
    else:
        raise_for_problems(errors, what="the policy's plan")
    metrics = measurer.evaluate(x)
    base = measurer.evaluate(ctx.space.default_vector())
    power = None
    if env.power_cap is not None:

        cap = env.power_cap
        watts = mean_power_w(metrics)
        power = {**cap.to_dict(), "plan_power_w": watts, "within_cap": watts is not None and watts <= cap.watts}
        if not power["within_cap"]:
            notes.append(f"the policy's plan draws {watts:.4g} W on average, over the power cap of {cap.watts:g} W "
                         f"({metrics.labels.get('energy_j')} energy)")
    result = ApplyResult(plan=plan, metrics=metrics, base=base, preference=pref, memory_budget=memory_budget,
                         notes=notes, space=ctx.space, power=power)
    if baselines is not None:

        result.baselines = evaluate_baselines({"unmodified": ctx.space.default_vector(), **baselines(ctx.space)},
                                              measurer, base)
        plan_norm = normalised(metrics, base, OBJECTIVES)
        result.dominated_by = dominating_baseline(plan_norm, result.baselines, preference=pref,
                                                  memory_budget=memory_budget)
        if result.dominated_by is not None:
            b = result.dominated_by
            notes.append(f"the policy's plan is dominated by the baseline {b.label!r} (normalised latency/memory/"
                         f"energy {', '.join(f'{v:.3g}' for v in b.normalised)} vs the policy's "
                         f"{', '.join(f'{v:.3g}' for v in plan_norm)}); that plan is offered instead")
    if front:
        result.front = policy_front(model, env, k=front, memory_budget=None, evaluator=measurer,
                                    budget_fractions=budget_fractions, baselines=result.baselines,
                                    preference_budgets=preference_budgets, budget_fill=budget_fill)
    return result


def budget_levels(n: int) -> tuple[float, ...]:
    """``n`` budget fractions evenly spread from the unmodified model's memory (1.0) to the smallest reachable (0.0)."""
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise InvalidArgumentError(f"`--front-budgets` must be an integer >= 1, got {n!r}.")
    return (1.0,) if n == 1 else tuple(float(v) for v in np.linspace(1.0, 0.0, int(n)))


def _with_valid_group_sizes(plan: Any, ctx: Any, profile: Any, knobs: tuple[str, ...]) -> Any:
    """``plan`` with an explicit, valid group size on every int4 layer when the policy's space has no
    ``group_size`` knob: left implicit, the runtime's default group (128) would be taken, which layers with
    fewer input features cannot take — a space with that knob (the sweep's, the demo's) then refuses the plan.
    The plan is encoded into the space with ``group_size`` added, repaired there (masks) and decoded back."""
    if "group_size" in knobs or not any(d.get("precision") == "int4" for d in
                                        (r.get("decisions", {}) for r in plan.to_dict()["_data"]["rules"])):
        return plan

    full = SearchSpace.build(ctx.loaded, profile, knobs=(*knobs, "group_size"),
                             analysis=getattr(ctx.space, "analysis", None))
    x = full.repair(full.encode(plan))
    return full.decode(x, metadata=dict(plan.metadata))


def write_front(path: str | os.PathLike[str], front: FrontResult, space: Any,
                power: dict[str, Any] | None = None, plan_id: Callable[[Any], str] | None = None) -> Path:
    """The front as JSON: per preference its plan vector, metrics and normalised objectives (``points``), the
    non-dominated set of everything evaluated with origins (``front``; ids when ``plan_id`` is given: plan ->
    id), the hypervolumes and the reference point (and ``power``: the power cap and mode, when there was one)."""
    path = Path(path)
    rows = [{"preference": dict(zip(OBJECTIVES, w.tolist())), "vector": x.tolist(),
             "normalised": dict(zip(OBJECTIVES, n.tolist())), "metrics": m.to_dict()}
            for w, x, m, n in zip(front.preferences, front.vectors, front.metrics, front.normalised)]
    members = [{**({"id": plan_id(space.decode(m.vector))} if plan_id else {}), "origin": m.origin,
                "vector": m.vector.tolist(), "normalised": dict(zip(OBJECTIVES, m.normalised.tolist())),
                "metrics": m.metrics.to_dict(),
                **({"preference": dict(zip(OBJECTIVES, m.preference.tolist())), "budget_fraction": m.budget_fraction}
                   if m.preference is not None else {})} for m in front.members]
    path.write_text(json.dumps({"hypervolume": front.hypervolume, "reference": list(HV_REFERENCE),
                                "objectives": list(OBJECTIVES), "space": space.digest(),
                                "distinct_plans": front.evaluations, "power": power, "points": rows,
                                "front": members, **{k: v for k, v in front.extra.items() if k != "reference_point"}},
                               indent=2, default=str))
    return path


__all__ = ["HV_REFERENCE", "ApplyResult", "FrontMember", "FrontResult", "apply_policy", "budget_levels", "hypervolume",
           "fill_budget", "policy_front", "preference_budget", "run_policy", "simplex_preferences", "write_front"]
