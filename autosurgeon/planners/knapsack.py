"""The knapsack planner: sensitivity-aware mixed precision under a memory budget (the non-learned baseline).

As HAWQ-V3's ILP and NVIDIA ModelOpt's AutoQuantize do, every precision unit (linear/conv leaf, and an
embedding where the table measured it) takes ONE option — a precision, and for int4 a group size — from
the options the SearchSpace marks valid for it on the device AND the sensitivity table measured. Each
option has a byte cost (``footprint.tensor_bytes`` + the kernel's packed copy, exactly what
``footprint.plan_memory`` charges on the execution tier) and a loss (the table's per-unit divergence: KL
in nats per position with only that unit changed; the unit's own precision costs 0). The plan's
predicted loss is the SUM over units (HAWQ's additivity; ``SensitivityTable.predict_loss``); for causal
LMs it is reported as ``exp(sum KL) - 1`` (the evaluators' proxy for the perplexity ratio - 1), for
classifiers as the KL sum itself (uncalibrated: it ranks plans, it is not accuracy points).

Kernels stay ``"auto"`` (the runtime's default), except where the space has a kernel knob and auto keeps
a packed copy of the weight (CUDA int4: tinygemm): then the same precision is offered a second time with
a valid kernel that reads the codes as they are (preferring one made for that device, e.g.
``cuda-triton``), which holds about half the bytes. Its loss is the table's, measured with the default
kernel (the same codes and scales, computed by another kernel).

Solver: a multiple-choice knapsack by dynamic programming over a discretised byte axis. Byte costs are
taken relative to each unit's smallest option and divided by their greatest common divisor; the DP is
then EXACT. Only if that axis would exceed ``max_cells`` are costs rounded UP to a coarser quantum ``q``:
the plan still fits the budget, and its loss is no worse than the optimum under ``budget - n_units * q``
(the result's ``bound_bytes`` states it). One table ``f[c]`` = least loss with (discretised) bytes <= c
answers every objective:

* ``"quality"``: least predicted loss with bytes <= budget (the default when a budget is given);
* ``"memory"``: smallest bytes whose least loss meets ``max_quality_loss`` (the default without a budget);
* ``"latency"`` / ``"energy"``: least estimated seconds (the analytic cost model's per-leaf roofline time on
  the unit's execution unit, ``AnalyticCostModel.leaf_seconds``) with bytes <= budget and loss <= the bound.
  Two constraints: the loss bound is Lagrangian-relaxed (``seconds + lambda * loss``, lambda bisected to
  the smallest that meets the bound), which is exact when the bound is slack and otherwise returns a plan
  on the lower convex hull of the (seconds, loss) trade-off (it may miss a non-hull optimum). Energy uses
  the same seconds: the power model (``cost.energy_j``) is increasing in busy time, so the minimiser is the
  same plan.

Placement (accelerate-style, after precisions): blocks stay resident on the fastest tier (the profile's
default unit) in model order while the budget lasts; the rest stream from the next tier (``gpu<-cpu`` on
a GPU profile, ``cpu<-disk`` on a CPU-only one), staging slots counted (``footprint.plan_memory``). When
no precision assignment fits the budget resident, precisions are chosen without the byte constraint (the
objective and quality bound only: quantize as far as allowed, not further) and streaming makes up the
rest. A budget below the smallest footprint reachable (every unit at its smallest option, all blocks
streamed where the space allows it) raises ``InvalidArgumentError`` stating that footprint.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from autosurgeon._logging import get_logger
from autosurgeon.budget import FASTEST, FLAG, MemoryBudget
from autosurgeon.cost.base import LeafChoice
from autosurgeon.cost.footprint import (
    DEFAULT_KV_CONTEXT,
    TIERS,
    fastest_tier,
    packed_copy_bytes,
    plan_memory,
    tensor_bytes,
)
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.evaluate import AnalyticEvaluator
from autosurgeon.hardware.profile import HardwareProfile
from autosurgeon.hardware.resolve import resolve_profile
from autosurgeon.plan import Plan, model_fingerprint
from autosurgeon.planners.knapsack_dp import _Axis, _axis, _solve
from autosurgeon.planners.knapsack_memory import Memory as _Memory
from autosurgeon.planners.knapsack_memory import assign as _assign
from autosurgeon.planners.knapsack_memory import smallest_footprint
from autosurgeon.planners.knapsack_memory import stream_choice as _stream_choice
from autosurgeon.space.search_space import SearchSpace
from runtime.sizes import format_bytes

logger = get_logger(__name__)

OBJECTIVES = ("auto", "quality", "memory", "latency", "energy")
PLANNER_KNOBS = ("precision", "group_size", "kernel", "placement")
DEFAULT_MAX_CELLS = 1 << 18


@dataclass(frozen=True)
class UnitOption:
    """One choice of one unit: precision (+ int4 group size), its bytes on the execution tier, its loss."""

    precision: str
    group_size: int
    nbytes: int
    loss: float
    seconds: float = 0.0
    kernel: str = "auto"


@dataclass(frozen=True)
class KnapsackResult:
    """What :func:`plan_knapsack` chose, and why.

    Attributes:
        plan: the plan (exact-FQN rules for every decision that differs from the unmodified model).
        vector: the plan in the planner's space.
        decisions: ``{unit: (precision, group_size, kernel)}``.
        objective: the objective solved ("quality", "memory", "latency", "energy").
        tier: the fastest tier the budget applies to ("gpu" or "cpu").
        budget: the budget in bytes (None: none).
        tier_bytes: ``footprint.plan_memory`` of the plan per tier.
        weight_bytes: bytes of all weights under the plan wherever they live (sum over tiers, kernels' packed
            copies of resident weights included, streaming staging slots excluded).
        reference_bytes: the unmodified model's weight bytes (all tensors, resident).
        proxy: the summed per-unit divergence (nats).
        predicted_loss: the relative quality loss the proxy predicts (module docstring).
        seconds: estimated seconds of the units (latency/energy objectives), else None.
        streamed: blocks that stream, and from where.
        exact: the DP ran on exact byte costs (False: rounded, see ``bound_bytes``).
        bound_bytes: optimality holds against every plan of at most this many bytes.
        notes: decisions worth telling a person (budget not met resident, unmeasured options, ...).
    """

    plan: Plan
    vector: np.ndarray
    decisions: Mapping[str, tuple[str, int, str]]
    objective: str
    tier: str
    budget: int | None
    tier_bytes: Mapping[str, int]
    weight_bytes: int
    reference_bytes: int
    proxy: float
    predicted_loss: float
    seconds: float | None
    streamed: Mapping[str, str]
    exact: bool
    bound_bytes: int | None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def precision_counts(self) -> dict[str, int]:
        """``{"int4/g64": 10, "int8": 3, "int4/g128@cuda-triton": 2, ...}`` over the units."""
        out: dict[str, int] = {}
        for p, g, k in self.decisions.values():
            key = (f"{p}/g{g}" if p == "int4" else p) + (f"@{k}" if k != "auto" else "")
            out[key] = out.get(key, 0) + 1
        return dict(sorted(out.items(), key=lambda t: -t[1]))


# ---------------------------------------------------------------------------------------------- budgets
def parse_budget(text: Any, reference_bytes: int, *, what: str = FLAG, tier: str | None = None) -> int:
    """Bytes of a one-tier memory budget (``"2GiB"``, ``1048576``, ``"25%"`` of ``reference_bytes``, or
    ``"gpu=2GiB"`` when ``tier`` is gpu): the planner budgets the fastest tier only (``autosurgeon.budget``)."""
    budget = MemoryBudget.parse(text, argument=what)
    limits = budget.resolve(reference_bytes=reference_bytes, fastest=tier or FASTEST)
    if len(limits) != 1 or (tier is not None and tier not in limits):
        raise InvalidArgumentError(f"`{what}` {text!r}: the knapsack planner budgets one tier, the execution device's "
                                   f"fastest ({tier or 'gpu or cpu'}); give one size or share (e.g. 25% or 2GiB).")
    return next(iter(limits.values()))


# ---------------------------------------------------------------------------------------------- options
def _as_tables(sensitivity: Any) -> list[Any]:
    tables = list(sensitivity) if isinstance(sensitivity, (list, tuple)) else [sensitivity]
    if not tables or any(not hasattr(t, "divergence") for t in tables):
        raise InvalidArgumentError("`sensitivity` must be a SensitivityTable (autosurgeon.quality.sensitivity."
                                   "measure_sensitivity) or a list of them measured at different int4 group sizes.")
    return tables


def _table_group(table: Any) -> int:
    return int(dict(table.settings).get("group_size", 128))


def unit_options(space: SearchSpace, sensitivity: Any, *, exec_kind: str | None = None) -> dict[str, list[UnitOption]]:
    """Every precision unit's options: valid in ``space`` on its execution unit AND scored by a table.

    Index 0 of each list is the unit's own precision (loss 0). int4 is offered at each group size that a
    table measured it at and the space allows for that layer. Options no table measured are left out.
    """
    tables = _as_tables(sensitivity)
    x0 = space.default_vector()
    kind = exec_kind or space.default_placement.partition("<-")[0]
    out: dict[str, list[UnitOption]] = {}
    for i, v in enumerate(space.variables):
        if v.knob != "precision":
            continue
        leaf = space.leaves[v.name]
        mask, _ = space.allowed(i, x0)
        gi = space.index_of(v.name, "group_size")
        groups = ([int(g) for g, ok in zip(space.variables[gi].choices, space.variables[gi].mask) if ok]
                  if gi is not None else [128])
        options = []
        for j, precision in enumerate(v.choices):
            if not mask[j]:
                continue
            if j == 0:
                options.append(UnitOption(precision, 128, _bytes(leaf, precision, 128, kind), 0.0))
                continue
            for table in tables:
                group = _table_group(table) if precision == "int4" else 128
                if precision == "int4" and group not in groups:
                    continue
                loss = table.divergence.get((v.name, precision))
                if loss is None or any(o.precision == precision and o.group_size == group for o in options):
                    continue
                options.append(UnitOption(precision, group, _bytes(leaf, precision, group, kind), float(loss)))
                kernel = _copy_free_kernel(space, v.name, leaf, precision, group, kind)
                if kernel is not None:
                    options.append(UnitOption(precision, group, _bytes(leaf, precision, group, kind, kernel),
                                              float(loss), kernel=kernel))
        out[v.name] = options
    return out


def _bytes(leaf: Any, precision: str, group: int, exec_kind: str, kernel: str = "auto") -> int:
    """Bytes the leaf holds resident on its execution tier (as ``footprint.plan_memory`` charges them)."""
    parts = tensor_bytes(leaf.weight_numel, leaf.out_features, precision, group, bias=leaf.bias)
    return (sum(parts) + sum(leaf.other_sizes) + packed_copy_bytes(
        leaf.weight_numel, leaf.out_features, precision, group, kernel=kernel, exec_kind=exec_kind))


def _copy_free_kernel(space: SearchSpace, name: str, leaf: Any, precision: str, group: int,
                      exec_kind: str) -> str | None:
    """A valid kernel keeping no packed copy, where ``"auto"`` keeps one (module docstring); else None."""
    ki = space.index_of(name, "kernel")
    if ki is None or not packed_copy_bytes(leaf.weight_numel, leaf.out_features, precision, group,
                                           exec_kind=exec_kind):
        return None
    kv = space.variables[ki]
    device = "cuda" if exec_kind == "gpu" else "cpu"
    valid = [k for k in space.kernel_table.get(exec_kind, {}).get(precision, ())
             if k != "auto" and k in kv.choices and kv.mask[kv.choices.index(k)]
             and not packed_copy_bytes(leaf.weight_numel, leaf.out_features, precision, group, kernel=k,
                                       exec_kind=exec_kind)]
    return min(valid, key=lambda k: (not k.startswith(device), valid.index(k))) if valid else None


# ---------------------------------------------------------------------------------------------- DP
def solve(options: Sequence[Sequence[UnitOption]], capacity: int | None, *, objective: str = "quality",
          bound: float | None = None, max_cells: int = DEFAULT_MAX_CELLS) -> list[int] | None:
    """The multiple-choice knapsack on plain options: one option index per unit, or None if infeasible.

    ``capacity``: bytes the chosen options may total (None: unbounded); ``objective`` "quality" (least
    summed loss), "memory" (least bytes with summed loss <= ``bound``) or "latency" (least summed seconds
    with loss <= ``bound``, Lagrangian; module docstring); ``bound`` in the options' loss units.
    """
    if not options or any(not row for row in options):
        raise InvalidArgumentError("`options` must give every unit at least one option.")
    if objective not in ("quality", "memory", "latency", "energy"):
        raise InvalidArgumentError(f"`objective` must be quality, memory, latency or energy, got {objective!r}.")
    if objective == "memory" and bound is None:
        raise InvalidArgumentError("the memory objective needs `bound` (the largest summed loss allowed).")
    base = sum(min(o.nbytes for o in row) for row in options)
    if capacity is not None and capacity < base:
        return None
    span = sum(max(o.nbytes for o in row) - min(o.nbytes for o in row) for row in options)
    axis = _axis(options, max(span, 1), max_cells)
    full = int(sum(int(c.max()) for c in axis.cells))
    cap = full if capacity is None else min(full, (capacity - base) // axis.quantum)
    losses = [np.array([o.loss for o in row]) for row in options]
    return _pick(objective, [list(r) for r in options], losses, axis, cap, bound)


# ---------------------------------------------------------------------------------------------- planner
# long: one pass from checked options through the DP to placement; each step feeds the next and is named inline
def plan_knapsack(model: Any, profile: HardwareProfile | str, sensitivity: Any, *, budget: int | str | None = None,
                  max_quality_loss: float | None = None, objective: str = "auto", space: SearchSpace | None = None,
                  inputs: Mapping[str, Any] | None = None, task: str | None = None, lookahead: int = 2,
                  max_cells: int = DEFAULT_MAX_CELLS, metadata: Mapping[str, Any] | None = None,
                  session: Mapping[str, Any] | None = None, context: int = DEFAULT_KV_CONTEXT) -> KnapsackResult:
    """The knapsack plan of ``model`` on ``profile`` (module docstring: objectives, solver, placement).

    Args:
        model: a zoo ``LoadedModel`` (needed for the latency/energy objectives) or an ``nn.Module``.
        profile: a ``HardwareProfile`` or anything ``hardware.resolve_profile`` accepts.
        sensitivity: a ``SensitivityTable``, or a list of them measured at different int4 group sizes.
        budget: bytes on the fastest tier (int, ``"2GiB"``, or ``"25%"`` of the unmodified weight bytes).
        max_quality_loss: bound on the predicted relative loss (0.01 = 1 %).
        objective: "auto" ("quality" with a budget, else "memory"), "quality", "memory", "latency", "energy".
        space: a SearchSpace of the model on ``profile`` with precision (and group_size, placement) knobs.
        inputs: ``model(**inputs)`` to build the space for a bare module.
        task: "causal-lm" or "image-classification" (how the proxy maps to a loss); default from the model/table.
        lookahead: the runtime's streaming lookahead (staging slots in the footprint).
        max_cells: largest DP byte axis before costs are rounded (module docstring).
        metadata: extra provenance for the plan.
        session: the plan's session decisions (``Plan.session``: KV cache, streamed experts, prefetch depth),
            counted in every footprint the planner compares with the budget, as ``apply_plan`` builds them
            (streamed experts leave the blocks; the KV cache at ``context`` positions comes on top).
        context: positions the KV cache is counted at (``footprint.plan_memory``).
    """

    if objective not in OBJECTIVES:
        raise InvalidArgumentError(f"`objective` must be one of {', '.join(OBJECTIVES)}, got {objective!r}.")
    if max_quality_loss is not None and not (max_quality_loss >= 0 and math.isfinite(max_quality_loss)):
        raise InvalidArgumentError(f"`max_quality_loss` must be a finite number >= 0 (0.01 = 1 %), "
                                   f"got {max_quality_loss!r}.")
    tables = _as_tables(sensitivity)
    if not isinstance(profile, HardwareProfile):
        profile = resolve_profile(profile)
    if space is None:
        space = SearchSpace.build(model, profile, inputs=inputs, knobs=PLANNER_KNOBS)
    elif space.device_fingerprint != profile.fingerprint or space.model_fingerprint != model_fingerprint(
            model if isinstance(model, nn.Module) else model.model):
        raise InvalidArgumentError(f"`space` was built for model {space.model_fingerprint} on device "
                                   f"{space.device_fingerprint}, not for this model on {profile.name} "
                                   f"({profile.fingerprint}); build it from the model and profile you plan for.")
    if "precision" not in space.knobs:
        raise InvalidArgumentError(f"`space` has no precision variables (knobs {list(space.knobs)}); build it with "
                                   f"knobs={PLANNER_KNOBS}.")
    x0 = space.default_vector()
    fast = fastest_tier(space)
    session = dict(session or {})
    memory = _Memory(space, lookahead, session, context)
    # Shares of a budget are of the unmodified model (no session), as every command's --memory-budget is.
    reference_bytes = sum(plan_memory(space, x0, lookahead=lookahead).values())
    reference = memory.tiers(x0)
    written = MemoryBudget()
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, (int, float, str, MemoryBudget)):
            raise InvalidArgumentError(f"`budget` must be bytes, a size string or a percentage, got {budget!r}.")
        written = MemoryBudget.parse(budget, argument="budget")
        budget = parse_budget(written, reference_bytes, what="budget", tier=fast)
    if objective == "auto":
        objective = "quality" if budget is not None else "memory"
    if objective == "memory" and max_quality_loss is None:
        raise InvalidArgumentError("the memory objective needs `max_quality_loss` (--max-quality-loss), e.g. 0.01 "
                                   "for 1 %: the smallest plan without a quality bound quantizes everything.")
    task = task or getattr(model, "task", None) or (
        "causal-lm" if all(t.metric == "kl_next_token" for t in tables) else "image-classification")
    bound = None if max_quality_loss is None else (
        math.log1p(max_quality_loss) if task == "causal-lm" else max_quality_loss)

    options = unit_options(space, tables)
    names = list(options)
    opts = [options[n] for n in names]
    unmeasured = [n for n, row in zip(names, opts) if len(row) == 1]
    notes: list[str] = []
    if unmeasured:
        notes.append(f"{len(unmeasured)} unit(s) keep their own precision (no other valid option measured): "
                     f"{', '.join(unmeasured[:4])}{' ...' if len(unmeasured) > 4 else ''}")
    losses = [np.array([o.loss for o in row]) for row in opts]
    seconds = None
    if objective in ("latency", "energy"):
        seconds = _unit_seconds(model, profile, space, names, opts)
        opts = [[UnitOption(o.precision, o.group_size, o.nbytes, o.loss, s, o.kernel) for o, s in zip(row, srow)]
                for row, srow in zip(opts, seconds)]
    own = sum(row[0].nbytes for row in opts)
    constant = reference[fast] - own  # what is not a precision unit (norms, session holdings, ...), as placed
    span = sum(max(o.nbytes for o in row) - min(o.nbytes for o in row) for row in opts)
    axis = _axis(opts, max(span, 1), max_cells)
    full = int(sum(int(c.max()) for c in axis.cells))

    smallest_resident = constant + axis.base
    movable = any(_stream_choice(space, b.name) for b in space.blocks if b.is_block)
    picks, fell_back = None, False
    if budget is None:
        picks = _pick(objective, opts, losses, axis, full, bound)
    elif budget >= smallest_resident:
        cap = min(full, (budget - smallest_resident) // axis.quantum)
        picks = _pick(objective, opts, losses, axis, cap, bound)
        if picks is None and not movable:
            best = _solve(losses, list(axis.cells), cap)[0][cap]
            raise InvalidArgumentError(
                f"no plan within the budget meets `max_quality_loss` {max_quality_loss}: the least predicted loss "
                f"there is {_relative(best, task):.4g}; raise the budget or the quality bound.")
        if picks is None:
            notes.append(f"the quality bound cannot be met within {budget} B resident on {fast}; blocks stream")
    else:
        notes.append(f"no precision assignment fits {budget} B resident on {fast} (smallest: "
                     f"{smallest_resident} B); blocks stream")
    if picks is None:
        fell_back = True
        # Precisions without the byte constraint (quantize as far as the bound allows, not further);
        # placement makes up the rest by streaming, or says the budget is out of reach.
        fallback = "memory" if objective == "quality" and bound is not None else objective
        picks = _pick(fallback, opts, losses, axis, full, bound)
        assert picks is not None  # internal invariant: every unit's own precision (loss 0) meets any bound
    x = _assign(space, x0, names, opts, picks)
    try:
        x, streamed = _place(space, x, fast, budget, memory, opts, profile)
    except InvalidArgumentError:
        if not fell_back:
            raise
        # The streamed blocks' staging slots did not fit with those precisions: retry with every unit at
        # its smallest option (ties: the smaller loss); _place raises with the floor if even that fails.
        picks = [min(range(len(row)), key=lambda j, row=row: (row[j].nbytes, row[j].loss)) for row in opts]
        x, streamed = _place(space, _assign(space, x0, names, opts, picks), fast, budget, memory, opts, profile)
        notes.append("streaming fits only with every unit at its smallest option")
    decisions = {name: (row[j].precision, row[j].group_size, row[j].kernel)
                 for name, row, j in zip(names, opts, picks)}
    if streamed:
        notes.append(f"{len(streamed)} block(s) stream to fit the {fast} budget")
    detail = memory.breakdown(x)
    tiers = detail["tiers"]
    proxy = float(sum(row[j].loss for row, j in zip(opts, picks)))
    total_s = float(sum(row[j].seconds for row, j in zip(opts, picks))) if seconds is not None else None
    bound_bytes = None if axis.exact else (budget - len(names) * axis.quantum if budget is not None else None)
    session_bytes = sum(detail["by_unit"].get(t, {}).get(k, 0) for t in TIERS for k in ("kv_cache", "expert_cache"))
    weight = sum(tiers.values()) - sum(detail["staging"].values()) - session_bytes
    meta = {"proposer": "knapsack", "objective": objective, "budget_bytes": budget, "budget_tier": fast,
            "max_quality_loss": max_quality_loss, "predicted_quality_loss": _relative(proxy, task),
            "proxy_kl_sum": proxy, "dp_exact": axis.exact, "dp_quantum_bytes": axis.quantum,
            "sensitivity": [t.key for t in tables], **dict(metadata or {})}
    # run under the budget it was made for, with the session it was counted with
    plan = dataclasses.replace(_sparse_plan(space, x, meta), budgets=written, session=session)
    result = KnapsackResult(plan=plan, vector=x, decisions=decisions, objective=objective, tier=fast, budget=budget,
                            tier_bytes=tiers, weight_bytes=weight, reference_bytes=reference_bytes, proxy=proxy,
                            predicted_loss=_relative(proxy, task), seconds=total_s, streamed=streamed,
                            exact=axis.exact, bound_bytes=bound_bytes, notes=tuple(notes))
    logger.info("knapsack (%s): %s, %d B on %s, predicted loss %.4g", objective, result.precision_counts(),
                tiers[fast], fast, result.predicted_loss)
    return result


def _sparse_plan(space: SearchSpace, x: np.ndarray, metadata: Mapping[str, Any]) -> Plan:
    """The plan of ``x`` with only the decisions that change the model (index != 0), fingerprints filled.

    ``space.encode`` of it gives ``x`` back (unset variables encode as index 0), and leaving the defaults
    out keeps a precision-only plan valid on another device of the same model (``--force``).
    """
    decisions: dict[str, dict[str, Any]] = {}
    for i, v in enumerate(space.variables):
        if int(x[i]) != 0:
            decisions.setdefault(v.name, {})[v.knob] = v.choices[int(x[i])]
    plan = Plan.from_decisions(decisions, model_fingerprint=space.model_fingerprint,
                               device_fingerprint=space.device_fingerprint,
                               metadata={"space": space.digest(), **dict(metadata)})
    assert np.array_equal(space.encode(plan), x)  # internal invariant: the plan says exactly x
    return plan


def _relative(proxy: float, task: str) -> float:
    return math.expm1(proxy) if task == "causal-lm" else proxy


def _pick(objective: str, opts: list[list[UnitOption]], losses: list[np.ndarray], axis: _Axis, cap: int,
          bound: float | None) -> list[int] | None:
    """Option index per unit for the objective, or None when the quality bound cannot be met."""
    cells = list(axis.cells)
    if objective == "quality":
        f, picks = _solve(losses, cells, cap)
        return picks if bound is None or f[cap] <= bound + 1e-15 else None
    if objective == "memory":
        f, _ = _solve(losses, cells, cap)
        ok = np.nonzero(f <= bound + 1e-15)[0]
        if ok.size == 0:
            return None
        c = int(ok[0])
        return _solve(losses, cells, c)[1]
    secs = [np.array([o.seconds for o in row]) for row in opts]

    def loss_of(picks: list[int]) -> float:
        return float(sum(row[j] for row, j in zip(losses, picks)))

    picks = _solve(secs, cells, cap)[1]
    if bound is None or loss_of(picks) <= bound + 1e-15:
        return picks
    if _solve(losses, cells, cap)[0][cap] > bound + 1e-15:
        return None
    scale = max(float(sum(s.max() for s in secs)), 1e-30) / max(bound, 1e-12)
    lo, hi = 0.0, scale
    while loss_of(_solve([s + hi * l for s, l in zip(secs, losses)], cells, cap)[1]) > bound + 1e-15:
        lo, hi = hi, hi * 4
    for _ in range(40):
        mid = (lo + hi) / 2
        if loss_of(_solve([s + mid * l for s, l in zip(secs, losses)], cells, cap)[1]) <= bound + 1e-15:
            hi = mid
        else:
            lo = mid
    return _solve([s + hi * l for s, l in zip(secs, losses)], cells, cap)[1]


def _unit_seconds(model: Any, profile: HardwareProfile, space: SearchSpace, names: list[str],
                  opts: list[list[UnitOption]]) -> list[list[float]]:
    """Analytic roofline seconds of each unit option on the default execution unit (one workload step)."""

    if isinstance(model, nn.Module) or not hasattr(model, "example_inputs"):
        raise InvalidArgumentError("the latency and energy objectives need a zoo LoadedModel (autosurgeon.zoo."
                                   "load_model) for the analytic cost model's workload.")
    evaluator = AnalyticEvaluator(model, profile, space=space)
    cost = evaluator.models[evaluator.workload.phase]
    kind = space.default_placement.partition("<-")[0]
    return [[cost.leaf_seconds(LeafChoice(space.leaves[n], o.precision, o.group_size, o.kernel, True), kind)[0]
             for o in row] for n, row in zip(names, opts)]


def _place(space: SearchSpace, x: np.ndarray, tier: str, budget: int | None, memory: _Memory,
           opts: list[list[UnitOption]],
           profile: HardwareProfile) -> tuple[np.ndarray, dict[str, str]]:
    """Keep blocks resident in model order while the budget lasts; stream the rest (module docstring)."""
    if budget is None or memory.tiers(x)[tier] <= budget:
        return x, {}
    movable = [(b.name, c) for b in space.blocks if b.is_block and (c := _stream_choice(space, b.name))]
    for keep in range(len(movable) - 1, -1, -1):
        y = x.copy()
        for name, choice in movable[keep:]:
            i = space.index_of(name, "placement")
            y[i] = space.variables[i].index(choice)
        if memory.tiers(y)[tier] <= budget:
            return y, dict(movable[keep:])
    floor = smallest_footprint(space, opts, tier, lookahead=memory.lookahead, session=memory.session,
                               context=memory.context)
    raise InvalidArgumentError(
        f"`budget` {budget} B ({_fmt(budget)}) on the {tier} tier is below the smallest footprint this model can "
        f"reach on {profile.name!r}: {floor} B ({_fmt(floor)}) with every unit at its smallest option"
        f"{' and every block streamed' if movable else ''}; raise the budget to at least that.")


def _fmt(n: int) -> str:

    return format_bytes(n)


__all__ = ["OBJECTIVES", "PLANNER_KNOBS", "KnapsackResult", "UnitOption", "parse_budget", "plan_knapsack",
           "smallest_footprint", "solve", "unit_options"]
