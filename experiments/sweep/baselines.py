"""The deterministic baselines every sweep evaluates first and seeds its search with.

* uniform precision: every precision unit at one precision (each precision some unit allows; units that
  cannot take it keep theirs after ``space.repair``), all resident;
* accelerate-style greedy fill: float32, blocks resident in model order while a share of the unmodified
  model's memory lasts, the rest streamed;
* the sensitivity knapsack (``autosurgeon.planners.knapsack``) at a few memory budgets;
* least memory: the smallest plan, in GPU + CPU bytes (the sweep's memory objective), that the env's floor finds
  (``envs.smallest``: descents from every uniform block placement) -- the front's memory end, which searches
  otherwise reach only by luck (session 7: gpt2 on the H100, 0.090 of the unmodified memory vs NSGA-II's 0.116).

Their records carry the origin ``baseline:<label>`` and take part in the front like any other plan.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def uniform_vectors(space: Any) -> dict[str, np.ndarray]:
    """Every precision unit at one precision (where the unit allows it; repaired otherwise), all resident."""
    precision_vars = [i for i, v in enumerate(space.variables) if v.knob == "precision"]
    if not precision_vars:
        return {}
    names: list[str] = []
    for i in precision_vars:
        for c, ok in zip(space.variables[i].choices, space.variables[i].mask):
            if ok and c not in names:
                names.append(c)
    out: dict[str, np.ndarray] = {}
    seen: set[bytes] = set()
    for p in names:
        x = space.default_vector()
        for i in precision_vars:
            v = space.variables[i]
            if p in v.choices and v.mask[v.choices.index(p)]:
                x[i] = v.choices.index(p)
        x = space.repair(x)
        if x.tobytes() not in seen:
            seen.add(x.tobytes())
            out[f"uniform-{p}"] = x
    return out


def _stream_index(space: Any, i: int) -> int | None:
    """The placement choice that streams block ``i`` onto the default unit from the next tier, if any."""
    v = space.variables[i]
    exec_unit = space.default_placement.partition("<-")[0]
    for j, (c, ok) in enumerate(zip(v.choices, v.mask)):
        if ok and j > 0 and "<-" in c and c.partition("<-")[0] == exec_unit:
            return j
    return None


def greedy_fill_vectors(space: Any, shares: Sequence[float], *, lookahead: int = 2) -> dict[str, np.ndarray]:
    """accelerate-style: float32, blocks resident in model order while ``share`` x the unmodified memory lasts."""
    from autosurgeon.cost.footprint import plan_memory

    blocks = [(i, _stream_index(space, i)) for i, v in enumerate(space.variables) if v.knob == "placement"]
    blocks = [(i, j) for i, j in blocks if j is not None]
    if not blocks:
        return {}

    def memory(x: np.ndarray) -> int:
        tiers = plan_memory(space, x, lookahead=lookahead)
        return int(tiers.get("gpu", 0) + tiers.get("cpu", 0))

    full = memory(space.default_vector())
    out: dict[str, np.ndarray] = {}
    for share in shares:
        budget = share * full
        best = None
        for keep in range(len(blocks), -1, -1):  # most resident blocks first
            x = space.default_vector()
            for i, j in blocks[keep:]:
                x[i] = j
            x = space.repair(x)
            if memory(x) <= budget:
                best = x
                break
        if best is not None:
            out[f"greedy-fill-{int(round(share * 100))}%"] = best
    return out


def knapsack_vectors(evaluator: Any, budgets: Sequence[str], *, max_quality_loss: float | None = None
                     ) -> tuple[dict[str, np.ndarray], list[str]]:
    """The sensitivity knapsack's plans at ``budgets`` (needs the evaluator's sensitivity table); notes on skips."""
    from autosurgeon.errors import AutoSurgeonError
    from autosurgeon.planners.knapsack import plan_knapsack

    if evaluator.sensitivity is None:
        return {}, ["knapsack skipped: the evaluator has no sensitivity table"]
    out, notes = {}, []
    for b in budgets:
        try:
            result = plan_knapsack(evaluator.loaded, evaluator.profile, evaluator.sensitivity, budget=b,
                                   space=evaluator.space, max_quality_loss=max_quality_loss)
        except AutoSurgeonError as exc:
            notes.append(f"knapsack {b} skipped: {exc}")
            continue
        out[f"knapsack-{b}"] = evaluator.space.repair(result.vector)
    return out, notes


def least_memory_vectors(space: Any, profile: Any) -> dict[str, np.ndarray]:
    """``{"least-memory": x}``: the plan with the least GPU + CPU bytes found (``envs.smallest``), on the
    profile's execution tier; empty when it is the unmodified model (nothing to trade)."""
    from autosurgeon.cost.footprint import plan_memory
    from envs.smallest import smallest_budgeted

    tier = "gpu" if profile.default_unit().kind == "gpu" else "cpu"
    unmodified_bytes = int(sum(plan_memory(space, space.default_vector()).values()))  # sizes, should fingerprints lack
    key = (space.digest(), str(space.model_fingerprint), str(space.device_fingerprint), unmodified_bytes, tier)
    if key not in _LEAST_MEMORY:  # the descents take 26 s on a 7B shape, 83 s on a 70B one (483 / 1203 variables)
        _, x = smallest_budgeted(space, execution_tier=tier)
        _LEAST_MEMORY[key] = space.repair(np.asarray(x, dtype=np.int64))
    x = _LEAST_MEMORY[key].copy()
    return {} if np.array_equal(x, space.default_vector()) else {"least-memory": x}


# (space digest, model and device fingerprints, execution tier) -> the least-memory vector: sweeps of one space in
# one process (seeds, algorithms, benchmarks) compute it once. The digest names variables, choices and masks only,
# not the layers' sizes the bytes come from, hence the fingerprints and the unmodified model's bytes.
_LEAST_MEMORY: dict[tuple[str, str, str, int, str], np.ndarray] = {}


def baseline_vectors(evaluator: Any, *, knapsack_budgets: Sequence[str],
                     greedy_shares: Sequence[float] = (0.25, 0.5, 0.75),
                     max_quality_loss: float | None = None) -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
    """``{family: {label: vector}}`` for the deterministic baselines, and notes on what was skipped."""
    space = evaluator.space
    knap, notes = knapsack_vectors(evaluator, knapsack_budgets, max_quality_loss=max_quality_loss)
    families = {"uniform": uniform_vectors(space), "greedy-fill": greedy_fill_vectors(space, greedy_shares),
                "knapsack": knap, "least-memory": least_memory_vectors(space, evaluator.profile)}
    return {k: v for k, v in families.items() if v}, notes


__all__ = ["baseline_vectors", "greedy_fill_vectors", "knapsack_vectors", "least_memory_vectors", "uniform_vectors"]
