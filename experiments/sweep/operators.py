"""Variation operators that respect the SearchSpace: per-variable masks, conditional validity, no repair bias.

``SpaceRepair`` (``space.repair``) moves an invalid entry to its *nearest* valid choice: after crossover
and mutation that pulls the population toward the choices that happen to sit next to masked ones (the
first valid group size, the next precision up), a bias no objective asked for. :class:`UniformRepair`
walks the variables in the space's order (each rule looks only backwards) and re-draws an invalid entry
uniformly among the choices valid given the entries before it, from pymoo's seeded ``random_state``;
valid entries are kept, so a valid vector passes unchanged and the sweep stays reproducible from its seed.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from pymoo.core.repair import Repair


def repair_uniform(space: Any, x: Any, rng: np.random.Generator) -> np.ndarray:
    """``x`` with each invalid entry re-drawn uniformly among the choices valid given the entries before it."""
    out = np.clip(np.rint(np.asarray(x, dtype=np.float64)), 0, space.nvec - 1).astype(np.int64)
    for i in range(len(space.variables)):
        mask, _ = space.allowed(i, out)
        if not mask[out[i]]:
            out[i] = int(rng.choice(np.nonzero(mask)[0]))
    return out


class UniformRepair(Repair):
    """:func:`repair_uniform` on every row (module docstring)."""

    def __init__(self, space: Any) -> None:
        super().__init__()
        self.space = space

    def _do(self, problem: Any, X: Any, random_state: Any = None, **kwargs: Any) -> np.ndarray:
        rng = random_state if random_state is not None else np.random.default_rng(0)
        return np.array([repair_uniform(self.space, x, rng) for x in X], dtype=np.int64)


__all__ = ["UniformRepair", "repair_uniform"]
