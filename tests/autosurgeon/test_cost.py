"""Cost models: pipeline formula, links, power model, analytic roofline, profiled table caching."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import autosurgeon.cost.base as cost
from autosurgeon.cost.profiled import Profiler, ProfiledTable, TimingSettings, Workload
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.hardware.resolve import resolve_profile
from autosurgeon.hardware.profile import ComputeUnit, CpuInfo, GpuInfo, HardwareProfile
from autosurgeon.space.search_space import SearchSpace
from autosurgeon.zoo import LoadedModel

from _paper_profiles import paper_cpu_profile


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_lm() -> LoadedModel:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128)
    return LoadedModel(name="tiny", model=LlamaForCausalLM(cfg).eval(), task="causal-lm", source="factory")


def gpu_profile(*, links: dict[str, float] | None = None, integrated: bool = False,
                power: dict[str, float] | None = None) -> HardwareProfile:
    return HardwareProfile(
        name="test-gpu", measured=False,
        cpu=CpuInfo(model="t", arch="x86_64", physical_cores=4, logical_cores=4, memory_bytes=2**34),
        gpus=(GpuInfo(index=0, name="g", memory_bytes=2**33, compute_capability="8.0", integrated=integrated),),
        units=(ComputeUnit(name="cuda:0", kind="gpu", memory_bytes=2**33, memory_bandwidth=1e12,
                           gemm_flops={"float32": 1e13}),
               ComputeUnit(name="cpu", kind="cpu", memory_bytes=2**34, memory_bandwidth=5e10,
                           gemm_flops={"float32": 1e11})),
        links=links if links is not None else {"h2d_pinned": 2e10, "disk_read": 1e9}, power=power or {})


def test_pipeline_formula() -> None:
    steps = [(1.0, 0.0, 0.0, False), (1.0, 3.0, 0.5, True), (2.0, 1.0, 0.5, True)]
    assert cost.pipeline_latency(steps, lookahead=2) == pytest.approx(1 + (3 + 0.5) + (2 + 0.5))
    assert cost.pipeline_latency(steps, lookahead=0) == pytest.approx(1 + (1 + 3 + 0.5) + (2 + 1 + 0.5))


def test_links_h2d_disk_and_integrated() -> None:
    p = gpu_profile()
    gpu, cpu = p.unit("cuda:0"), p.unit("cpu")
    assert cost.transfer_seconds_per_byte(p, gpu, "cpu", warm_disk=False)[0] == pytest.approx(1 / 2e10)
    # disk -> RAM -> GPU: the two legs in series
    assert cost.transfer_seconds_per_byte(p, gpu, "disk", warm_disk=False)[0] == pytest.approx(1 / 1e9 + 1 / 2e10)
    # a warm page cache reads at the CPU's copy rate (read + write bandwidth / 2)
    assert cost.transfer_seconds_per_byte(p, cpu, "disk", warm_disk=True)[0] == pytest.approx(2 / 5e10)
    shared = gpu_profile(links={}, integrated=True)
    per_byte, how = cost.transfer_seconds_per_byte(shared, shared.unit("cuda:0"), "cpu", warm_disk=False)
    assert per_byte == pytest.approx(2 / 1e12) and "shared-DRAM" in how
    with pytest.raises(InvalidArgumentError, match="h2d_pinned"):
        nolink = gpu_profile(links={})
        cost.transfer_seconds_per_byte(nolink, nolink.unit("cuda:0"), "cpu", warm_disk=False)
    assert cost.disk_is_warm(p, 2**20, "auto") and not cost.disk_is_warm(p, 2**40, "auto")
    with pytest.raises(InvalidArgumentError, match="disk_cache"):
        cost.disk_is_warm(p, 1, "lukewarm")


def test_power_model() -> None:
    h100 = resolve_profile("h100-80gb")
    idle, peak, how = cost.power_envelope(h100)
    assert (idle, peak) == (pytest.approx(140.0), 700.0) and "TDP" in how
    jetson = cost.power_envelope(resolve_profile("jetson-agx-orin-64gb"))
    assert jetson[1] == 60.0 and "MAXN" in jetson[2]
    assumed = cost.power_envelope(gpu_profile())
    assert assumed[1] == cost.DEFAULT_WATTS_PER_CORE * 4 and "ASSUMED" in assumed[2]
    e_idle, _ = cost.energy_j(h100, 1.0, 0.0)
    e_busy, _ = cost.energy_j(h100, 1.0, 5.0)  # utilisation clipped to 1
    assert e_idle == pytest.approx(140.0) and e_busy == pytest.approx(700.0)


def test_analytic_model_streams_cost_more_and_int4_reads_less() -> None:
    from autosurgeon.evaluate import AnalyticEvaluator

    lm = tiny_lm()
    ev = AnalyticEvaluator(lm, gpu_profile())
    model, space = ev.models["decode"], ev.space
    x0 = space.default_vector()
    base = model.breakdown(x0)
    assert base["transfer_s"] == 0 and base["latency_s"] > base["overhead_s"] > 0
    streamed = x0.copy()
    for i, v in enumerate(space.variables):
        if v.knob == "placement":
            streamed[i] = v.choices.index("gpu<-disk")
    s = model.breakdown(streamed)
    assert s["latency_s"] > base["latency_s"] and s["streamed_bytes"] > 0
    # int4 weights: fewer bytes to read, so the roofline of the (memory-bound) decode falls
    int4 = x0.copy()
    for i, v in enumerate(space.variables):
        if v.knob == "precision" and "int4" in v.choices and v.mask[v.choices.index("int4")]:
            int4[i] = v.choices.index("int4")
    assert model.breakdown(int4)["busy_s"] < base["busy_s"]
    with pytest.raises(InvalidArgumentError, match="n_ops"):
        type(model)(space, None, gpu_profile(), n_ops=-1)


def host_profile() -> HardwareProfile:
    """This machine's CPU on paper (measuring the local profile would cost seconds; the table times here)."""
    return paper_cpu_profile(name="host", model="host", links={"disk_read": 1e9})


def test_profiled_table_is_cached_on_disk_and_reused(tmp_path, monkeypatch) -> None:
    lm = tiny_lm()
    profile = host_profile()
    space = SearchSpace.build(lm, profile)
    timing = TimingSettings(warmup=0, repeats=2, step_warmup=1, step_repeats=2, clock="cpu", rounds=1)  # the cache here
    work = Workload("causal-lm", context=8)
    first = Profiler(lm, space, profile, work, timing=timing, cache_dir=tmp_path)
    n = first.measure_all()
    assert n > 0 and first.path.is_file()
    table = first.table
    assert set(table.overhead_s) == {"decode", "prefill"} and all(v >= 0 for v in table.overhead_s.values())
    assert table.n_ops["decode"] > 0 and "cpu<-disk" in table.stream
    assert all(math.isfinite(v) and v >= 0 for v in table.unit_s.values())
    assert set(table.spread) >= set(table.unit_s) and f"baseline|decode" in table.spread  # every entry's spread
    assert table.settings["load_1m"] is None or table.settings["load_1m"] >= 0
    # A second profiler with the same settings reads the file and measures nothing but its spot check.
    calls = []
    monkeypatch.setattr(Profiler, "_context_run", lambda self, *a, **k: calls.append(a))
    monkeypatch.setattr(Profiler, "_session_step",
                        lambda self, *a, **k: calls.append(k) or (table.baseline_s["decode"], None, {}))
    again = Profiler(lm, space, profile, work, timing=timing, cache_dir=tmp_path)
    assert again.table.unit_s == table.unit_s and again.table.stream == table.stream
    x = space.random_vector(np.random.default_rng(0))
    assert again.compose(x, "decode")["latency_s"] == pytest.approx(first.compose(x, "decode")["latency_s"])
    assert calls == [{"warmup": 2, "repeats": 5, "prefill": False}] and again.load_check["verdict"] == "kept"
    assert again.drift["how"] == "the load-time spot check"  # the first use stands on it (profiled_drift.py)
    # Other settings: another key, another file.
    other = Profiler(lm, space, profile, work, timing=TimingSettings(repeats=3), cache_dir=tmp_path)
    assert other.path != first.path and not other.table.unit_s
    assert ProfiledTable.from_json(table.to_json()) == table
    with pytest.raises(InvalidArgumentError, match="_version"):
        ProfiledTable.from_json(table.to_json().replace('"_version": 2', '"_version": 7'))


def test_a_poisoned_or_noisy_cached_table_is_measured_again(tmp_path, monkeypatch) -> None:
    """A table whose unmodified step is far slower than a spot check now (measured under load) is re-measured;
    one faster than now is kept (the machine is loaded now) and the check recorded; noisy entries are
    re-measured once, then labelled, and a mostly noisy table is not trusted."""
    import json

    import autosurgeon.cost.profiled as profiled
    import autosurgeon.cost.profiled_context as profiled_context

    lm = tiny_lm()
    profile = host_profile()
    space = SearchSpace.build(lm, profile)
    # rounds=1: each choice in its own block, so its re-measure of noisy entries is what is checked here
    timing = TimingSettings(warmup=0, repeats=3, step_warmup=1, step_repeats=3, clock="cpu", rounds=1)
    work = Workload("causal-lm", context=8)
    first = Profiler(lm, space, profile, work, timing=timing, cache_dir=tmp_path)
    first.ensure_base()
    first.save()
    truth = first.table.baseline_s["decode"]

    def cached_baseline(factor: float) -> None:
        data = json.loads(first.path.read_text())
        data["_data"]["baseline_s"]["decode"] = truth * factor
        data["_data"]["noisy"], data["_data"]["spread"] = [], {"baseline|decode": 0.0}
        first.path.write_text(json.dumps(data))

    cached_baseline(50.0)  # poisoned: measured under heavy load
    assert not Profiler(lm, space, profile, work, timing=timing, cache_dir=tmp_path).table.baseline_s
    from autosurgeon.cost.profiled_trust import cached_tables_as_is

    cached_baseline(50.0)
    with cached_tables_as_is():  # a sweep's Dask worker: the coordinator's table, as it is, whatever now says
        taken = Profiler(lm, space, profile, work, timing=timing, cache_dir=tmp_path)
    assert taken.table.baseline_s["decode"] == pytest.approx(truth * 50.0)
    cached_baseline(0.02)  # faster than anything now: kept, the check says why
    kept = Profiler(lm, space, profile, work, timing=timing, cache_dir=tmp_path)
    assert kept.table.baseline_s["decode"] == pytest.approx(truth * 0.02)
    assert kept.table.checks[-1]["verdict"].startswith("kept (slower now")
    # Noisy: every spread reads 0.5; each choice is timed twice, then its entries are labelled noisy.
    runs = []
    original = Profiler._context_run
    monkeypatch.setattr(profiled, "iqr_ratio", lambda values: 0.5)
    monkeypatch.setattr(profiled_context, "iqr_ratio", lambda values: 0.5)  # the context runs' entries
    monkeypatch.setattr(Profiler, "_context_run", lambda self, *a, **k: runs.append(k) or original(self, *a, **k))
    noisy = Profiler(lm, space, profile, work, timing=timing, cache_dir=tmp_path / "n")
    noisy.measure_all()
    assert runs[:2] == [{}, {"retry": False}]
    assert noisy.table.noisy and set(noisy.table.noisy) <= set(noisy.table.spread)
    assert noisy.table.noisy_share() > 0.5
    monkeypatch.setattr(Profiler, "_context_run", original)
    assert not Profiler(lm, space, profile, work, timing=timing, cache_dir=tmp_path / "n").table.unit_s


def test_timing_settings_are_checked() -> None:
    with pytest.raises(InvalidArgumentError, match="clock"):
        TimingSettings(clock="sundial")
    with pytest.raises(InvalidArgumentError, match="repeats"):
        TimingSettings(repeats=0)
    with pytest.raises(InvalidArgumentError, match="mode"):
        TimingSettings(mode="guess")
    with pytest.raises(InvalidArgumentError, match="context"):
        Workload("causal-lm", context=0)
