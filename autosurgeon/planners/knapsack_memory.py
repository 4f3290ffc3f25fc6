"""The knapsack planner's bytes: the one byte formula (``footprint.memory_breakdown``) with the plan's session and
workload held, and the smallest footprint a budget can reach (split from ``knapsack.py``)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TYPE_CHECKING

import numpy as np

from autosurgeon.cost.footprint import DEFAULT_KV_CONTEXT, memory_breakdown

if TYPE_CHECKING:  # annotations only
    from autosurgeon.space.search_space import SearchSpace


def stream_choice(space: SearchSpace, block: str) -> str | None:
    """The placement a block streams with (execution unit unchanged, home one tier slower), if valid."""
    i = space.index_of(block, "placement")
    if i is None:
        return None
    kind = space.default_placement.partition("<-")[0]
    v = space.variables[i]
    for candidate in (f"{kind}<-cpu", f"{kind}<-disk"):
        if candidate in v.choices and v.mask[v.choices.index(candidate)] and candidate != space.default_placement:
            return candidate
    return None


def assign(space: SearchSpace, x0: np.ndarray, names: list[str], opts: list[list[Any]], picks: list[int]) -> np.ndarray:
    """``x0`` with each unit's precision (and int4 group size) set to its picked option."""
    x = x0.copy()
    for name, row, j in zip(names, opts, picks):
        option = row[j]
        i = space.index_of(name, "precision")
        x[i] = space.variables[i].index(option.precision)
        gi = space.index_of(name, "group_size")
        if gi is not None and option.precision == "int4":
            x[gi] = space.variables[gi].index(option.group_size)
        ki = space.index_of(name, "kernel")
        if ki is not None:
            x[ki] = space.variables[ki].index(option.kernel)
    return x


def smallest_footprint(space: SearchSpace, options: Sequence[Sequence[Any]] | Mapping[str, Sequence[Any]],
                       tier: str, *, lookahead: int = 2, session: Mapping[str, Any] | None = None,
                       context: int = DEFAULT_KV_CONTEXT) -> int:
    """Least bytes on ``tier``: every unit at its smallest option, all blocks resident or all streamed
    (``session``: the plan's session decisions, counted as ``plan_memory`` counts them)."""
    memory = Memory(space, lookahead, dict(session or {}), context)
    rows = options.items() if isinstance(options, Mapping) else zip(
        [v.name for v in space.variables if v.knob == "precision"], options)
    rows = list(rows)
    x = assign(space, space.default_vector(), [n for n, _ in rows], [list(r) for _, r in rows],
               [min(range(len(r)), key=lambda j, r=r: r[j].nbytes) for _, r in rows])
    best = memory.tiers(x)[tier]
    y = x.copy()
    streamed = False
    for b in space.blocks:
        choice = stream_choice(space, b.name) if b.is_block else None
        if choice is not None:
            i = space.index_of(b.name, "placement")
            y[i] = space.variables[i].index(choice)
            streamed = True
    if streamed:
        best = min(best, memory.tiers(y)[tier])
    return int(best)


@dataclass(frozen=True)
class Memory:
    """The one byte formula (``footprint.memory_breakdown``) with the plan's session and workload held."""

    space: Any
    lookahead: int
    session: dict[str, Any]
    context: int

    def breakdown(self, x: np.ndarray) -> dict[str, Any]:
        return memory_breakdown(self.space, x, lookahead=self.lookahead, context=self.context, session=self.session)

    def tiers(self, x: np.ndarray) -> dict[str, int]:
        return self.breakdown(x)["tiers"]


__all__ = ["Memory", "assign", "smallest_footprint", "stream_choice"]
