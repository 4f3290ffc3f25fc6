"""The least memory a plan can reach, in the measure the env budgets: bytes on GPU + CPU (disk excluded).

``plan_check.smallest_footprint`` minimises one tier (the execution tier first, the total second). On a GPU
profile that is the GPU tier, which a block streamed from *host memory* (``gpu<-cpu``) shrinks while GPU + CPU
stays where it was; the env's budgets, its shield and ``Metrics.objective("memory")`` count GPU + CPU. So the
env's floor sat far above what a plan reaches: on the paper H100 the unseen LMs' floor was 0.28-0.29 of the
unmodified model's memory while plans homed on disk reach 0.12 (the sweep's fronts), and no budget the env or
``apply --front-budgets`` asked for ever made the policy stream (session 6's one-plan fronts; ``results/
policy_transfer_s7.md``).

Here the floor is the smallest of a few descents, each on GPU + CPU (ties broken by the total over every tier):
starting from every block placement applied to all blocks at once (staging is a max over streamed units, so
streaming a single block first costs slots and a greedy one-variable descent never starts streaming), and from
``smallest_footprint``'s vector, each variable in turn takes the allowed choice with the least bytes, for a few
passes until nothing improves. Every candidate is the space's repair of the move, so the result is valid.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from autosurgeon.cost.footprint import FootprintTracker
from autosurgeon.plan_check import smallest_footprint

BUDGET_TIERS: tuple[str, ...] = ("gpu", "cpu")  # what the env's memory budget counts (Metrics "memory")
MAX_PASSES = 3


def budgeted_bytes(tiers: dict[str, int], counted: Sequence[str] = BUDGET_TIERS) -> tuple[int, int]:
    """(bytes on the ``counted`` tiers, bytes on every tier): the key the floor minimises."""
    return sum(int(tiers.get(t, 0)) for t in counted), sum(int(v) for v in tiers.values())


def smallest_budgeted(space, *, execution_tier: str, counted: Sequence[str] = BUDGET_TIERS,
                      lookahead: int = 2) -> tuple[int, np.ndarray]:
    """(bytes on the ``counted`` tiers, valid vector) of the smallest plan found (module docstring)."""
    starts = [smallest_footprint(space, execution_tier, lookahead=lookahead)[1]]
    placements = [i for i, v in enumerate(space.variables) if v.knob == "placement"]
    if placements:
        choices = space.variables[placements[0]].choices
        for j in range(1, len(choices)):
            x = space.default_vector()
            for i in placements:
                if space.variables[i].choices == choices:
                    x[i] = j
            y = space.repair(x)
            if any(y[i] == j for i in placements):  # the choice is allowed somewhere: a real start
                starts.append(y)
    best: tuple[tuple[int, int], np.ndarray] | None = None
    for start in starts:
        key, x = _descend(space, start, counted, lookahead)
        if best is None or key < best[0]:
            best = (key, x)
    assert best is not None  # at least smallest_footprint's start
    return best[0][0], best[1]


def _descend(space, start: np.ndarray, counted: Sequence[str], lookahead: int) -> tuple[tuple[int, int], np.ndarray]:
    """Coordinate descent from ``start`` (module docstring): the key and the valid vector it ends at."""
    x = space.repair(start)
    tracker = FootprintTracker(space, x, lookahead=lookahead)
    key = budgeted_bytes(tracker.tiers(), counted)
    for _ in range(MAX_PASSES):
        improved = False
        for i, v in enumerate(space.variables):
            if v.knob == "fusion":
                continue
            mask, _ = space.allowed(i, x)
            for j in np.nonzero(mask)[0]:
                if j == x[i]:
                    continue
                y = x.copy()
                y[i] = int(j)
                y = space.repair(y)
                changed = np.nonzero(y != tracker.x)[0]
                for k in changed:
                    tracker.set(int(k), int(y[k]))
                cand = budgeted_bytes(tracker.tiers(), counted)
                if cand < key:
                    key, x, improved = cand, y, True
                else:
                    for k in np.nonzero(tracker.x != x)[0]:
                        tracker.set(int(k), int(x[k]))
        if not improved:
            break
    return key, x


__all__ = ["BUDGET_TIERS", "budgeted_bytes", "smallest_budgeted"]
