"""Session knobs (KV cache and prefetch): vocabulary, Plan.session, the <session> unit of the SearchSpace,
KV/expert bytes against the runtime's own accounting, apply_plan's Session, check_plan, the evaluators."""
from __future__ import annotations

import copy
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from autosurgeon.errors import InvalidArgumentError
from autosurgeon.evaluate import AnalyticEvaluator, plan_hash
from autosurgeon.cost.footprint import kv_budget_bytes, kv_token_bytes, memory_breakdown, plan_memory
from autosurgeon.hardware.resolve import resolve_profile
from autosurgeon.knobs import KNOBS, SESSION_KNOBS, SESSION_UNIT, parse_kv_budget
from autosurgeon.models.digits import DigitsCNN
from autosurgeon.plan import Plan, PlanFormatError
from autosurgeon.plan_check import check_plan
from autosurgeon.space.search_space import SearchSpace
from autosurgeon.transforms import apply_plan
from autosurgeon.transforms.session import session_options
from autosurgeon.zoo import load_model
from runtime.experts import ExpertConfig
from runtime.kvcache import KVCacheConfig, make_kv_cache
from runtime.session import Session
from runtime.spec import BlockSpec, SessionSpec
from runtime.tensors import TensorStore

from _paper_profiles import paper_cpu_profile

SESSION_SPACE = ("precision", "placement", *SESSION_KNOBS)
CNN_INPUTS = {"x": torch.zeros(1, 1, 8, 8)}


@pytest.fixture(scope="module")
def llama():
    return load_model("tiny-llama-test")


@pytest.fixture(scope="module")
def moe():
    return load_model("tiny-moe-test")


@pytest.fixture(scope="module")
def cpu():
    return paper_cpu_profile()


@pytest.fixture(scope="module")
def space(llama, cpu):
    return SearchSpace.build(llama, cpu, knobs=SESSION_SPACE)


# ---------------------------------------------------------------------------------------------- vocabulary, plan
def test_kv_budget_spellings() -> None:
    assert parse_kv_budget("none") == ("none", None) and parse_kv_budget(None) == ("none", None)
    assert parse_kv_budget("50%") == ("share", 0.5)
    assert parse_kv_budget("64KiB") == ("bytes", 65536) and parse_kv_budget(4096) == ("bytes", 4096)
    for bad, match in (("150%", r"share must be in \(0%, 100%\]"), ("lots", "byte size"), (0, "> 0 bytes"),
                       (True, "share or a size")):
        with pytest.raises(InvalidArgumentError, match=match):
            parse_kv_budget(bad)


def test_plan_session_round_trip_and_validation() -> None:
    plan = Plan(default={"precision": "int8"},
                session={"kv_precision": "int8", "kv_budget": "50%", "kv_window": None, "prefetch_depth": 3})
    back = Plan.from_json(plan.to_json())
    assert back == plan and back.session["kv_window"] is None
    assert plan.to_dict()["_version"] == 1 and "session" in plan.to_dict()["_data"]
    with pytest.raises(InvalidArgumentError, match=r"`kv_window` must be an int >= 1.*got 0"):
        Plan(session={"kv_window": 0})
    with pytest.raises(InvalidArgumentError, match="unknown session knob 'precision' .*a per-module knob"):
        Plan(session={"precision": "int8"})
    with pytest.raises(InvalidArgumentError, match="a session knob: put it in the plan's `session`"):
        Plan(default={"kv_precision": "int8"})
    with pytest.raises(InvalidArgumentError, match="`prefetch` must be one of none, markov, lru, gate"):
        Plan(session={"prefetch": "sequential"})


def test_old_plan_without_session_loads_and_writes_as_before() -> None:
    old = {"_type": "autosurgeon.Plan", "_version": 1, "_data": {
        "model_fingerprint": None, "device_fingerprint": None, "default": {"precision": "int8"}, "rules": [],
        "metadata": {"proposer": "a person"}}}
    plan = Plan.from_dict(old)
    assert plan.session == {}
    assert plan.to_dict() == old  # no `session` field is written for a plan without session decisions
    with_session = Plan(default={"precision": "int8"}, session={"kv_precision": "int8"})
    assert plan_hash(plan) != plan_hash(with_session)
    with pytest.raises(PlanFormatError, match="unknown field"):
        Plan.from_dict({**old, "_data": {**old["_data"], "sesion": {}}})


# ---------------------------------------------------------------------------------------------- space
def test_default_spaces_have_no_session_variables(llama, cpu, space) -> None:
    plain = SearchSpace.build(llama, cpu, knobs=("precision", "placement"))
    assert all(v.name != SESSION_UNIT for v in plain.variables)
    assert plain.digest() == SearchSpace.build(llama, cpu, knobs=("precision", "placement")).digest()
    feats, names = plain.features()
    assert not any(n.startswith("knob_kv") for n in names)
    # the session space is the plain one plus the <session> unit at the end
    assert [v.name for v in space.variables[:len(plain)]] == [v.name for v in plain.variables]
    assert [v.knob for v in space.variables[len(plain):]] == list(SESSION_KNOBS)
    feats, names = space.features()
    assert feats.shape == (len(space), len(names)) and "knob_kv_precision" in names


def test_session_masks_with_reasons(llama, moe, cpu) -> None:
    dense = SearchSpace.build(llama, cpu, knobs=SESSION_SPACE)
    pf = dense.variable(SESSION_UNIT, "prefetch")
    assert pf.choices == ("none", "markov", "lru", "gate", "hybrid")
    assert pf.mask == (True, False, False, False, False)
    assert "no mixture-of-experts modules (dense)" in pf.reasons["markov"]
    tier = dense.variable(SESSION_UNIT, "kv_tier")
    assert tier.choices[0] == "cpu" and not tier.mask[tier.choices.index("gpu")]
    assert "has no GPU unit" in tier.reasons["gpu"]
    sparse = SearchSpace.build(moe, cpu, knobs=SESSION_SPACE)
    assert all(sparse.variable(SESSION_UNIT, "prefetch").mask)
    # fp8 KV: an H100 has it; an A100 (compute capability 8.0) does not
    h100 = SearchSpace.build(llama, resolve_profile("h100-80gb"), knobs=("precision", "kv_precision"))
    assert all(h100.variable(SESSION_UNIT, "kv_precision").mask)
    a100 = SearchSpace.build(llama, resolve_profile("a100-80gb"), knobs=("precision", "kv_precision"))
    v = a100.variable(SESSION_UNIT, "kv_precision")
    assert v.mask == (True, True, False) and "compute capability >= 8.9" in v.reasons["fp8"]
    # a classifier has no KV cache: no KV variables, and the space says why
    space = SearchSpace.build(DigitsCNN().eval(), cpu, inputs=CNN_INPUTS,
                              knobs=("precision", "kv_precision", "prefetch_depth"))
    assert space.variable(SESSION_UNIT, "kv_precision") is None
    assert space.variable(SESSION_UNIT, "prefetch_depth") is not None
    assert "not a causal language model" in space.session.kv_reason


def test_session_vectors_round_trip(space) -> None:
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(30):
        x = space.random_vector(rng)
        plan = space.decode(x)
        assert set(plan.session) == set(SESSION_KNOBS)
        assert not any(SESSION_UNIT == r.target for r in plan.rules)
        assert np.array_equal(space.encode(plan), x)
        assert np.array_equal(space.encode(Plan.from_json(plan.to_json())), x)
        seen.add(plan.session["kv_precision"])
    assert seen == {"float", "int8", "fp8"}
    plan = Plan(session={"kv_precision": "int8", "kv_window": 64, "prefetch_depth": 0})
    x = space.encode(plan)
    assert space.decode(x).session == {"kv_precision": "int8", "kv_budget": "none", "kv_tier": "cpu",
                                       "kv_window": 64, "prefetch": "none", "prefetch_depth": 0}
    bad = Plan(session={"prefetch": "markov"})  # masked on a dense model: repaired to the nearest valid
    fixed = space.repair(space.encode(bad))
    assert space.decode(fixed).session["prefetch"] == "none" and space.is_valid(fixed)
    with pytest.raises(InvalidArgumentError, match="`kv_budget` '64MiB' is not a choice of this space"):
        space.encode(Plan(session={"kv_budget": "64MiB"}))
    back = SearchSpace.from_json(space.to_json())
    assert back.digest() == space.digest() and back.session == space.session


# ---------------------------------------------------------------------------------------------- footprint
@pytest.mark.parametrize(("precision", "budget", "window"), [
    ("float", "none", None), ("int8", "none", None), ("fp8", "none", 16), ("int8", "50%", None),
    ("float", "12KiB", 8), ("int8", "3KiB", 64),
])
def test_kv_bytes_equal_the_runtime_cache(llama, space, precision, budget, window) -> None:
    """Peak, final bytes, evictions and kept tokens of the footprint's KV equal a real PagedKVCache's after a
    prefill of ``context`` tokens and one decode step (batch 2)."""
    context, batch = 40, 2
    kv = memory_breakdown(space, Plan(session={"kv_precision": precision, "kv_budget": budget, "kv_window": window}),
                          context=context, batch=batch)["kv"]
    store = TensorStore()
    cache = make_kv_cache(KVCacheConfig(precision=precision, budget_bytes=kv["budget_bytes"], window=window),
                          llama.model.config, device="cpu", dtype=torch.float32, store=store)
    ids = torch.randint(0, 256, (batch, context), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        llama.model(input_ids=ids, past_key_values=cache, use_cache=True)
        llama.model(input_ids=ids[:, -1:], past_key_values=cache, use_cache=True)
    stats = cache.kv_stats()
    assert (store.peak("cpu"), stats["bytes_used"], stats["evictions"], stats["tokens_kept"], stats["pages"]) == (
        kv["peak_bytes"], kv["bytes"], kv["evicted_tokens"], kv["kept_tokens"], kv["pages"])
    cache.close()


def test_kv_budget_bytes_floor_and_share() -> None:
    tb = kv_token_bytes(2, 16, "int8", "float32")
    assert tb == 2 * 2 * (16 + 2)
    assert kv_budget_bytes("none", layers=2, token_bytes=tb, tokens=100) is None
    assert kv_budget_bytes("50%", layers=2, token_bytes=tb, tokens=100) == 2 * 100 * tb // 2
    assert kv_budget_bytes("1KiB", layers=2, token_bytes=tb, tokens=100) == 2 * 20 * tb  # sinks + one page


def test_memory_counts_kv_only_with_kv_decisions_and_experts_as_the_runtime_does(llama, moe, cpu, space) -> None:
    weights = plan_memory(space, Plan())["cpu"]
    assert plan_memory(SearchSpace.build(llama, cpu, knobs=KNOBS), Plan())["cpu"] == weights  # no session: no KV
    int8 = plan_memory(space, Plan(session={"kv_precision": "int8"}))["cpu"]
    flt = plan_memory(space, Plan(session={"kv_precision": "float"}))["cpu"]
    assert weights < int8 < flt
    # prefetch depth sets the streaming lookahead (staging slots)
    streamed = Plan.from_decisions({b.name: {"placement": "cpu<-disk"} for b in space.blocks if b.is_block})
    shallow = plan_memory(space, replace(streamed, session={"prefetch_depth": 0}))["cpu"]
    assert shallow < plan_memory(space, replace(streamed, session={"prefetch_depth": 4}))["cpu"]
    # streamed experts of tiny-moe-test: the footprint equals the Session's store, tier by tier
    full = SearchSpace.build(moe, cpu, knobs=KNOBS)
    plan = Plan(session={"prefetch": "markov"})
    predicted = plan_memory(full, plan)
    with apply_plan(moe, plan, cpu) as session:
        session.generate(torch.randint(0, 256, (1, 8)), max_new_tokens=2)
        assert session.stats().peak_bytes == predicted
    assert predicted["disk"] > 0 and predicted["cpu"] < plan_memory(full, Plan())["cpu"]


# ---------------------------------------------------------------------------------------------- apply, check
def test_apply_plan_session_equals_a_hand_built_kv_config(llama, cpu) -> None:
    ids = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(1))
    plan = Plan(session={"kv_precision": "int8", "kv_window": 8, "prefetch_depth": 1})
    with apply_plan(llama, plan, cpu) as session:
        assert session.spec.lookahead == 1 and session.kv_config == KVCacheConfig(precision="int8", window=8)
        out = session.generate(ids, max_new_tokens=12)
        planned = session.stats().extra["kv"]
    spec = SessionSpec(default=BlockSpec(device="cpu"), lookahead=1)
    with Session(copy.deepcopy(llama.model), spec, kv=KVCacheConfig(precision="int8", window=8)) as session:
        ref = session.generate(ids, max_new_tokens=12)
        by_hand = session.stats().extra["kv"]
    assert torch.equal(out, ref)
    assert planned == by_hand and planned["evictions"] > 0


def test_session_options_map_every_knob(moe) -> None:
    opts = session_options({"kv_precision": "int8", "kv_budget": "50%", "kv_tier": "cpu", "prefetch": "gate",
                            "prefetch_depth": 3}, moe.model, exec_device="cpu", kv_context=63)
    cfg = moe.model.config
    tb = kv_token_bytes(cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads, "int8", "float32")
    layers = moe.model.config.num_hidden_layers
    assert opts.kv == KVCacheConfig(precision="int8", budget_bytes=max(layers * 64 * tb // 2, layers * 20 * tb),
                                    tier="cpu")
    assert opts.experts == ExpertConfig(home="disk", capacity=0.25, prefetch="gate", lookahead=3)
    assert opts.lookahead == 3 and session_options({}, moe.model, exec_device="cpu").kv is None
    hybrid = session_options({"prefetch": "hybrid", "prefetch_depth": 2}, moe.model, exec_device="cpu")
    assert hybrid.experts == ExpertConfig(home="disk", capacity=0.25, prefetch="hybrid", lookahead=2)


def test_check_plan_reports_session_problems_before_anything(llama, cpu) -> None:
    plan = Plan(session={"prefetch": "markov", "kv_tier": "gpu", "kv_budget": "1KiB"})
    problems = {(p.knob, p.severity): str(p) for p in check_plan(llama, plan, cpu)}
    assert "no mixture-of-experts modules (dense)" in problems[("prefetch", "error")]
    assert "has no GPU for the KV pages" in problems[("kv_tier", "error")]
    assert "raised to" in problems[("kv_budget", "warning")]
    problems = check_plan(DigitsCNN().eval(), Plan(session={"kv_precision": "int8"}), cpu, inputs=CNN_INPUTS)
    assert [p.knob for p in problems] == ["kv_precision"] and "not a causal language model" in problems[0].reason
    assert check_plan(llama, Plan(session={"kv_precision": "int8", "kv_window": 16}), cpu) == []


def test_check_plan_counts_kv_against_the_budget(llama, cpu) -> None:
    full = SearchSpace.build(llama, cpu, knobs=KNOBS)
    weights = plan_memory(full, Plan())["cpu"]
    plan = Plan(session={"kv_precision": "float"})
    need = plan_memory(full, plan, context=200)["cpu"]
    assert need > weights
    problems = check_plan(llama, plan, cpu, space=full, budgets={"cpu": (weights + need) // 2}, kv_context=200)
    assert [p.knob for p in problems] == ["budget"] and "kv_cache" in problems[0].reason


# ---------------------------------------------------------------------------------------------- evaluators
def test_analytic_evaluator_sees_session_decisions(llama, cpu, space) -> None:
    from autosurgeon.cost.profiled import Workload

    ev = AnalyticEvaluator(llama, cpu, space=space, workload=Workload(task="causal-lm", context=200))
    flt, int8, window = (ev.evaluate(Plan(session=s)) for s in (
        {"kv_precision": "float"}, {"kv_precision": "int8"}, {"kv_precision": "float", "kv_window": 16}))
    assert int8.peak_bytes["cpu"] < flt.peak_bytes["cpu"]
    assert int8.latency_s > flt.latency_s and int8.extra["kv_s"] > 0  # decoded before attention: costs time
    # 16 + 4 of 201 tokens kept: fewer pages to gather outweighs re-rotating the sinks
    assert window.latency_s < flt.latency_s and window.extra["kv"]["kept_tokens"] == 4 + 16
    assert "KV cache term" in int8.method
    plain = AnalyticEvaluator(llama, cpu, space=SearchSpace.build(llama, cpu, knobs=("precision", "placement")))
    with pytest.raises(InvalidArgumentError, match="plan session decides kv_precision, which this evaluator's space "
                                                    "has no variable for"):
        plain.evaluate(Plan(session={"kv_precision": "int8"}))
    assert json.loads(json.dumps(int8.to_dict()))  # extra stays JSON-ready


def test_streamed_experts_trade_memory_for_estimated_misses(moe, cpu) -> None:
    from autosurgeon.cost.kv import kv_traffic_bytes

    space = SearchSpace.build(moe, cpu, knobs=("precision", "prefetch"))
    ev = AnalyticEvaluator(moe, cpu, space=space)
    resident, streamed = ev.evaluate(Plan(session={"prefetch": "none"})), ev.evaluate(Plan(session={"prefetch": "lru"}))
    assert streamed.peak_bytes["cpu"] < resident.peak_bytes["cpu"] and streamed.peak_bytes["disk"] > 0
    # 2 MoE layers x 4 experts, 4 cache slots (one layer's experts): ASSUMED hit rate 0.5, top-2 routing
    assert streamed.extra["expert_misses"] == pytest.approx(2 * 2 * 0.5)
    assert streamed.latency_s == pytest.approx(resident.latency_s + streamed.extra["experts_s"])
    assert "ASSUMED LRU hit rate 0.50" in streamed.method
    # KV traffic per element: float32 cat + attention read 12 B; int8: codes cat 2 + decode 13 + read 4 (+ scales)
    assert kv_traffic_bytes(64, "float", 4, 16) == 64 * 12
    assert kv_traffic_bytes(64, "int8", 4, 16) == 64 * 19 + 4 * 10


def test_kv_quality_loss_float_paged_cache_is_lossless_and_eviction_is_scored(llama, cpu) -> None:
    from autosurgeon.quality.kv import kv_quality_loss

    windows = torch.randint(0, 256, (2, 25), generator=torch.Generator().manual_seed(0))
    losses = {}
    for name, session in (("float", {"kv_precision": "float"}), ("int8", {"kv_precision": "int8"}),
                          ("window", {"kv_precision": "float", "kv_window": 8})):
        with apply_plan(llama, Plan(session=session), cpu) as s:
            r = kv_quality_loss(s, windows=windows, prefix=8)
            assert s.kv_cache is None and r["tokens"] == 2 * 17
        losses[name] = r["kv_quality_loss"]
    assert losses["float"] == pytest.approx(0.0, abs=1e-6)  # the paged float cache is exact
    assert abs(losses["int8"]) < 0.02 and losses["int8"] != 0.0  # per-token int8: close, not identical
    assert abs(losses["window"]) > abs(losses["int8"])  # dropping all but 8 + 4 tokens changes predictions more


def test_profiled_evaluator_measures_the_kv_dispatch_cost_once(llama) -> None:
    from autosurgeon.cost.profiled import TimingSettings
    from autosurgeon.evaluate import ProfiledEvaluator

    local = resolve_profile("local")
    space = SearchSpace.build(llama, local, knobs=("precision", "kv_precision"))
    ev = ProfiledEvaluator(llama, local, space=space, measure_all=False, use_disk_cache=False,
                           timing=TimingSettings(warmup=0, repeats=1, step_warmup=1, step_repeats=3, clock="cpu"))
    flt = ev.evaluate(Plan(session={"kv_precision": "float"}))
    assert ev.profiler.table.kv_op_s["paged-float"] >= 0.0 and "per gather dispatch, measured" in flt.method
    int8 = ev.evaluate(Plan(session={"kv_precision": "int8"}))
    assert int8.extra["kv_s"] > flt.extra["kv_s"] and int8.labels["latency_s"] == "profiled"
