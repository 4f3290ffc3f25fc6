"""Telemetry: latency statistics, energy sources, RSS and peaks."""
from __future__ import annotations

import time

import pytest
import torch

from runtime import telemetry
from runtime.errors import JalapenoError
from runtime.telemetry import ENERGY_SOURCES, EnergyMeter, PeakTracker, measure_latency, rss_bytes


def test_measure_latency_counts_and_orders() -> None:
    calls = []

    def fn() -> None:
        calls.append(1)
        time.sleep(0.002)

    stats = measure_latency(fn, warmup=2, repeats=5)
    assert len(calls) == 7
    assert stats.repeats == 5 and stats.warmup == 2 and not stats.synchronised and stats.device == "cpu"
    assert 0.002 <= stats.min_s <= stats.p10_s <= stats.median_s <= stats.p90_s  # a sleep lasts at least its time


def test_measure_latency_rejects_bad_repeats() -> None:
    with pytest.raises(JalapenoError, match="`repeats` must be >= 1, got 0"):
        measure_latency(lambda: None, repeats=0)


def test_energy_estimate_when_no_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry, "_rapl_zones", lambda: [])
    with EnergyMeter(watts=50.0) as meter:
        time.sleep(0.05)
    assert meter.source == "estimate"
    assert meter.seconds >= 0.05
    assert meter.joules == pytest.approx(50.0 * meter.seconds)
    with EnergyMeter() as unknown:
        pass
    assert unknown.source == "estimate" and unknown.joules != unknown.joules  # NaN: never a made-up number


def test_energy_from_rapl_when_readable() -> None:
    if not telemetry._rapl_zones():
        pytest.skip("no readable RAPL counters on this machine")
    with EnergyMeter(min_window_s=0.0) as meter:
        torch.randn(512, 512) @ torch.randn(512, 512)
        time.sleep(0.2)
    assert meter.source == "rapl" and meter.joules > 0


def test_energy_meter_rejects_negative_watts() -> None:
    with pytest.raises(JalapenoError, match="`watts` must be >= 0"):
        EnergyMeter(watts=-1.0)


def test_rss_and_peak_tracker_see_a_transient_allocation() -> None:
    assert rss_bytes() > 0
    with PeakTracker(interval_s=0.001) as tracker:
        big = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        time.sleep(0.05)
        del big
    assert tracker.peak_rss_bytes - tracker.start_rss_bytes >= 48 * 2**20
    assert tracker.samples >= 2 and tracker.peak_cuda_bytes is None


@pytest.mark.gpu
def test_nvml_energy_and_cuda_peak() -> None:
    pytest.importorskip("pynvml")
    dev = torch.device("cuda")
    with PeakTracker(device=dev) as tracker, EnergyMeter(device=dev) as meter:
        a = torch.randn(4096, 4096, device=dev)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 1.2:
            a = (a @ a).clamp_(-1, 1)
        torch.cuda.synchronize()
    assert meter.source == "nvml" and meter.joules > 0 and not meter.short_window
    assert meter.source in ENERGY_SOURCES
    assert tracker.peak_cuda_bytes is not None and tracker.peak_cuda_bytes >= 4096 * 4096 * 4
    stats = measure_latency(lambda: a @ a, warmup=1, repeats=3, device=dev)
    assert stats.synchronised
