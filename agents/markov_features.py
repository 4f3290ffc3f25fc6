"""Context of each SearchSpace variable for the Markov placement model: unit kind and bucketed features.

The buckets are chosen to *transfer* between models and devices, so a model fitted on one sweep can
propose plans for another:

* ``size``: the unit's weight bytes relative to the largest unit with the same knob in the same model
  (0: at least half the largest, 1: at least an eighth, 2: smaller) — "the big matrices" in any model;
* ``position``: the unit's place in model order in [0, 1] (``SearchSpace.features()``'s ``position``),
  cut into ``position_bins`` equal bins — "early / late layers" in any depth;
* ``intensity``: the analysis' arithmetic intensity (FLOP per byte moved), cut at absolute edges
  (default 4 and 32 FLOP/B: memory-bound, between, compute-bound on common CPUs and GPUs).

Session variables (``"<session>"``, kind ``"session"``: KV cache and prefetch decisions) are contexts like
any other: the unit is the whole model (its weight bytes, largest block intensity, position 1.0), each
session knob is its own chain of one variable (``prev`` None), and their values (``"int8"``, ``"50%"``,
``None``) are matched by value. Adding them to a space leaves the module variables' contexts unchanged.

``prev`` is the index of the previous variable with the same knob (the Markov chain runs along the units
in model order, one chain per knob); variables are ordered by knob stage, then position, so it is
always decided before the variable itself.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SIZE_RATIOS: tuple[float, ...] = (0.5, 0.125)
INTENSITY_EDGES: tuple[float, ...] = (4.0, 32.0)
POSITION_BINS = 4


@dataclass(frozen=True)
class VarContext:
    """Static context of one variable (everything but the previous choice, which depends on ``x``)."""

    knob: str
    kind: str
    size: int
    position: int
    intensity: int
    prev: int | None


def _bucket(value: float, edges: Sequence[float]) -> int:
    """Number of ``edges`` that ``value`` reaches (0 .. len(edges))."""
    return sum(value >= e for e in edges)


def _unit_stats(space: Any, v: Any) -> tuple[float, float]:
    """(weight bytes, intensity) of the unit a variable decides for, from ``SearchSpace.unit_summary``: a
    block, a fusion group (members summed), a leaf, or the whole model for a session variable."""
    _, nbytes, intensity, _, _ = space.unit_summary(v)
    return float(nbytes), float(intensity)


def variable_contexts(space: Any, *, position_bins: int = POSITION_BINS,
                      intensity_edges: Sequence[float] = INTENSITY_EDGES,
                      size_ratios: Sequence[float] = SIZE_RATIOS) -> list[VarContext]:
    """One :class:`VarContext` per variable of ``space``, in variable order."""
    feats, names = space.features()
    pos_col = names.index("position")
    stats = [_unit_stats(space, v) for v in space.variables]
    largest: dict[str, float] = {}
    for v, (nbytes, _) in zip(space.variables, stats):
        largest[v.knob] = max(largest.get(v.knob, 0.0), nbytes)
    out: list[VarContext] = []
    last: dict[str, int] = {}
    for i, (v, (nbytes, inten)) in enumerate(zip(space.variables, stats)):
        ratio = nbytes / largest[v.knob] if largest[v.knob] > 0 else 1.0
        size = len(size_ratios) - _bucket(ratio, sorted(size_ratios))  # 0 = largest
        pos = min(int(float(feats[i, pos_col]) * position_bins), position_bins - 1)
        out.append(VarContext(knob=v.knob, kind=v.kind, size=size, position=pos,
                              intensity=_bucket(inten, intensity_edges), prev=last.get(v.knob)))
        last[v.knob] = i
    return out


__all__ = ["INTENSITY_EDGES", "POSITION_BINS", "SIZE_RATIOS", "VarContext", "variable_contexts"]
