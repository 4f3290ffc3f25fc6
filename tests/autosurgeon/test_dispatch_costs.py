"""Eager dispatch costs a GPU profile records, the analytic model pricing them, and packing kernels' prepare cost."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from test_cost import gpu_profile
from test_evaluate import host_profile, tiny_lm, with_all

from autosurgeon.cost.analytic import AnalyticCostModel
from autosurgeon.cost.gemv import GemvTable, entry_key, measure_entries
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.evaluate import AnalyticEvaluator
from autosurgeon.hardware.dispatch import DispatchCosts, dispatch_costs, measure_dispatch
from autosurgeon.hardware.profile import HardwareProfile, ProfileFormatError
from autosurgeon.hardware.spot_check import trust_problems


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def record(*, op_s: float = 5e-6, step_s: float = 20e-6, f32: float = 10e-6, int8: float = 50e-6) -> dict:
    return {"op_s": op_s, "step_s": step_s, "linear": {"float32|auto": {"s": f32, "ops": 2},
                                                      "int8|auto": {"s": int8, "ops": 6}}}


def measured_gpu(dispatch: dict | None) -> HardwareProfile:
    return dataclasses.replace(gpu_profile(), dispatch={"cuda:0": dispatch} if dispatch is not None else {})


def test_measure_dispatch_times_ops_step_and_each_linear_format_on_the_device():
    out = measure_dispatch(torch.device("cpu"), rounds=3, calls=2,
                           formats=[("float32", "auto"), ("int8", "auto"), ("int4", "no-such-kernel")])
    assert out["op_s"] > 0 and out["op_mix_s"] > 0 and out["step_s"] > 0 and out["shape"] == [256, 256]
    assert "HF Llama decode step" in out["method"]
    assert set(out["linear"]) == {"float32|auto", "int8|auto"}
    assert all(e["s"] > 0 and e["ops"] >= 1 and "noisy" in e for e in out["linear"].values())
    assert len(out["skipped"]) == 1 and out["skipped"][0].startswith("int4|no-such-kernel")
    assert DispatchCosts.from_record(out, where="t").floor("int8", "cpu-avx2") == DispatchCosts.from_record(
        out, where="t").linear["int8|auto"]  # a kernel it lacks: the format's "auto" entry
    with pytest.raises(InvalidArgumentError, match="`rounds` must be >= 3"):
        measure_dispatch("cpu", rounds=2)


def test_profile_keeps_checks_and_round_trips_the_dispatch_record():
    p = measured_gpu(record())
    assert HardwareProfile.from_json(p.to_json()) == p
    assert dispatch_costs(p, "cuda:0").op_s == 5e-6 and dispatch_costs(p, "cpu") is None
    bad = p.to_dict()
    bad["dispatch"]["cuda:0"]["op_s"] = -1.0
    with pytest.raises(ProfileFormatError, match=r"dispatch\['cuda:0'\].op_s must be seconds"):
        HardwareProfile.from_dict(bad)
    # A cached measured GPU profile from before the record existed is measured again.
    units = tuple(dataclasses.replace(u, measured=True) if u.kind == "gpu" else u for u in p.units)
    old = dataclasses.replace(p, units=units, dispatch={})
    assert any("without dispatch costs" in s for s in trust_problems(old))


def test_gpu_analytic_prices_each_format_by_its_measured_floor_and_the_ops_around_it():
    lm = tiny_lm()
    paper = AnalyticEvaluator(lm, measured_gpu(None))
    ev = AnalyticEvaluator(lm, measured_gpu(record()), space=paper.space)
    space, m = ev.space, ev.models["decode"]
    called = [leaf for leaf in space.leaves.values()
              if leaf.kind == "linear" and leaf.out_features and m.info[leaf.name].flops]
    assert called and m.launched_ops == m.n_ops - 2 * len(called)  # the floors' own ops leave the launch term
    x0, int8 = space.default_vector(), with_all(space, "precision", "int8")
    base, q = m.breakdown(x0), m.breakdown(int8)
    assert base["overhead_s"] == pytest.approx(m.launched_ops * 5e-6 + 20e-6)
    # Tiny layers: roofline far below the floors, so each int8 linear adds the floors' difference.
    assert q["latency_s"] - base["latency_s"] == pytest.approx(40e-6 * len(called), rel=0.02)
    assert ev.evaluate(int8).latency_s > ev.evaluate(x0).latency_s
    assert "measured eager dispatch" in ev.evaluate(x0).method
    # Without the record (paper): today's behaviour, said so; every precision at one op count, int8 not slower.
    pm = paper.models["decode"]
    assert pm.launched_ops == pm.n_ops and pm.breakdown(int8)["latency_s"] <= pm.breakdown(x0)["latency_s"]
    assert "GPU dispatch costs not in the profile" in paper.evaluate(x0).method
    assert ev.settings() != paper.settings()


def test_packing_kernels_record_their_prepare_and_streamed_layers_pay_it():
    out = measure_entries([("int8-dynamic", "auto", 64, 64), ("int8", "auto", 64, 64)], rounds=3, calls=2)
    dyn, plain = out[entry_key("int8-dynamic", "auto", 64, 64, 1)], out[entry_key("int8", "auto", 64, 64, 1)]
    assert dyn["prepare_s"] > 0 and "prepare_s" not in plain  # fbgemm prepacks; the default int8 kernel does not
    lm = tiny_lm()
    ev = AnalyticEvaluator(lm, host_profile(), gemv=None)
    space = ev.space
    entries = {}
    for leaf in space.leaves.values():
        if leaf.kind == "linear" and leaf.out_features:
            i, o = leaf.weight_numel // leaf.out_features, leaf.out_features
            entries[entry_key("float32", "auto", i, o, 1)] = {"median_s": 1e-5, "dispersion": 0.0, "ops": 1}
            entries[entry_key("int8-dynamic", "auto", i, o, 1)] = {"median_s": 2e-5, "dispersion": 0.0, "ops": 1,
                                                                   "prepare_s": 1e-3}
    table = GemvTable(device="d", torch_version=torch.__version__, threads=1, entries=entries,
                      launch={"median_s": 1e-6})
    m = ev.models["decode"]
    model = AnalyticCostModel(space, m_analysis(ev), ev.profile, n_ops=m.n_ops, gemv=table)
    dyn_x = with_all(space, "precision", "int8-dynamic")
    streamed = with_all(space, "placement", "cpu<-disk", dyn_x)
    blocks = [b for b in model.breakdown(streamed)["blocks"] if b["placement"] == "cpu<-disk"]
    assert blocks
    resident_c = {b["name"]: b["compute_s"] for b in model.breakdown(dyn_x)["blocks"]}
    packed = sum(1 for leaf in space.leaves.values() if leaf.kind == "linear" and leaf.name.startswith(
        blocks[0]["name"] + "."))
    assert blocks[0]["compute_s"] - resident_c[blocks[0]["name"]] == pytest.approx(1e-3 * packed)


def m_analysis(ev):
    from autosurgeon.analysis.model_analysis import analyze

    return analyze(ev.loaded.model, ev.loaded.example_inputs(1, ev.workload.context, phase="decode", seed=0),
                   phase="decode")


def test_a_measured_gpu_rest_replaces_the_launch_term_there_and_needs_the_dispatch_record():
    lm = tiny_lm()
    ev = AnalyticEvaluator(lm, measured_gpu(record()))
    space, m = ev.space, ev.models["decode"]
    model = AnalyticCostModel(space, m_analysis(ev), ev.profile, n_ops=m.n_ops, rest_s=2e-3)
    base = model.breakdown(space.default_vector())
    called = [leaf for leaf in space.leaves.values()
              if leaf.kind == "linear" and leaf.out_features and m.info[leaf.name].flops]
    # The rest holds the step's non-linear leaves and its per-op/per-step costs; each linear adds its floor.
    assert base["overhead_s"] == 2e-3
    assert base["latency_s"] == pytest.approx(2e-3 + 10e-6 * len(called), rel=0.02)
    with pytest.raises(InvalidArgumentError, match="`rest_s` must be >= 0 seconds and comes with a `gemv` table"):
        AnalyticCostModel(space, m_analysis(ev), measured_gpu(None), n_ops=m.n_ops, rest_s=1e-3)
    # The evaluator measures the rest only on a measured GPU profile with the record and real weights.
    assert not ev._gpu_rest_applies()  # a paper profile
    measured = dataclasses.replace(ev.profile, measured=True)
    assert AnalyticEvaluator(lm, measured_gpu(None), space=space)._gpu_rest_applies() is False
    probe = object.__new__(AnalyticEvaluator)
    probe.profile, probe.loaded = measured, lm
    assert probe._gpu_rest_applies() and probe._probe_timing().clock == "wall"


def test_each_kernel_of_a_format_is_priced_by_its_own_entry():
    """The per-leaf price cache is keyed by the kernel too: a named kernel priced first must not stand for "auto"."""
    lm = tiny_lm()
    ev = AnalyticEvaluator(lm, host_profile(), gemv=None)
    space, m = ev.space, ev.models["decode"]
    entries = {}
    for leaf in space.leaves.values():
        if leaf.kind == "linear" and leaf.out_features:
            i, o = leaf.weight_numel // leaf.out_features, leaf.out_features
            entries[entry_key("float32", "auto", i, o, 1)] = {"median_s": 1e-5, "dispersion": 0.0, "ops": 1}
            entries[entry_key("int8", "auto", i, o, 1)] = {"median_s": 2e-5, "dispersion": 0.0, "ops": 1}
            entries[entry_key("int8", "torch-dequant", i, o, 1)] = {"median_s": 9e-5, "dispersion": 0.0, "ops": 1}
    table = GemvTable(device="d", torch_version=torch.__version__, threads=1, entries=entries,
                      launch={"median_s": 1e-6})
    model = AnalyticCostModel(space, m_analysis(ev), ev.profile, n_ops=m.n_ops, gemv=table)
    from autosurgeon.cost.base import LeafChoice

    leaf = next(leaf for leaf in space.leaves.values() if leaf.kind == "linear" and leaf.out_features)
    named = LeafChoice(leaf, "int8", 128, "torch-dequant", True)
    auto = LeafChoice(leaf, "int8", 128, "auto", True)
    assert model.leaf_seconds(named, "cpu")[0] == 9e-5
    assert model.leaf_seconds(auto, "cpu")[0] == 2e-5


def test_a_measured_gpu_takes_the_measured_rest_and_streaming_costs(monkeypatch):
    """On a measured GPU with dispatch costs (run there: stubbed here, the GPU probes need a GPU) the evaluator
    prices with the step's measured rest and the measured exposed streaming costs, as on a measured CPU."""
    lm = tiny_lm()
    monkeypatch.setattr(AnalyticEvaluator, "_gpu_rest_applies", lambda self: True)
    monkeypatch.setattr(AnalyticEvaluator, "_rest", lambda self, phase: {
        "median_s": 2e-3 if phase == "prefill" else 1e-3, "prefill_s": 2e-3, "dispersion": 0.01, "noisy": False})
    monkeypatch.setattr(AnalyticEvaluator, "_stream_costs", lambda self: {
        "gpu<-cpu": {"fetch_s": 1e-4, "s_per_byte": 0.0}})
    ev = AnalyticEvaluator(lm, measured_gpu(record()))
    m, space = ev.models["decode"], ev.space
    assert m.rest_s == 1e-3 and ev.models["prefill"].rest_s == 2e-3 and m.stream["gpu<-cpu"]["fetch_s"] == 1e-4
    x0 = space.default_vector()
    streamed = with_all(space, "placement", "gpu<-cpu")
    parts = m.breakdown(streamed)
    fetches = parts["fetch_s"] / 1e-4  # the measured cost per fetch, a whole number of fetches
    assert fetches >= 1 and fetches == pytest.approx(round(fetches))
    assert parts["latency_s"] - m.breakdown(x0)["latency_s"] == pytest.approx(parts["fetch_s"], rel=1e-6)
    assert "measured 100 us/fetch" in parts["link_notes"][0]
    assert not AnalyticEvaluator(lm, measured_gpu(record()), gpu_rest=False).models["decode"].rest_s


def test_a_streamed_layer_left_at_auto_costs_the_unpacked_kernel_the_profile_recorded():
    """On a GPU whose default int4 kernel packs (tinygemm), the runtime runs a streamed int4 layer with the unpacked
    kernel (``use_unpacked_kernels``): priced at that kernel's floor, with no repack."""
    rec = record()
    rec["linear"]["int4|auto"] = {"s": 30e-6, "ops": 6}
    rec["linear"]["int4|cuda-int4-gemv"] = {"s": 50e-6, "ops": 4}
    rec["streamed_kernels"] = {"int4": "cuda-int4-gemv"}
    lm = tiny_lm()
    ev = AnalyticEvaluator(lm, measured_gpu(rec))
    space, m = ev.space, ev.models["decode"]
    int4 = with_all(space, "precision", "int4")
    streamed = with_all(space, "placement", "gpu<-cpu", int4)
    resident_blocks = {b["name"]: b["compute_s"] for b in m.breakdown(int4)["blocks"]}
    moved = [b for b in m.breakdown(streamed)["blocks"] if b["placement"] == "gpu<-cpu"]
    assert moved
    block = moved[0]
    called = [leaf for leaf in space.leaves.values() if leaf.name.startswith(block["name"] + ".")
              and leaf.kind == "linear" and m.info[leaf.name].flops]
    # 20 us more per layer (the unpacked kernel's floor), and no tinygemm repack on top.
    assert block["compute_s"] - resident_blocks[block["name"]] == pytest.approx(20e-6 * len(called), rel=0.02)
    bad = dict(rec, streamed_kernels={"int4": 3})
    with pytest.raises(InvalidArgumentError, match="streamed_kernels must map formats to kernel names"):
        DispatchCosts.from_record(bad, where="t")
