"""Decode-shaped GEMV rates: robust measurement, cache with spot check, and the analytic model using them."""
from __future__ import annotations

import json

import pytest
import torch
from test_evaluate import host_profile, tiny_lm, with_all

from autosurgeon.analysis.model_analysis import analyze
from autosurgeon.cost.analytic import AnalyticCostModel
from autosurgeon.cost.gemv import GemvTable, entry_key, gemv_table, kernels_for, measure_entries, table_path
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.evaluate import AnalyticEvaluator


def test_measure_entries_reports_median_and_dispersion():
    out = measure_entries([("float32", "auto", 32, 16), ("int8", "torch-dequant", 32, 16)], rounds=3, calls=2)
    for entry in out.values():
        assert entry["median_s"] > 0 and entry["dispersion"] >= 0 and entry["rounds"] == 3
    with pytest.raises(InvalidArgumentError, match="`rounds` must be >= 3"):
        measure_entries([("float32", "auto", 8, 8)], rounds=2)


def test_table_cached_spot_checked_and_stale_table_remeasured(tmp_path):
    first = gemv_table("dev0", [(32, 16)], ["float32"], threads=1, cache_dir=tmp_path)
    path = table_path("dev0", 1, tmp_path)
    assert path.is_file() and not list(path.parent.glob("*.tmp"))  # atomic: no temp left behind
    key = entry_key("float32", "auto", 32, 16, 1)
    assert first.entries[key]["median_s"] > 0 and first.launch_s > 0
    # A table whose figure is far from what the machine does now is re-measured, not trusted.
    obj = json.loads(path.read_text())
    obj["_data"]["entries"][key]["median_s"] = 1000.0
    path.write_text(json.dumps(obj))
    again = gemv_table("dev0", [(32, 16)], ["float32"], threads=1, cache_dir=tmp_path)
    assert again.entries[key]["median_s"] < 1.0
    # Another process's entries on disk survive a write (merged, not overwritten).
    obj = json.loads(path.read_text())
    obj["_data"]["entries"]["float32|auto|7x7|b1"] = {"median_s": 1e-5, "dispersion": 0.0}
    path.write_text(json.dumps(obj))
    gemv_table("dev0", [(32, 16), (64, 16)], ["float32"], threads=1, cache_dir=tmp_path)
    assert "float32|auto|7x7|b1" in json.loads(path.read_text())["_data"]["entries"]


def test_table_round_trip_and_bad_file():
    t = GemvTable(device="d", torch_version=torch.__version__, threads=1,
                  entries={"float32|auto|4x4|b1": {"median_s": 1e-5, "dispersion": 0.1}}, launch={"median_s": 1e-6})
    assert GemvTable.from_json(t.to_json()).entries == t.entries
    with pytest.raises(InvalidArgumentError, match="not a GemvTable"):
        GemvTable.from_json('{"_type": "Other"}')


def test_analytic_prices_decode_linears_with_the_table():
    """With a table saying int4 GEMVs are 10x slower than float32, the analytic ranks int4 slower (the roofline
    alone ranks it faster: fewer bytes)."""
    loaded = tiny_lm()
    profile = host_profile()
    roofline = AnalyticEvaluator(loaded, profile, gemv=None)
    space = roofline.space
    shapes = {(leaf.weight_numel // leaf.out_features, leaf.out_features)
              for leaf in space.leaves.values() if leaf.kind == "linear"}
    entries = {}
    for i, o in shapes:
        entries[entry_key("float32", "auto", i, o, 1)] = {"median_s": 1e-5, "dispersion": 0.0}
        for kernel in ("auto", "torch-dequant", "dequant-bf16", "torch-int4pack-cpu", "avx512-int4"):
            entries[entry_key("int4", kernel, i, o, 1)] = {"median_s": 1e-4, "dispersion": 0.0}
    table = GemvTable(device=profile.fingerprint, torch_version=torch.__version__, threads=1, entries=entries,
                      launch={"median_s": 2e-6})
    measured = AnalyticEvaluator(loaded, profile, space=space, gemv=table)
    fp32, int4 = space.default_vector(), with_all(space, "precision", "int4")
    assert roofline.evaluate(int4).latency_s < roofline.evaluate(fp32).latency_s
    assert measured.evaluate(int4).latency_s > measured.evaluate(fp32).latency_s
    assert "measured GEMV times" in measured.evaluate(fp32).method
    assert measured.models["decode"].launch_overhead_s == 2e-6


def test_entries_run_as_the_runtime_does_cold_and_count_their_ops():
    """"auto" is measured as the runtime runs it (no kernel named), not taken as the fastest named kernel; a
    ``cold_bytes`` entry rotates through copies of its layer; every entry counts the aten ops of one call."""
    assert kernels_for("int8")[0] == "auto" and kernels_for("float32") == ["auto"]
    out = measure_entries([("float32", "auto", 32, 16), ("int8", "auto", 32, 16)], rounds=3, calls=2,
                          cold_bytes=32 * 16 * 4 * 5)
    f32, i8 = out[entry_key("float32", "auto", 32, 16, 1)], out[entry_key("int8", "auto", 32, 16, 1)]
    assert f32["copies"] == 5 and i8["copies"] > 5  # int8 weights are smaller: more copies for the same bytes
    assert f32["ops"] >= 1 and i8["ops"] >= 1
    table = GemvTable(device="d", torch_version=torch.__version__, threads=1, entries={
        entry_key("int4", "auto", 8, 8, 1): {"median_s": 1e-3, "dispersion": 0.0, "ops": 7},
        entry_key("int4", "torch-int4pack-cpu", 8, 8, 1): {"median_s": 1e-5, "dispersion": 0.0}})
    assert table.seconds("int4", "auto", 8, 8) == 1e-3 and table.ops("int4", "auto", 8, 8) == 7
    assert table.seconds("int4", "torch-int4pack-cpu", 8, 8) == 1e-5
    assert table.ops("int4", "torch-int4pack-cpu", 8, 8) is None
    with pytest.raises(KeyError):
        table.seconds("int8", "auto", 8, 8)


def test_table_taken_with_other_cold_bytes_is_remeasured(tmp_path):
    first = gemv_table("dev0", [(32, 16)], ["float32"], threads=1, cache_dir=tmp_path)
    assert first.cold_bytes == 0 and first.entries[entry_key("float32", "auto", 32, 16, 1)]["copies"] == 1
    again = gemv_table("dev0", [(32, 16)], ["float32"], threads=1, cache_dir=tmp_path, cold_bytes=32 * 16 * 4 * 3)
    assert again.cold_bytes == 32 * 16 * 4 * 3 and again.entries[entry_key("float32", "auto", 32, 16, 1)]["copies"] == 3
    assert GemvTable.from_json(table_path("dev0", 1, tmp_path).read_text()).cold_bytes == again.cold_bytes


def _table_for(space, seconds: float, ops: int) -> GemvTable:
    entries = {}
    for leaf in space.leaves.values():
        if leaf.kind == "linear":
            i, o = leaf.weight_numel // leaf.out_features, leaf.out_features
            entries[entry_key("float32", "auto", i, o, 1)] = {"median_s": seconds, "dispersion": 0.0, "ops": ops}
    return GemvTable(device="d", torch_version=torch.__version__, threads=1, entries=entries,
                     launch={"median_s": 1e-6})


def test_launch_term_leaves_out_the_ops_table_priced_linears_dispatch():
    loaded = tiny_lm()
    ev = AnalyticEvaluator(loaded, host_profile(), gemv=None)
    space, m = ev.space, ev.models["decode"]
    linears = [leaf for leaf in space.leaves.values() if leaf.kind == "linear"]
    table = _table_for(space, 1e-5, 3)
    model = AnalyticCostModel(space, _analysis(ev), ev.profile, n_ops=m.n_ops, gemv=table)
    assert model.launched_ops == m.n_ops - 3 * len(linears)
    parts = model.breakdown(space.default_vector())
    assert parts["overhead_s"] == pytest.approx(model.launched_ops * 1e-6)


def test_measured_rest_of_step_replaces_the_launch_term_and_the_other_leaves():
    loaded = tiny_lm()
    ev = AnalyticEvaluator(loaded, host_profile(), gemv=None)
    space, m = ev.space, ev.models["decode"]
    linears = [leaf for leaf in space.leaves.values() if leaf.kind == "linear"]
    table = _table_for(space, 1e-5, 3)
    model = AnalyticCostModel(space, _analysis(ev), ev.profile, n_ops=m.n_ops, gemv=table, rest_s=2e-3)
    parts = model.breakdown(space.default_vector())
    assert parts["overhead_s"] == 2e-3
    assert parts["latency_s"] == pytest.approx(2e-3 + 1e-5 * len(linears))
    with pytest.raises(InvalidArgumentError, match="`rest_s` must be >= 0 seconds and comes with a `gemv` table"):
        AnalyticCostModel(space, _analysis(ev), ev.profile, n_ops=m.n_ops, rest_s=1e-3)


def _analysis(ev):
    return analyze(ev.loaded.model, ev.loaded.example_inputs(1, ev.workload.context, phase="decode", seed=0),
                   phase="decode")
