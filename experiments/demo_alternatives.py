"""The plans a user would make by hand at the demo's budget, to race the search's pick against.

* ``uniform int8`` / ``uniform int4``: every precision unit at that precision (``sweep.baselines.uniform_vectors``:
  where a unit cannot take it, the space's repair keeps its own), then placed accelerate-style: blocks resident in
  model order while the budget lasts, the rest streamed from the next tier (``cpu<-disk`` on a CPU,
  ``gpu<-cpu`` on a GPU);
* ``knapsack``: the sensitivity knapsack at the same budget (the sweep's own baseline record, reused).

A row that cannot be made says why (``Alternative.skipped``) rather than disappearing.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

UNIFORM = ("int8", "int4")


@dataclass
class Alternative:
    """A same-budget plan (or why there is none)."""

    label: str
    plan: Any = None
    estimated_bytes: int | None = None
    skipped: str | None = None


def _stream_choice(space: Any, i: int) -> int | None:
    """The placement index that streams block variable ``i`` onto its execution unit from a slower tier."""
    v = space.variables[i]
    unit = space.default_placement.partition("<-")[0]
    for candidate in (f"{unit}<-cpu", f"{unit}<-disk"):
        if candidate in v.choices and v.mask[v.choices.index(candidate)] and candidate != space.default_placement:
            return v.choices.index(candidate)
    return None


def fill_within(space: Any, x: np.ndarray, budget: int, tiers: Sequence[str], *, lookahead: int = 2
                ) -> np.ndarray | None:
    """``x`` with the fewest trailing blocks streamed so that its bytes on ``tiers`` fit ``budget``; None if none."""
    from autosurgeon.cost.footprint import plan_memory

    def used(y: np.ndarray) -> int:
        mem = plan_memory(space, y, lookahead=lookahead)
        return sum(int(mem.get(t, 0)) for t in tiers)

    if used(x) <= budget:
        return x
    blocks = [(i, j) for i, v in enumerate(space.variables) if v.knob == "placement"
              and (j := _stream_choice(space, i)) is not None]
    for keep in range(len(blocks) - 1, -1, -1):
        y = x.copy()
        for i, j in blocks[keep:]:
            y[i] = j
        y = space.repair(y)
        if used(y) <= budget:
            return y
    return None


def uniform_at_budget(space: Any, budget: int, tiers: Sequence[str], *, lookahead: int = 2) -> list[Alternative]:
    """``uniform int8`` and ``uniform int4`` placed within ``budget`` bytes on ``tiers``."""
    from autosurgeon.cost.footprint import plan_memory
    from experiments.sweep.baselines import uniform_vectors

    vectors = uniform_vectors(space)
    out = []
    for precision in UNIFORM:
        label = f"uniform {precision}"
        x = vectors.get(f"uniform-{precision}")
        if x is None:
            out.append(Alternative(label, skipped=f"no unit of this model can take {precision} on this device"))
            continue
        y = fill_within(space, x, budget, tiers, lookahead=lookahead)
        if y is None:
            out.append(Alternative(label, skipped=f"does not fit {budget} B even with every block streamed"))
            continue
        mem = plan_memory(space, y, lookahead=lookahead)
        plan = space.decode(y, metadata={"proposer": f"demo:uniform-{precision}-at-budget"})
        out.append(Alternative(label, plan=plan, estimated_bytes=sum(int(mem.get(t, 0)) for t in tiers)))
    return out


def knapsack_from_sweep(result: Any) -> Alternative:
    """The sweep's knapsack baseline at the demo's budget (it runs in every demo sweep)."""
    from autosurgeon.plan import Plan

    for family, records in (result.baselines or {}).items():
        for record in records:
            if str(record.get("label", family)).startswith("knapsack") and record.get("plan"):
                return Alternative("knapsack", plan=Plan.from_dict(record["plan"]))
    notes = [n for n in (result.summary.get("notes") or []) if "knapsack" in str(n)]
    return Alternative("knapsack", skipped="; ".join(map(str, notes)) or "the sweep made no knapsack plan")


__all__ = ["Alternative", "fill_within", "knapsack_from_sweep", "uniform_at_budget"]
