"""Evaluators: analytic on paper presets, profiled and runtime on tiny models, the result cache, bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from autosurgeon.cost.profiled import TimingSettings, Workload
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.evaluate import (
    AnalyticEvaluator,
    EvaluationCache,
    ProfiledEvaluator,
    RuntimeEvaluator,
    plan_hash,
)
from autosurgeon.cost.footprint import plan_memory
from autosurgeon.hardware.profile import HardwareProfile
from autosurgeon.models.digits import DigitsCNN
from autosurgeon.plan import Plan
from autosurgeon.zoo import LoadedModel

from _paper_profiles import paper_cpu_profile

FAST = TimingSettings(warmup=0, repeats=2, step_warmup=1, step_repeats=3, clock="cpu")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_lm(*, device: str = "cpu") -> LoadedModel:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).eval()
    return LoadedModel(name="tiny", model=model, task="causal-lm", source="factory")


def digits() -> LoadedModel:
    torch.manual_seed(0)
    return LoadedModel(name="digits", model=DigitsCNN(width=8).eval(), task="image-classification",
                       source="factory", image_shape=(1, 8, 8), input_name="x")


def host_profile() -> HardwareProfile:
    return paper_cpu_profile(name="host", model="host", links={"disk_read": 1e9})


def with_all(space, knob: str, value: str, x: np.ndarray | None = None) -> np.ndarray:
    x = space.default_vector() if x is None else x.copy()
    for i, v in enumerate(space.variables):
        if v.knob == knob and value in v.choices and v.mask[v.choices.index(value)]:
            x[i] = v.choices.index(value)
    return space.repair(x)


def finite_positive(m) -> bool:
    return all(math.isfinite(v) and v > 0 for v in (m.latency_s, m.prefill_s, m.tokens_per_s, m.energy_j))


@pytest.mark.parametrize("device", ["h100-80gb", "jetson-agx-orin-64gb"])
def test_analytic_on_paper_presets(device) -> None:
    ev = AnalyticEvaluator(tiny_lm(device="meta"), device)  # no weights, no such hardware here
    space = ev.space
    base = ev.evaluate(space.default_vector())
    assert finite_positive(base) and base.memory_bytes > 0
    assert set(base.labels.values()) == {"estimated"} and "paper" in base.method
    assert base.peak_bytes["gpu"] == plan_memory(space, space.default_vector())["gpu"]
    streamed = ev.evaluate(with_all(space, "placement", "gpu<-cpu"))
    assert streamed.latency_s > base.latency_s
    assert streamed.peak_bytes["gpu"] < base.peak_bytes["gpu"] and streamed.peak_bytes["cpu"] > 0
    int4 = ev.evaluate(with_all(space, "precision", "int4"))
    assert int4.memory_bytes < base.memory_bytes and finite_positive(int4)
    assert int4.latency_s <= base.latency_s  # fewer weight bytes: decode is memory-bound


def test_analytic_classifier_per_sample() -> None:
    ev = AnalyticEvaluator(digits(), "h100-80gb", workload=Workload("image-classification", batch=4))
    m = ev.evaluate(ev.space.default_vector())
    assert m.phase == "sample" and m.prefill_s is None and m.tokens_per_s is None
    assert math.isfinite(m.latency_s) and m.latency_s > 0 and m.labels["latency_s"] == "estimated"


def test_cache_hits_persistence_and_keys(tmp_path) -> None:
    lm = tiny_lm(device="meta")
    path = tmp_path / "evals.jsonl"
    ev = AnalyticEvaluator(lm, "h100-80gb", cache=EvaluationCache(path))
    x = with_all(ev.space, "precision", "int8")
    first = ev.evaluate(x)
    assert ev.evaluate(ev.space.decode(x)) is first  # a Plan of the same decisions hits too
    assert (ev.calls, ev.hits, ev.evaluated) == (2, 1, 1) and ev.evaluations_per_second > 0
    # A sweep that restarts reloads the file and evaluates nothing again.
    resumed = AnalyticEvaluator(lm, "h100-80gb", space=ev.space, cache=EvaluationCache(path))
    assert resumed.evaluate(x) == first and resumed.evaluated == 0
    # Other settings, other key: no stale hit.
    slower = AnalyticEvaluator(lm, "h100-80gb", space=ev.space, launch_overhead_s=1e-3, cache=resumed.cache)
    assert slower.evaluate(x).latency_s > first.latency_s and slower.evaluated == 1
    assert plan_hash(ev.space.decode(x, metadata={"by": "a"})) == plan_hash(ev.space.decode(x, metadata={"by": "b"}))


def test_bad_plans_are_refused(tmp_path) -> None:
    ev = AnalyticEvaluator(tiny_lm(device="meta"), "h100-80gb")
    plan = ev.space.decode(ev.space.default_vector())
    other = Plan(rules=plan.rules, model_fingerprint="0" * 16, device_fingerprint=plan.device_fingerprint)
    with pytest.raises(InvalidArgumentError, match="model fingerprint 0000000000000000"):
        ev.evaluate(other)
    with pytest.raises(InvalidArgumentError, match="shape"):
        ev.evaluate(np.zeros(3, dtype=np.int64))
    x = ev.space.default_vector()
    i = next(i for i, v in enumerate(ev.space.variables) if v.knob == "precision" and not all(v.mask))
    x[i] = list(ev.space.variables[i].mask).index(False)
    with pytest.raises(InvalidArgumentError, match="invalid decision"):
        ev.evaluate(x)
    with pytest.raises(InvalidArgumentError, match="LoadedModel"):
        AnalyticEvaluator(torch.nn.Linear(2, 2), "h100-80gb")


def test_profiled_and_runtime_on_tiny_llama(tmp_path) -> None:
    lm = tiny_lm()
    profile = host_profile()
    work = Workload("causal-lm", context=8)
    prof = ProfiledEvaluator(lm, profile, workload=work, timing=FAST, cache_dir=tmp_path)
    space = prof.space
    rt = RuntimeEvaluator(lm, profile, space=space, workload=work, timing=FAST, quality_samples=1)
    x_int8 = with_all(space, "precision", "int8")
    x_stream = with_all(space, "placement", "cpu<-disk", x_int8)
    for x in (space.default_vector(), x_stream):
        p, r = prof.evaluate(x), rt.evaluate(x)
        assert p.labels["latency_s"] == "profiled" and p.labels["peak_bytes"] == "estimated"
        assert {r.labels[k] for k in ("latency_s", "prefill_s", "peak_bytes", "quality_loss")} == {"measured"}
        assert r.labels["energy_j"] in ("measured", "estimated") and r.energy_j > 0
        assert finite_positive(p) and finite_positive(r)
        # The byte formula is the runtime's accounting: memory agrees exactly.
        assert p.peak_bytes == r.peak_bytes
    base = rt.evaluate(space.default_vector())
    assert base.quality_loss == pytest.approx(0.0, abs=1e-9)  # the unmodified model against itself
    streamed = rt.evaluate(x_stream)
    assert streamed.peak_bytes["disk"] > 0 and streamed.memory_bytes < base.memory_bytes
    assert 0 <= abs(streamed.quality_loss) < 0.5
    assert prof.table.stream["cpu<-disk"]["fetch_s"] >= 0 and prof.evaluations_per_second > 0
    # Calibrated: a line fitted on runtime plans drawn with another seed, applied to the composition.
    cal = ProfiledEvaluator(lm, profile, space=space, workload=work, timing=FAST, cache_dir=tmp_path,
                            calibrate_with=rt, calibration_plans=2, calibration_seed=7)
    c = cal.calibration
    assert len(c["points"]) == 2 and c["b"] > 0 and c["seed"] == 7
    m = cal.evaluate(x_int8)
    assert m.latency_s == pytest.approx(max(1e-9, c["a"] + c["b"] * m.extra["composed_s"]))
    assert "calibrated on 2 runtime plans" in m.method and cal.key(x_int8) != prof.key(x_int8)
    with pytest.raises(InvalidArgumentError, match="calibrate_with"):
        ProfiledEvaluator(lm, profile, space=space, workload=work, timing=FAST, cache_dir=tmp_path,
                          calibration_plans=2)


def test_profiled_classifier_without_streaming(tmp_path) -> None:
    ev = ProfiledEvaluator(digits(), host_profile(), workload=Workload("image-classification", batch=2),
                           timing=FAST, cache_dir=tmp_path)
    m = ev.evaluate(with_all(ev.space, "precision", "bfloat16"))
    assert m.phase == "sample" and m.labels["latency_s"] == "profiled" and m.latency_s > 0
    assert not ev.table.stream  # a CNN without a block list has no placement variables
