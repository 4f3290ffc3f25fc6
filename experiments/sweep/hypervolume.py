"""Hypervolume in normalised objective space, Pareto fronts, and HV against evaluations.

Objectives are divided by the normaliser's scales (``config``: the unmodified model's metrics) before
pymoo's ``HV`` measures the volume dominated up to the reference point; points beyond the reference
point in any objective contribute nothing. Only feasible records count.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from autosurgeon.errors import InvalidArgumentError


def normalise(F: Any, scales: Sequence[float]) -> np.ndarray:
    arr = np.asarray(F, dtype=np.float64).reshape(-1, len(scales))
    return arr / np.asarray(scales, dtype=np.float64)


def hypervolume(F: Any, reference_point: Sequence[float], *, scales: Sequence[float] | None = None) -> float:
    """HV of the points ``F`` (n x k, minimised) w.r.t. ``reference_point``, after dividing by ``scales``."""
    from pymoo.indicators.hv import HV

    ref = np.asarray(reference_point, dtype=np.float64)
    arr = np.asarray(F, dtype=np.float64)
    if arr.size == 0:
        return 0.0
    arr = arr.reshape(-1, ref.size)
    if scales is not None:
        arr = normalise(arr, scales)
    arr = arr[np.all(arr < ref, axis=1)]
    if arr.size == 0:
        return 0.0
    return float(HV(ref_point=ref)(arr))


def non_dominated(F: Any) -> list[int]:
    """Indices of the non-dominated rows of ``F`` (minimisation; duplicates: the first is kept)."""
    arr = np.asarray(F, dtype=np.float64)
    keep = []
    for i in range(len(arr)):
        dominated = False
        for j in range(len(arr)):
            if j == i:
                continue
            if np.all(arr[j] <= arr[i]) and (np.any(arr[j] < arr[i]) or j < i):
                dominated = True
                break
        if not dominated:
            keep.append(i)
    return keep


def front_indices(records: Sequence[Mapping[str, Any]]) -> list[int]:
    """Positions in ``records`` of the feasible non-dominated records."""
    feasible = [i for i, r in enumerate(records) if r.get("feasible", True)]
    if not feasible:
        return []
    F = [records[i]["objectives"] for i in feasible]
    return [feasible[k] for k in non_dominated(F)]


def hv_curve(records: Sequence[Mapping[str, Any]], reference_point: Sequence[float], scales: Sequence[float],
             at: Sequence[int]) -> dict[int, float]:
    """HV of the feasible records among the first ``n`` evaluations, for each ``n`` in ``at``."""
    out = {}
    for n in at:
        if n < 1:
            raise InvalidArgumentError(f"`hv_at` entries must be >= 1, got {n}.")
        pts = [r["objectives"] for r in records[:n] if r.get("feasible", True)]
        out[int(n)] = hypervolume(pts, reference_point, scales=scales)
    return out


def evals_to_reach(records: Sequence[Mapping[str, Any]], target: float, reference_point: Sequence[float],
                   scales: Sequence[float]) -> int | None:
    """The smallest number of evaluations whose feasible records reach HV ``target`` (None: never)."""
    pts: list[Any] = []
    for n, r in enumerate(records, 1):
        if r.get("feasible", True):
            pts.append(r["objectives"])
            if hypervolume(pts, reference_point, scales=scales) >= target - 1e-12:
                return n
    return None


__all__ = ["evals_to_reach", "front_indices", "hv_curve", "hypervolume", "non_dominated", "normalise"]
