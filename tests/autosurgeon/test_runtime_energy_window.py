"""The runtime evaluator's energy: a timing window shorter than the counter's tick is measured again over a
second; a counter that never moves gives an estimate labelled so, never 0 J labelled measured."""
from __future__ import annotations

import time

import pytest
import torch

from autosurgeon.cost.profiled import TimingSettings, Workload
from autosurgeon.evaluate import RuntimeEvaluator
from autosurgeon.evaluate import runtime as runtime_evaluator
from runtime import telemetry
from test_evaluate import host_profile, tiny_lm

FAST = TimingSettings(warmup=0, repeats=2, step_warmup=1, step_repeats=3, clock="cpu")


class _TickingCounter:
    """A counter that moves in ticks of ``tick_s`` (30 J each), like NVML; ``tick_s=inf`` never moves."""

    tick_s = 0.1
    windows: list[float] = []  # every window read, in seconds

    def __init__(self, *, device: object = None, watts: float | None = None, min_window_s: float = 1.0) -> None:
        self.source = "nvml"

    def _count(self) -> float:
        return 0.0 if self.tick_s == float("inf") else (time.perf_counter() // self.tick_s) * 30.0

    def __enter__(self) -> _TickingCounter:
        self._t0, self._c0 = time.perf_counter(), self._count()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0
        self.joules = self._count() - self._c0
        _TickingCounter.windows.append(self.seconds)


@pytest.mark.parametrize("tick_s", [0.1, float("inf")])
def test_short_counter_windows_are_measured_again_or_estimated(monkeypatch: pytest.MonkeyPatch,
                                                               tick_s: float) -> None:
    monkeypatch.setattr(_TickingCounter, "tick_s", tick_s)
    monkeypatch.setattr(_TickingCounter, "windows", [])
    monkeypatch.setattr(runtime_evaluator, "EnergyMeter", _TickingCounter)
    monkeypatch.setattr(telemetry, "EnergyMeter", _TickingCounter)
    torch.set_num_threads(1)
    rt = RuntimeEvaluator(tiny_lm(), host_profile(), workload=Workload("causal-lm", context=8), timing=FAST,
                          quality_samples=1)
    m = rt.evaluate(rt.space.default_vector())
    # the timing window (3 steps, milliseconds) was too short for the counter, so a second one of >= 1 s was read
    assert len(_TickingCounter.windows) == 2 and _TickingCounter.windows[0] < 1.0 <= _TickingCounter.windows[1]
    assert m.energy_j is not None and m.energy_j > 0
    if tick_s == 0.1:
        assert m.labels["energy_j"] == "measured"
    else:
        assert m.labels["energy_j"] == "estimated" and "did not tick" in m.method
