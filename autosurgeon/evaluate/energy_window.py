"""Energy per step from a counter window the counter can see.

NVML's energy counter moves in ticks of ~0.1-1 s and RAPL's is read as it stands: a window of a few decode
steps (milliseconds) can read 0 J, or one tick for ten steps. The runtime evaluator times its steps in such a
window; where that window is shorter than :data:`runtime.telemetry.COUNTER_WINDOW_S` or read nothing, it measures
energy again here, repeating the same step until the window is long enough. A window the counter still did not
see gives ``None`` (unknown), never 0 J labelled measured.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import torch

from runtime import telemetry
from runtime.telemetry import COUNTER_WINDOW_S


def counter_energy_per_step(step: Callable[[], object], device: torch.device | str, *, watts: float | None,
                            min_window_s: float = COUNTER_WINDOW_S) -> float | None:
    """Joules per ``step()`` over a counter window of at least ``min_window_s`` (at least one step); ``None``
    when no counter was readable or it did not move."""
    meter = telemetry.EnergyMeter(device=device, watts=watts, min_window_s=0.0)
    steps = 0
    with meter:
        started = time.perf_counter()
        while steps == 0 or time.perf_counter() - started < min_window_s:
            step()
            steps += 1
    if meter.source not in ("nvml", "rapl") or not meter.joules > 0:
        return None
    return float(meter.joules) / steps
