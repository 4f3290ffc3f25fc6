"""A profiled table re-validated against the machine's present state on first use (cost/profiled_drift.py)."""
from __future__ import annotations

import numpy as np
import pytest
from test_evaluate import host_profile, tiny_lm

from autosurgeon.cost.profiled import Profiler, TimingSettings
from autosurgeon.cost.profiled_drift import DRIFT_BAND, drift_scale
from autosurgeon.cost.profiled_trust import cached_tables_as_is
from autosurgeon.cost.workload import Workload
from autosurgeon.space.search_space import SearchSpace

TIMING = TimingSettings(clock="cpu", warmup=0, repeats=2, step_warmup=1, step_repeats=2, rounds=1)
WORK = Workload(task="causal-lm", batch=1, context=8)


def test_the_factor_is_one_inside_the_band_and_the_ratio_outside():
    assert drift_scale(1.0) == drift_scale(1.0 + DRIFT_BAND) == drift_scale(1.0 / (1.0 + DRIFT_BAND)) == 1.0
    assert drift_scale(1.5) == 1.5 and drift_scale(0.5) == 0.5
    assert drift_scale(0.0) == 1.0  # nothing measured: nothing scaled


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    loaded, profile = tiny_lm(), host_profile()
    space = SearchSpace.build(loaded, profile, knobs=("precision",))
    cache = tmp_path_factory.mktemp("profiled")
    first = Profiler(loaded, space, profile, WORK, timing=TIMING, cache_dir=cache, revalidate=False)
    first.measure_all()
    return loaded, profile, space, cache, first


def _now_reads(monkeypatch, seconds):
    calls = []

    def step(self, spec, **kw):
        calls.append(kw)
        return seconds, None, {}

    monkeypatch.setattr(Profiler, "_session_step", step)
    return calls


@pytest.mark.parametrize("ratio, scaled", [(1.6, True), (0.5, True), (1.05, False)])
def test_first_use_times_the_unmodified_step_and_scales_every_time_term_outside_the_band(
        measured, monkeypatch, ratio, scaled):
    loaded, profile, space, cache, first = measured
    x = space.random_vector(np.random.default_rng(0))
    table_says = first.compose(x, "decode")
    assert table_says["table_scale"] == 1.0  # revalidate=False: the table as measured
    baseline = first.table.baseline_s["decode"]
    used = Profiler(loaded, space, profile, WORK, timing=TIMING, cache_dir=cache, use_cache=False)
    used.table = first.table.__class__.from_json(first.table.to_json())
    calls = _now_reads(monkeypatch, baseline * ratio)
    parts = used.compose(x, "decode")
    used.compose(space.default_vector(), "decode")  # later uses do not time again
    assert calls == [{"warmup": 3, "repeats": 5, "prefill": False}] + [{"warmup": 1, "repeats": 5, "prefill": False}] * 2
    k = ratio if scaled else 1.0
    assert parts["table_scale"] == pytest.approx(k) and parts["unscaled_s"] == pytest.approx(table_says["latency_s"])
    for term in ("latency_s", "overhead_s", "units_s", "stream_s"):
        assert parts[term] == pytest.approx(k * table_says[term])
    check = used.table.checks[-1]
    assert check["kind"] == "use" and check["ratio"] == pytest.approx(ratio) and check["scale"] == pytest.approx(k)
    assert ("x" + format(ratio, ".2f")) in used.drift_note() if scaled else "used as measured" in used.drift_note()
    # the unmodified plan now prices at what the check measured (outside the band), or the table's own figure
    unmodified = used.compose(space.default_vector(), "decode")["latency_s"]
    assert unmodified == pytest.approx(baseline * ratio if scaled else baseline)


def test_bursts_that_disagree_about_the_band_leave_the_table_as_measured(measured, monkeypatch):
    loaded, profile, space, cache, first = measured
    used = Profiler(loaded, space, profile, WORK, timing=TIMING, cache_dir=cache, use_cache=False)
    used.table = first.table.__class__.from_json(first.table.to_json())
    reads = iter([1.2, 1.1, 1.18])
    base = first.table.baseline_s["decode"]
    monkeypatch.setattr(Profiler, "_session_step", lambda self, spec, **kw: (base * next(reads), None, {}))
    assert used.revalidate()["scale"] == 1.0 and "disagree" in used.drift["how"]
    reads = iter([1.6, 1.5, 1.55])  # all outside, steady: scaled by the burst nearest the table
    assert used.revalidate()["scale"] == pytest.approx(1.5)
    reads = iter([1.6, 1.3, 1.7, 1.9, 1.4, 1.6])  # spread twice over the band: recorded, not applied
    assert used.revalidate()["scale"] == 1.0 and "noisy: not applied" in used.drift["how"]


def test_a_sweep_worker_takes_the_coordinators_check_and_times_nothing(measured, monkeypatch):
    loaded, profile, space, cache, first = measured
    coordinator = Profiler(loaded, space, profile, WORK, timing=TIMING, cache_dir=cache, use_cache=False)
    coordinator.table = first.table.__class__.from_json(first.table.to_json())
    _now_reads(monkeypatch, first.table.baseline_s["decode"] * 2.0)
    coordinator.revalidate()
    calls = _now_reads(monkeypatch, 1.0)
    worker = Profiler(loaded, space, profile, WORK, timing=TIMING, cache_dir=cache, use_cache=False)
    worker.table = first.table.__class__.from_json(coordinator.table.to_json())
    with cached_tables_as_is():
        parts = worker.compose(space.default_vector(), "decode")
    assert calls == [] and parts["table_scale"] == pytest.approx(2.0)
    assert "coordinator" in worker.drift_note()


def test_a_load_check_just_made_stands_for_the_first_use(measured, monkeypatch):
    loaded, profile, space, cache, first = measured
    first.save()
    calls = _now_reads(monkeypatch, first.table.baseline_s["decode"] * 1.3)
    again = Profiler(loaded, space, profile, WORK, timing=TIMING, cache_dir=cache)  # the spot check on load
    again.compose(space.default_vector(), "decode")
    assert len(calls) == 1 and again.scale == pytest.approx(1.3)
    assert again.drift["how"] == "the load-time spot check"
