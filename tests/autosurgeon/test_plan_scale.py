"""Large plans: 20,000 rules load, resolve and check in moments (rules looked up by name, patterns compiled
once, suggestions for the first few unknown targets only), resolve exactly as the precedence rule says, and
the number of `re:` rules is bounded with a one-line error (issue 17). Timing lives in
experiments/benchmarks/plan_scale.py; these tests check behaviour."""
from __future__ import annotations

import json
import re

import pytest

from autosurgeon.plan import MAX_PATTERN_RULES, Plan, PlanFormatError
from autosurgeon.plan_check import KNOBS, LIST_UNMATCHED, check_plan
from autosurgeon.space.search_space import SearchSpace
from autosurgeon.hardware.resolve import load_preset
from autosurgeon.zoo import load_model

N_EXACT, N_PATTERNS = 20_000, 500


def big_plan_dict(names: list[str]) -> dict:
    rules = [{"target": n, "decisions": {"precision": "int8"}} for n in names[::2]]
    rules += [{"target": f"model.layers.{i}.mlp.extra_proj", "decisions": {"precision": "int4"}}
              for i in range(N_EXACT)]
    rules += [{"target": f"re:model\\.layers\\.{i}\\.self_attn\\..*", "decisions": {"precision": "bfloat16"}}
              for i in range(1000, 1000 + N_PATTERNS)]
    rules += [{"target": "re:.*_proj", "decisions": {"precision": "float16", "kernel": "auto"}},
              {"target": "re:.*q_proj", "decisions": {"precision": "int4"}}]  # never wins: the one above is first
    return {"_type": "autosurgeon.Plan", "_version": 1, "_data": {"default": {"precision": "float32"},
                                                                 "rules": rules}}


def reference_decisions(data: dict, fqn: str) -> dict:
    """The module docstring's precedence, done the slow obvious way."""
    out = dict(data["default"])
    for knob in {k for r in data["rules"] for k in r["decisions"]}:
        pattern = next((r for r in data["rules"] if r["target"].startswith("re:") and knob in r["decisions"]
                        and re.fullmatch(r["target"][3:], fqn)), None)
        if pattern is not None:
            out[knob] = pattern["decisions"][knob]
        exact = next((r for r in data["rules"] if r["target"] == fqn and knob in r["decisions"]), None)
        if exact is not None:
            out[knob] = exact["decisions"][knob]
    return out


@pytest.fixture(scope="module")
def model_and_space():
    loaded = load_model("tiny-llama-test", device="cpu")
    profile = load_preset("a100-80gb")
    return loaded, profile, SearchSpace.build(loaded, profile, knobs=KNOBS)


def test_large_plan_resolves_by_precedence_and_checks(model_and_space) -> None:
    loaded, profile, space = model_and_space
    names = [n for n, _ in loaded.model.named_modules() if n]
    data = big_plan_dict(names)
    plan = Plan.from_json(json.dumps(data))
    assert len(plan.rules) > N_EXACT
    small = {**data["_data"], "rules": [r for r in data["_data"]["rules"] if "extra_proj" not in r["target"]
                                        and "layers\\.1" not in r["target"]]}  # the same effect, few rules
    for fqn in names:
        assert plan.decisions_for(fqn) == reference_decisions(small, fqn), fqn

    problems = check_plan(loaded, plan, profile, space=space)
    unmatched = [p for p in problems if p.knob is None]
    assert len(unmatched) == LIST_UNMATCHED + 1
    summary = unmatched[-1].reason
    assert f"and {N_EXACT + N_PATTERNS - LIST_UNMATCHED} more rule targets name no module" in summary
    assert "another model" in summary


def test_too_many_pattern_rules_is_one_clear_error() -> None:
    rules = [{"target": f"re:a{i}", "decisions": {"precision": "int8"}} for i in range(MAX_PATTERN_RULES + 1)]
    doc = {"_type": "autosurgeon.Plan", "_version": 1, "_data": {"rules": rules}}
    with pytest.raises(PlanFormatError, match=f"{MAX_PATTERN_RULES + 1} `re:` rules, more than the "
                                              f"{MAX_PATTERN_RULES}.*merge them into fewer patterns"):
        Plan.from_dict(doc)


def test_many_duplicates_are_named_briefly() -> None:
    rules = [{"target": f"m{i % 50}", "decisions": {"precision": "int8"}} for i in range(200)]
    with pytest.raises(PlanFormatError, match=r"more than one rule for m0, m1, .* and 40 more; merge"):
        Plan(rules=Plan.from_dict({"_type": "autosurgeon.Plan", "_version": 1,
                                   "_data": {"rules": rules[:50]}}).rules * 4)
