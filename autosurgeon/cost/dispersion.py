"""Dispersion of repeated timings, and timing that keeps every repeat (MEASURING.md).

Every measured entry of a reused table carries its spread: IQR/median over its repeats. An entry above
``NOISY`` is re-measured once and, if it stays above, labelled noisy (kept, but said to be noisy, never
cached silently as truth). ``STALE`` is how far a cheap spot check on load may disagree with a cached figure.
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from autosurgeon.errors import InvalidArgumentError

NOISY = 0.15  # IQR/median above which an entry is re-measured once, then labelled noisy
STALE = 0.5  # a cached figure slower than a spot check by more than this fraction is re-measured


def iqr_ratio(values: Sequence[float]) -> float:
    """IQR / median of ``values`` (0 for fewer than 2 values or a zero median)."""
    if len(values) < 2:
        return 0.0
    median = statistics.median(values)
    if median <= 0:
        return 0.0
    q = statistics.quantiles(values, n=4, method="inclusive")
    return (q[2] - q[0]) / median


def load_average() -> float | None:
    """The 1-minute load average, where the platform has one."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def timed_samples(fn: Callable[[], Any], *, warmup: int, repeats: int, device: str, clock: str) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup``: wall clock (CUDA-synchronised) or the
    process CPU clock (CPU execution only)."""
    if clock not in ("wall", "cpu"):
        raise InvalidArgumentError(f"`clock` must be 'wall' or 'cpu', got {clock!r}.")
    if clock == "cpu" and not str(device).startswith("cpu"):
        raise InvalidArgumentError(f"`clock`='cpu' times CPU execution only; {device!r} needs clock='wall'.")
    cuda = str(device).startswith("cuda")
    if cuda:
        import torch

        sync = lambda: torch.cuda.synchronize(device)  # noqa: E731
    else:
        sync = lambda: None  # noqa: E731
    read = time.process_time if clock == "cpu" else time.perf_counter
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(repeats):
        t0 = read()
        fn()
        sync()
        out.append(read() - t0)
    return out


__all__ = ["NOISY", "STALE", "iqr_ratio", "load_average", "timed_samples"]
