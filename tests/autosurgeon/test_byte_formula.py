"""One byte formula: the planner, both cheap evaluators' memory and the runtime agree, tier by tier.

For every zoo model with weights (the fast ``-test`` recipes and the shipped tiny models), with and without
session knobs (paged KV cache, streamed experts, prefetch depth), under a budget that streams blocks and one
that does not: the knapsack's ``tier_bytes`` (what ``autosurgeon plan`` prints), ``footprint.plan_memory``, the
analytic evaluator's ``peak_bytes`` and the bytes the runtime's TensorStore charges after a prefill of
``context`` tokens and one decode step are the same numbers.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from autosurgeon.cost.footprint import fastest_tier, memory_breakdown, plan_memory
from autosurgeon.cost.workload import Workload
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.evaluate import AnalyticEvaluator
from autosurgeon.knobs import KNOBS
from autosurgeon.planners.knapsack import PLANNER_KNOBS, plan_knapsack, smallest_footprint, unit_options
from autosurgeon.quality.precision_swap import precision_units
from autosurgeon.quality.sensitivity import SensitivityTable
from autosurgeon.space.search_space import SearchSpace
from autosurgeon.transforms import apply_plan
from autosurgeon.zoo import load_model

from _paper_profiles import paper_cpu_profile

CONTEXT = 24
SCALE = {"bfloat16": 1e-5, "float16": 1e-6, "int8": 1e-4, "int4": 1e-3, "int8-dynamic": 2e-4}
LMS = ("tiny-llama-test", "tiny-moe-test", "tiny-llama", "tiny-moe")
SLOW = ("tiny-llama", "tiny-moe")  # shipped weights load in seconds, but 4x bigger models to run: slow
SESSIONS = {
    "none": {},
    "kv-int8-half": {"kv_precision": "int8", "kv_budget": "50%"},
    "kv-float-window": {"kv_precision": "float", "kv_window": 16, "prefetch_depth": 0},
    "experts": {"prefetch": "markov"},
    "experts-kv": {"prefetch": "lru", "prefetch_depth": 1, "kv_precision": "int8"},
}
# "roomy": twice the unmodified bytes (nothing streams); "tight": 2 % above the smallest footprint reachable
# with this session (blocks stream, units at their smallest options).
CASES = [pytest.param(m, s, b, marks=[pytest.mark.slow] if m in SLOW else [])
         for m in LMS for s in SESSIONS for b in ("roomy", "tight") if "moe" in m or not SESSIONS[s].get("prefetch")
         ] + [(("digits-cnn", "none", b)) for b in ("roomy", "tight")]


@pytest.fixture(scope="module")
def cpu():
    return paper_cpu_profile()


_LOADED: dict[str, object] = {}


def _model(name: str):
    if name not in _LOADED:
        _LOADED[name] = load_model(name)
    return _LOADED[name]


def _table(loaded) -> SensitivityTable:
    """A synthetic sensitivity table (the planner's bytes do not depend on it): int4 costs most."""
    rng = np.random.default_rng(0)
    units = precision_units(loaded.model)
    metric = "kl_next_token" if loaded.task == "causal-lm" else "kl_logits"
    return SensitivityTable(divergence={(u, p): float(s * rng.uniform(0.5, 2.0)) for u in units for p, s in SCALE.items()},
                            hessian={}, metric=metric, perturbation={},
                            params={u: loaded.model.get_submodule(u).weight.numel() for u in units},
                            settings={"group_size": 128}, key="synthetic")


def _run(session, loaded) -> None:
    if loaded.task == "causal-lm":
        vocab = loaded.model.config.vocab_size
        ids = torch.randint(0, vocab, (1, CONTEXT), generator=torch.Generator().manual_seed(0))
        session.generate(ids, max_new_tokens=2)  # prefill CONTEXT tokens, one decode step at CONTEXT cached
    else:
        session.forward(**loaded.example_inputs())


@pytest.mark.parametrize(("name", "session_name", "budget"), CASES)
def test_planner_evaluators_and_runtime_count_the_same_bytes(name, session_name, budget, cpu) -> None:
    loaded = _model(name)
    session = SESSIONS[session_name]
    knobs = PLANNER_KNOBS if not session else (*PLANNER_KNOBS, *session)
    space = SearchSpace.build(loaded, cpu, knobs=knobs)
    table = _table(loaded)
    if budget == "roomy":
        nbytes = 2 * sum(plan_memory(space, space.default_vector()).values())
    else:
        floor = smallest_footprint(space, unit_options(space, [table]), fastest_tier(space), session=session,
                                   context=CONTEXT)
        nbytes = int(floor * 1.02)
    result = plan_knapsack(loaded, cpu, table, budget=nbytes, space=space, session=session, context=CONTEXT)
    if budget == "roomy":
        assert not result.streamed
    plan = result.plan
    assert plan.session == session
    full = SearchSpace.build(loaded, cpu, knobs=(*KNOBS, *session))
    formula = plan_memory(full, plan, context=CONTEXT)
    assert result.tier_bytes == formula  # what `plan` prints
    assert formula[result.tier] <= result.budget  # and it is what the budget was held to
    evaluator = AnalyticEvaluator(loaded, cpu, space=full, workload=Workload(task=loaded.task, context=CONTEXT))
    assert evaluator.evaluate(plan).peak_bytes == formula  # what `evaluate --evaluator analytic` prints
    with apply_plan(loaded, plan, cpu, space=full, kv_context=CONTEXT) as runtime:
        _run(runtime, loaded)
        assert runtime.stats().peak_bytes == formula  # what the runtime charges
    if session.get("prefetch"):
        experts = memory_breakdown(full, plan, context=CONTEXT)["experts"]
        assert experts is not None and formula[experts["home"]] >= experts["home_bytes"] > 0


def test_streamed_experts_make_a_small_budget_reachable(cpu) -> None:
    """The issue's case: the knapsack without the plan's session counted the experts in their blocks and
    refused a budget that the plan with streamed experts meets (and the runtime agrees, test above)."""
    loaded = _model("tiny-moe-test")
    space = SearchSpace.build(loaded, cpu, knobs=PLANNER_KNOBS)
    table = _table(loaded)
    options = unit_options(space, [table])
    streamed = smallest_footprint(space, options, "cpu", session={"prefetch": "markov"})
    resident = smallest_footprint(space, options, "cpu")
    assert streamed < resident
    budget = (streamed + resident) // 2
    result = plan_knapsack(loaded, cpu, table, budget=budget, space=space, session={"prefetch": "markov"})
    assert result.tier_bytes["cpu"] <= budget and result.plan.session == {"prefetch": "markov"}
    with pytest.raises(InvalidArgumentError, match="smallest footprint"):
        plan_knapsack(loaded, cpu, table, budget=budget, space=space)


SHAPES = ("llama-7b-16l-shape", "mixtral-8x7b-shape")


@pytest.mark.slow
@pytest.mark.parametrize("name", SHAPES)
def test_architecture_shapes_on_a_gpu_preset_agree_on_meta(name) -> None:
    """The zoo's architectures on paper (meta tensors, no runtime run possible): on a GPU preset, the planner's
    bytes equal plan_memory and the analytic evaluator's, with and without session knobs; a Mixtral decode
    step reads exactly 2 of its 8 experts per layer."""
    from autosurgeon.analysis.model_analysis import analyze
    from autosurgeon.hardware.resolve import resolve_profile

    loaded = load_model(name, device="meta")
    gpu = resolve_profile("a100-80gb")
    moe = "mixtral" in name
    for session in ({}, {"kv_precision": "int8"}, *([{"prefetch": "markov"}] if moe else [])):
        space = SearchSpace.build(loaded, gpu, knobs=(*PLANNER_KNOBS, *session))
        table = _table(loaded)
        floor = smallest_footprint(space, unit_options(space, [table]), "gpu", session=session, context=CONTEXT)
        result = plan_knapsack(loaded, gpu, table, budget=int(floor * 1.02), space=space, session=session,
                               context=CONTEXT)
        formula = plan_memory(space, result.plan, context=CONTEXT)
        assert result.tier_bytes == formula and formula["gpu"] <= result.budget
        evaluator = AnalyticEvaluator(loaded, gpu, space=space, workload=Workload(task="causal-lm", context=CONTEXT))
        assert evaluator.evaluate(result.plan).peak_bytes == formula
    if moe:
        inputs = loaded.example_inputs(seq_len=8, phase="decode")
        experts = next(u for u in analyze(loaded.model, inputs, phase="decode").leaves if u.kind == "experts")
        assert experts.weight_read_bytes == pytest.approx(experts.weight_bytes * 2 / 8, rel=1e-9)
