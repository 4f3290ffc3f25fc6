"""The multiple-choice knapsack's dynamic programme (``planners/knapsack.py`` builds the options and reads the picks).

Each unit picks one option; an option costs discretised bytes ("cells" of one ``quantum``) and adds a value
(loss or seconds). ``f[c]`` is the least total value within ``c`` cells; the choices are backtracked from it.
The byte axis is exact (the options' gcd) when it has at most ``max_cells`` cells, else rounded up.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Any

import numpy as np


@dataclass(frozen=True)
class _Axis:
    base: int  # sum of each unit's smallest option
    quantum: int
    cells: tuple[np.ndarray, ...]  # per unit, per option: discretised extra bytes over the unit's smallest
    exact: bool


def _axis(options: Sequence[Sequence[Any]], span: int, max_cells: int) -> _Axis:
    base = sum(min(o.nbytes for o in opts) for opts in options)
    extra = [[o.nbytes - min(p.nbytes for p in opts) for o in opts] for opts in options]
    g = reduce(math.gcd, (e for row in extra for e in row if e), 0) or 1
    exact = span // g <= max_cells
    q = g if exact else -(-span // max_cells)
    cells = [np.array([-(-e // q) for e in row], dtype=np.int64) for row in extra]
    return _Axis(base, q, tuple(cells), exact)


def _solve(values: Sequence[np.ndarray], cells: Sequence[np.ndarray], capacity: int) -> tuple[np.ndarray, list[int]]:
    """Multiple-choice knapsack: ``f[c]`` = least total value with total cells <= c, and the argmin choices."""
    f = np.zeros(capacity + 1)
    choice = np.zeros((len(values), capacity + 1), dtype=np.int16)
    for i, (vals, ws) in enumerate(zip(values, cells)):
        new = np.full(capacity + 1, np.inf)
        pick = np.zeros(capacity + 1, dtype=np.int16)
        for j, (v, w) in enumerate(zip(vals, ws)):
            if w > capacity:
                continue
            cand = np.full(capacity + 1, np.inf)
            cand[w:] = f[: capacity + 1 - w] + v
            better = cand < new
            new[better], pick[better] = cand[better], j
        f, choice[i] = new, pick
    return f, _backtrack(choice, cells, capacity)


def _backtrack(choice: np.ndarray, cells: Sequence[np.ndarray], c: int) -> list[int]:
    picks = []
    for i in range(len(cells) - 1, -1, -1):
        j = int(choice[i, c])
        picks.append(j)
        c -= int(cells[i][j])
    return picks[::-1]


__all__ = ["_Axis", "_axis", "_backtrack", "_solve"]
