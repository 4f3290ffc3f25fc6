"""The SearchSpace's variables grouped by decision unit, for operators that respect its structure.

A SearchSpace has one variable per (unit, knob); some depend on another (a linear's ``group_size`` and
``kernel`` on its ``precision``, a layer's precision on its block's ``placement``). Changing a dependent
variable alone is mostly a no-op (a group size while the layer is not int4 is repaired back to index 0), and
crossing two parents gene by gene splits a layer's precision from its group size. :class:`UnitStructure`
names the *heads* (variables no other variable of their unit decides: placement, precision, layout, fusion,
session knobs) with their *followers* (the variables whose validity they decide), the genes of a unit
(a head and its followers travel together in crossover), and the precision heads in model order (contiguous
segments of layers for the segment moves).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

FOLLOWER_KNOBS = ("group_size", "kernel")


@dataclass(frozen=True)
class UnitStructure:
    """Heads, their followers and the genes of each unit of one SearchSpace (module docstring)."""

    heads: tuple[int, ...]
    followers: dict[int, tuple[int, ...]]
    genes: tuple[tuple[int, ...], ...]
    precision_heads: tuple[int, ...]
    mutable_heads: tuple[int, ...]
    placement_heads: tuple[int, ...] = ()

    @classmethod
    def of(cls, space: Any) -> UnitStructure:
        variables = space.variables
        followers: dict[int, list[int]] = {}
        heads = []
        for i, v in enumerate(variables):
            if v.knob in FOLLOWER_KNOBS and v.parent is not None:
                root = v.parent
                while variables[root].knob in FOLLOWER_KNOBS and variables[root].parent is not None:
                    root = variables[root].parent
                followers.setdefault(root, []).append(i)
            else:
                heads.append(i)
        genes = tuple((h, *followers.get(h, ())) for h in heads)
        precision = tuple(h for h in heads if variables[h].knob == "precision")
        mutable = tuple(h for h in heads if int(np.count_nonzero(variables[h].mask)) > 1
                        or any(int(np.count_nonzero(variables[f].mask)) > 1 for f in followers.get(h, ())))
        placement = tuple(h for h in heads if variables[h].knob == "placement")
        return cls(heads=tuple(heads), followers={h: tuple(f) for h, f in followers.items()}, genes=genes,
                   precision_heads=precision, mutable_heads=mutable, placement_heads=placement)


def redraw_followers(space: Any, structure: UnitStructure, x: np.ndarray, head: int,
                     rng: np.random.Generator) -> None:
    """Re-draw ``head``'s followers in place, uniformly among the choices valid under ``x`` (one at a time, in order)."""
    for f in structure.followers.get(head, ()):
        valid = np.nonzero(space.allowed(f, x)[0])[0]
        x[f] = int(rng.choice(valid))


def followers_free(space: Any, structure: UnitStructure, x: np.ndarray, head: int) -> bool:
    """Whether some follower of ``head`` has more than one valid choice under ``x`` (an int4 layer's group size)."""
    return any(int(np.count_nonzero(space.allowed(f, x)[0])) > 1 for f in structure.followers.get(head, ()))


__all__ = ["FOLLOWER_KNOBS", "UnitStructure", "followers_free", "redraw_followers"]
