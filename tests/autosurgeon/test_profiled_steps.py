"""The profiled table's runtime steps and interleaved rounds (a step measured again returns its own figure)."""
from __future__ import annotations

import pytest
from test_evaluate import host_profile, tiny_lm

from autosurgeon.cost.profiled import Profiler, TimingSettings
from autosurgeon.cost.workload import Workload
from autosurgeon.space.search_space import SearchSpace


def test_a_step_measured_again_after_a_steadier_entry_returns_its_own_figure():
    # Session 5: resident_step called a second time (the analytic's rest, then a re-check) raised
    # UnboundLocalError when its spread was not below the entry already in the table.
    loaded, profile = tiny_lm(), host_profile()
    space = SearchSpace.build(loaded, profile)
    profiler = Profiler(loaded, space, profile, Workload(task="causal-lm", batch=1, context=8),
                        timing=TimingSettings(clock="cpu", step_warmup=1, step_repeats=3), use_cache=False)
    profiler.table.spread["resident|decode"] = -1.0  # steadier than any measurement can be
    profiler.table.noisy.append("resident|decode")
    again = profiler.resident_step()
    assert again["median_s"] > 0
    assert profiler.table.spread["resident|decode"] == again["dispersion"] >= 0  # this call's own spread
    assert again["noisy"] == ("resident|decode" in profiler.table.noisy)


def test_the_table_is_timed_in_interleaved_rounds_and_holds_every_entry(monkeypatch):
    # Session 5's regression: entries timed one after another took the load of their own moment (the unmodified
    # plan measured 1.3-2x apart within one process); with rounds every choice and the baseline alternate.
    import autosurgeon.cost.profiled_context as ctx

    loaded, profile = tiny_lm(), host_profile()
    space = SearchSpace.build(loaded, profile, knobs=("precision",))
    work = Workload(task="causal-lm", batch=1, context=8)

    def make(rounds):
        return Profiler(loaded, space, profile, work, use_cache=False, timing=TimingSettings(
            clock="cpu", warmup=0, repeats=2, step_warmup=1, step_repeats=4, rounds=rounds))

    seen = []
    original = ctx.context_times
    monkeypatch.setattr(ctx, "context_times", lambda p, combo, **k: seen.append(combo) or original(p, combo, **k))
    steps = []
    monkeypatch.setattr(Profiler, "_session_step", lambda self, spec, **k: steps.append(k) or (1e-3, 2e-3, {}))
    interleaved = make(3)
    interleaved.measure_all()
    combos = list(dict.fromkeys(seen))
    assert len(combos) >= 4 and len(seen) >= 3 * len(combos)  # every choice in every round (plus any re-measure)
    first_rounds = seen[:3 * len(combos)]
    assert [sorted(first_rounds[i * len(combos):(i + 1) * len(combos)]) for i in range(3)] == [sorted(combos)] * 3
    assert first_rounds[:len(combos)] != first_rounds[len(combos):2 * len(combos)]  # the order rotates
    assert not any(k.get("spread_key") == "baseline|decode" for k in steps)  # the baseline came from the rounds
    table = interleaved.table
    assert table.baseline_s["decode"] > 0 and table.settings["rounds"]["rounds"] == 3
    entries = dict(table.unit_s)
    x = space.default_vector()
    assert interleaved.compose(x, "decode")["latency_s"] == pytest.approx(table.baseline_s["decode"])
    for i, v in enumerate(space.variables):  # every choice composes from the table: nothing measured later
        for j, ok in enumerate(v.mask):
            if ok:
                y = x.copy()
                y[i] = j
                interleaved.compose(space.repair(y), "decode")
    assert table.unit_s == entries
