"""A sweep whose space includes session knobs (KV precision, budget, prefetch depth) proposes plans that carry
session decisions, and the memory objective sees the KV cache. Random search, analytic evaluator, paper CPU."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from autosurgeon.evaluate import AnalyticEvaluator
from autosurgeon.plan import Plan
from autosurgeon.space.search_space import SearchSpace
from autosurgeon.zoo import LoadedModel
from experiments.sweep import SweepConfig, run_sweep
from tests.autosurgeon._paper_profiles import paper_cpu_profile

KNOBS = ("precision", "placement", "kv_precision", "kv_budget", "prefetch_depth")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_random_sweep_plans_carry_session_decisions(tmp_path) -> None:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
    loaded = LoadedModel(name="tiny", model=LlamaForCausalLM(cfg).eval(), task="causal-lm", source="factory")
    profile = paper_cpu_profile(name="host", model="host", links={"disk_read": 1e9})
    space = SearchSpace.build(loaded, profile, knobs=KNOBS)
    evaluator = AnalyticEvaluator(loaded, profile, space=space)
    config = SweepConfig(model="tiny", device="host", evaluator="analytic", algo="random", budget_evals=12,
                         pop_size=4, quality="none", baselines=False, hv_at=(12,), knobs=KNOBS, seed=3)
    result = run_sweep(config, tmp_path / "run", evaluator=evaluator, outputs=False, tensorboard=False)
    assert len(result.records) == 12
    plans = [Plan.from_dict(r["plan"]) for r in result.records]
    assert all(set(p.session) == {"kv_precision", "kv_budget", "prefetch_depth"} for p in plans)
    assert len({p.session["kv_precision"] for p in plans}) > 1  # the search moves the knob
    # Same module decisions, float vs int8 KV: the memory objective sees the smaller cache.
    base = plans[0]
    flt = evaluator.evaluate(Plan(rules=base.rules, session={**base.session, "kv_precision": "float"}))
    int8 = evaluator.evaluate(Plan(rules=base.rules, session={**base.session, "kv_precision": "int8"}))
    assert int8.objective("memory") < flt.objective("memory")
    assert "kv" in int8.extra and int8.extra["kv"]["precision"] == "int8"
