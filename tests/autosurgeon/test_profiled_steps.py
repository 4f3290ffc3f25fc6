"""The profiled table's runtime steps: a step measured again returns its own figure, whatever is in the table."""
from __future__ import annotations

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
