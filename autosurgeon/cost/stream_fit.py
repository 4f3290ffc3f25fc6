"""The streaming probe's fit: exposed seconds per step = fixed + fetches x per-fetch + bytes x per-byte, all >= 0."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import nnls


def fit_stream(points: Sequence[dict[str, Any]]) -> tuple[float, float, float]:
    """``(fixed_s, fetch_s, s_per_byte)`` by non-negative least squares over the probe's points (each with
    ``exposed_s``, ``fetches``, ``bytes``); columns scaled to [0, 1] first (bytes run to 1e9, fetches to 1e2).
    A column without spread (one byte count, or one fetch count) is left out of the fit (its coefficient 0)."""
    y = np.array([p["exposed_s"] for p in points], dtype=float)
    cols = [np.ones(len(points)), np.array([p["fetches"] for p in points], dtype=float),
            np.array([p["bytes"] for p in points], dtype=float)]
    keep = [0] + [i for i in (1, 2) if np.ptp(cols[i]) > 0]
    if len(points) < len(keep):  # too few points for every term: the mean per fetch, as the probe did before
        f = cols[1].mean()
        return 0.0, float(max(0.0, y.mean()) / max(f, 1e-9)), 0.0
    if keep == [0] and cols[1].max() > 0:  # no spread at all: everything per fetch
        return 0.0, float(max(0.0, y.mean()) / cols[1].mean()), 0.0
    scale = np.array([max(float(np.abs(cols[i]).max()), 1e-30) for i in keep])
    a = np.stack([cols[i] / s for i, s in zip(keep, scale)], axis=1)
    coef, _ = nnls(a, y)
    out = [0.0, 0.0, 0.0]
    for i, c, s in zip(keep, coef, scale):
        out[i] = float(c / s)
    return out[0], out[1], out[2]


__all__ = ["fit_stream"]
