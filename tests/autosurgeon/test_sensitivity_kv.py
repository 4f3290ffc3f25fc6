"""KV sensitivity table: measured per session choice, cached, and used by the cheap evaluators' quality proxy."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import autosurgeon.quality.sensitivity_kv as sensitivity_kv_module
from autosurgeon.cost.profiled import TimingSettings, Workload
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.evaluate import AnalyticEvaluator, ProfiledEvaluator
from autosurgeon.hardware.resolve import resolve_profile
from autosurgeon.knobs import SESSION_KNOBS, SESSION_UNIT
from autosurgeon.plan import Plan
from autosurgeon.quality.sensitivity import measure_sensitivity
from autosurgeon.quality.sensitivity_kv import KVSensitivitySettings, KVSensitivityTable, measure_kv_sensitivity
from autosurgeon.space.search_space import SearchSpace
from autosurgeon.zoo import load_model

from _paper_profiles import paper_cpu_profile

SMALL = KVSensitivitySettings(samples=4)  # 4 x 49 scored tokens per choice: well under a second here
SESSION_SPACE = ("precision", "placement", *SESSION_KNOBS)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def llama():
    return load_model("tiny-llama-test")


@pytest.fixture(scope="module")
def table(llama, tmp_path_factory):
    return measure_kv_sensitivity(llama, SMALL, cache_dir=tmp_path_factory.mktemp("kv-cache"), threads=1)


@pytest.fixture(scope="module")
def weights(llama):
    return measure_sensitivity(llama, precisions=("int8",), hessian_samples=0)


def test_table_is_measured_at_the_workload_context_and_windows_bind_only_below_the_decode(table) -> None:
    assert (table.context, table.seq_len, table.prefix) == (32, 64, 16)  # max(context 32, RuntimeEvaluator's 64)
    assert table.tokens == 4 * (64 - 16 + 1)
    assert set(table.loss) == {("kv_precision", "int8"), ("kv_precision", "fp8"), ("kv_budget", "75%"),
                               ("kv_budget", "50%"), ("kv_budget", "25%"), ("kv_window", "1024"),
                               ("kv_window", "256"), ("kv_window", "64"), ("kv_window", "16")}
    assert table.delta_nll("kv_precision", "float") == 0.0 and table.delta_nll("kv_window", None) == 0.0
    # 64 + 4 sinks >= 64 positions: nothing is ever evicted, so the paged float cache is exact
    for w in ("1024", "256", "64"):
        assert not table.binds("kv_window", int(w)) and table.loss[("kv_window", w)] == pytest.approx(0.0, abs=1e-6)
    assert table.binds("kv_window", 16) and table.kept_tokens[("kv_window", "16")] == 20
    assert table.loss[("kv_window", "16")] > 1e-4  # evicting all but 20 of up to 64 tokens costs quality
    assert table.binds("kv_budget", "25%") and table.loss[("kv_budget", "25%")] > 1e-4
    assert abs(table.loss[("kv_precision", "int8")]) < 0.01  # per-token int8 scales: close to float
    assert table.settings["decode_len"] == 64 and table.settings["context"] == 32
    # the worst combination was measured too; the additive estimate is on record next to it
    assert set(table.combined) == {"session", "measured", "predicted"} and table.combined["measured"] > 0
    assert table.combined["session"]["kv_window"] == "16"


def test_table_is_deterministic_and_cached(llama, table, tmp_path, monkeypatch) -> None:
    again = measure_kv_sensitivity(llama, SMALL, cache_dir=tmp_path)
    assert again.loss == table.loss and again.key == table.key  # same model, settings, data: same numbers
    assert (tmp_path / "sensitivity" / f"kv-{table.key}.json").is_file()

    def no_decoding(*args, **kwargs):
        raise AssertionError("the second call must read the cache")

    monkeypatch.setattr(sensitivity_kv_module, "kv_quality_loss", no_decoding)  # the name the table measures with
    cached = measure_kv_sensitivity(llama, SMALL, cache_dir=tmp_path)
    assert cached == again
    assert KVSensitivityTable.from_json(cached.to_json()) == cached
    other = KVSensitivitySettings(samples=4, context=48)  # another context: another entry
    with pytest.raises(AssertionError, match="must read the cache"):
        measure_kv_sensitivity(llama, other, cache_dir=tmp_path)


def test_predict_adds_precision_to_the_tighter_eviction_and_lists_what_it_cannot_score(table) -> None:
    assert table.predict({"kv_precision": "float", "kv_budget": "none", "kv_window": None})["kv_quality_loss"] == 0.0
    w, b = table.loss[("kv_window", "16")], table.loss[("kv_budget", "25%")]
    p = max(0.0, table.loss[("kv_precision", "fp8")])
    both = table.predict({"kv_window": 16, "kv_budget": "25%", "kv_tier": "cpu"})  # the tier changes no number
    assert both["kv_quality_loss"] == pytest.approx(max(w, b))  # both evict the oldest tokens: the tighter counts
    assert both["unscored"] == [] and set(both["parts"]) == {"kv_window", "kv_budget"}
    all3 = table.predict({"kv_precision": "fp8", "kv_window": 16, "kv_budget": "25%"})
    assert all3["kv_quality_loss"] == pytest.approx((1 + p) * (1 + max(w, b)) - 1)
    assert table.combined["predicted"] == pytest.approx(all3["kv_quality_loss"])  # the worst combination
    odd = table.predict({"kv_budget": "64KiB"})  # a size, not one of the space's shares
    assert odd["kv_quality_loss"] == 0.0 and odd["unscored"] == ["kv_budget=64KiB"]


def test_settings_and_models_are_checked(llama) -> None:
    with pytest.raises(InvalidArgumentError, match=r"`prefix` must be < the decode length.*prefix=64, seq_len=64"):
        KVSensitivitySettings(prefix=64)
    with pytest.raises(InvalidArgumentError, match=r"`samples` must be an int >= 1, got 0"):
        KVSensitivitySettings(samples=0)
    with pytest.raises(InvalidArgumentError, match="not device='meta'"):
        measure_kv_sensitivity(load_model("tiny-llama-test", device="meta"), SMALL, use_cache=False)
    with pytest.raises(InvalidArgumentError, match="not a causal language model"):
        measure_kv_sensitivity(load_model("digits-cnn", device="meta").model.to_empty(device="cpu"), SMALL,
                               use_cache=False)


# ---------------------------------------------------------------------------------------------- evaluators
def _expected(ev, x, table, session) -> float:
    kl = ev.evaluate(x).extra["quality_proxy_kl"]
    return math.expm1(kl + table.predict(session)["delta_nll"])


def test_analytic_evaluator_scores_a_small_window_from_the_table(llama, table, weights) -> None:
    cpu = paper_cpu_profile()
    space = SearchSpace.build(llama, cpu, knobs=SESSION_SPACE)
    ev = AnalyticEvaluator(llama, cpu, space=space, sensitivity=weights, kv_sensitivity=table)
    plain = ev.evaluate(Plan())
    flt = ev.evaluate(Plan(session={"kv_precision": "float"}))
    assert flt.quality_loss == plain.quality_loss  # float pages, no eviction: lossless, as measured
    assert flt.extra["quality_kv_proxy"]["kv_quality_loss"] == 0.0 and "quality_ignores_kv" not in flt.extra
    session = {"kv_precision": "float", "kv_window": 16}
    window = ev.evaluate(Plan(session=session))
    assert window.quality_loss > plain.quality_loss
    assert window.quality_loss == pytest.approx(_expected(ev, ev.space.encode(Plan(session=session)), table, session))
    proxy = window.extra["quality_kv_proxy"]
    assert proxy["table"] == table.key and proxy["context"] == 32 and proxy["seq_len"] == 64
    assert proxy["kv_quality_loss"] == pytest.approx(table.loss[("kv_window", "16")])
    assert "KV sensitivity table (per-choice, combined; context 32" in window.method
    assert json.loads(json.dumps(window.to_dict()))  # extra stays JSON-ready (the result cache writes it)
    with pytest.raises(InvalidArgumentError, match=r"is at context 32, but the workload's context is 200"):
        AnalyticEvaluator(llama, cpu, space=space, sensitivity=weights, kv_sensitivity=table,
                          workload=Workload(task="causal-lm", context=200))
    with pytest.raises(InvalidArgumentError, match=r"`kv_sensitivity` must be 'auto', a KVSensitivitySettings"):
        AnalyticEvaluator(llama, cpu, space=space, sensitivity=weights, kv_sensitivity="always")


def test_settings_pick_a_cheaper_auto_table(llama, weights, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AUTOSURGEON_CACHE", str(tmp_path))
    cpu = paper_cpu_profile()
    space = SearchSpace.build(llama, cpu, knobs=("precision", "kv_budget"))
    ev = AnalyticEvaluator(llama, cpu, space=space, sensitivity=weights, kv_sensitivity=KVSensitivitySettings(
        context=100, samples=2, check_combined=False), workload=Workload(task="causal-lm", context=100))
    m = ev.evaluate(Plan(session={"kv_budget": "25%"}))
    table = ev.kv_table()
    assert table.tokens == 2 * (100 - 16 + 1) and table.context == 100 and table.combined == {}
    assert (tmp_path / "sensitivity" / f"kv-{table.key}.json").is_file()
    assert m.extra["quality_kv_proxy"]["seq_len"] == 100  # a workload past 64 positions is decoded in full


def test_auto_table_in_the_profiled_evaluator_and_a_sweep_style_ranking(llama, weights) -> None:
    local = resolve_profile("local")
    space = SearchSpace.build(llama, local, knobs=("precision", "kv_precision", "kv_window"))
    ev = ProfiledEvaluator(llama, local, space=space, sensitivity=weights, measure_all=False, use_disk_cache=False,
                           timing=TimingSettings(warmup=0, repeats=1, step_warmup=1, step_repeats=2, clock="cpu"))
    # two vectors equal but for kv_window, as a sweep would draw them (int8 weights everywhere, int8 KV)
    x = space.default_vector()
    for i, v in enumerate(space.variables):
        if v.knob == "precision" and "int8" in v.choices and v.mask[v.choices.index("int8")]:
            x[i] = v.choices.index("int8")
    x[space.index_of(SESSION_UNIT, "kv_precision")] = space.variable(SESSION_UNIT, "kv_precision").choices.index("int8")
    windowed = x.copy()
    windowed[space.index_of(SESSION_UNIT, "kv_window")] = space.variable(SESSION_UNIT, "kv_window").choices.index(16)
    full, short = ev.evaluate(space.repair(x)), ev.evaluate(space.repair(windowed))
    assert short.quality_loss > full.quality_loss  # before the table, both scored the same
    assert short.peak_bytes["cpu"] <= full.peak_bytes["cpu"]  # what a memory-driven sweep was rewarded for
    table = ev.kv_table()  # "auto": measured at the workload's context on first use, cached
    assert table is not None and table.context == ev.workload.context == 32
    assert short.quality_loss == pytest.approx(_expected(ev, space.repair(windowed), table,
                                                         {"kv_precision": "int8", "kv_window": 16}))
    assert short.extra["quality_kv_proxy"]["nats"]["kv_window"] > 0 and "profiled" in short.method


def test_meta_models_and_opt_out_still_say_kv_is_scored_as_lossless(llama, weights) -> None:
    cpu = paper_cpu_profile()
    meta = load_model("tiny-llama-test", device="meta")
    space = SearchSpace.build(meta, cpu, knobs=("precision", "kv_window"))
    ev = AnalyticEvaluator(meta, cpu, space=space, sensitivity=weights)
    m = ev.evaluate(Plan(session={"kv_window": 16}))
    assert m.extra["quality_ignores_kv"] is True and "meta" in m.extra["quality_kv_proxy"]["reason"]
    assert "scored as lossless" in m.method
    off = AnalyticEvaluator(llama, cpu, space=SearchSpace.build(llama, cpu, knobs=("precision", "kv_window")),
                            sensitivity=weights, kv_sensitivity=None)
    assert off.evaluate(Plan(session={"kv_window": 16})).extra["quality_ignores_kv"] is True
    assert np.isfinite(off.evaluate(Plan()).quality_loss)
