"""check_plan: every bad input of issue 4 that concerns plans gives its clear error, all problems at once."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from autosurgeon.errors import AutoSurgeonError, InvalidArgumentError
from autosurgeon.hardware.resolve import resolve_profile
from autosurgeon.cost.footprint import memory_breakdown
from autosurgeon.hardware.profile import ComputeUnit, CpuInfo, HardwareProfile
from autosurgeon.models.digits import DigitsCNN
from autosurgeon.plan import Plan, PlanFormatError, Rule
from autosurgeon.plan_check import PlanCheckError, check_plan, raise_for_problems, smallest_footprint
from autosurgeon.space.search_space import SearchSpace

from _paper_profiles import paper_cpu_profile

LM_INPUTS = {"input_ids": torch.zeros(1, 8, dtype=torch.long)}


def cpu_profile() -> HardwareProfile:
    return paper_cpu_profile()


@pytest.fixture(scope="module")
def llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def jetson() -> HardwareProfile:
    return resolve_profile("jetson-agx-orin-64gb")


@pytest.fixture(scope="module")
def space(llama, jetson) -> SearchSpace:
    return SearchSpace.build(llama, jetson, inputs=LM_INPUTS, knobs=("precision", "placement", "group_size", "kernel",
                                                                     "fusion", "layout"))


def test_valid_plans_have_no_problems(llama, jetson, space) -> None:
    rng = np.random.default_rng(0)
    for _ in range(10):
        plan = space.decode(space.random_vector(rng))
        problems = check_plan(llama, plan, jetson, space=space)
        assert all(p.severity == "warning" and p.value == "dla" for p in problems)  # DLA: on paper only
    # A default sets a knob only where it exists (norms have no precision: not flagged) ...
    plan = Plan(default={"precision": "int8"}, rules=(Rule("model.embed_tokens", {"precision": "bfloat16"}),))
    assert check_plan(llama, plan, jetson, space=space) == []
    # ... but where it exists, a value the layer cannot take is reported: a plan never silently does less.
    problems = check_plan(llama, Plan(default={"precision": "int8"}), jetson, space=space)
    assert [(p.fqn, p.knob) for p in problems] == [("model.embed_tokens", "precision")]


def test_plan_for_another_model_or_device_names_both_fingerprints(llama, jetson, space) -> None:
    h100 = resolve_profile("h100-80gb")
    other = SearchSpace.build(llama, h100, inputs=LM_INPUTS)
    plan = other.decode(other.default_vector())
    plan = Plan(rules=plan.rules, model_fingerprint="0123456789abcdef", device_fingerprint=h100.fingerprint)
    problems = check_plan(llama, plan, jetson, space=space)
    fps = [p for p in problems if p.knob == "fingerprint"]
    assert len(fps) == 2
    with pytest.raises(PlanCheckError, match=rf"(?s)model fingerprint 0123456789abcdef.*{space.model_fingerprint}.*"
                                             rf"device fingerprint {h100.fingerprint}.*{jetson.fingerprint}.*--force"):
        raise_for_problems(problems)
    forced = check_plan(llama, plan, jetson, space=space, force=True)
    assert {p.severity for p in forced if p.knob == "fingerprint"} == {"warning"}
    assert all(p.severity == "warning" for p in forced)  # gpu placements are valid on the Jetson too
    raise_for_problems(forced)  # warnings only: no raise


def test_precision_the_device_lacks_names_layer_knob_and_device(llama, jetson, space) -> None:
    plan = Plan(rules=(Rule("model.layers.0.mlp.up_proj", {"precision": "fp8"}),))
    with pytest.raises(PlanCheckError, match=r"model\.layers\.0\.mlp\.up_proj `precision`='fp8'.*"
                                             r"not valid for model\.layers\.0\.mlp\.up_proj on device "
                                             r"'jetson-agx-orin-64gb'.*compute capability >= 8\.9"):
        raise_for_problems(check_plan(llama, plan, jetson, space=space))
    cpu = cpu_profile()
    plan = Plan(default={"placement": "gpu"}, rules=(Rule("model.layers.1.self_attn.q_proj", {"precision": "fp8"}),))
    problems = check_plan(llama, plan, cpu, inputs=LM_INPUTS)
    assert {(p.fqn, p.knob) for p in problems} == {("model.layers.0", "placement"), ("model.layers.1", "placement"),
                                                   ("model.layers.1.self_attn.q_proj", "precision")}
    assert all("cpu-x86_64" in p.reason for p in problems)


def test_conditional_problem_names_the_decision_behind_it(llama, jetson, space) -> None:
    plan = Plan(rules=(Rule("model.layers.1", {"placement": "dla"}),))
    found = check_plan(llama, plan, jetson, space=space)
    problems = [p for p in found if p.severity == "error"]
    assert problems and all(p.knob == "precision" and p.fqn.startswith("model.layers.1.") for p in problems)
    assert [(p.fqn, p.severity) for p in found if p.knob == "placement"] == [("model.layers.1", "warning")]
    assert "under placement 'dla' of model.layers.1" in problems[0].reason
    assert "DLA computes in int8 and float16 only" in problems[0].reason


def test_every_problem_is_listed_at_once(llama, jetson, space) -> None:
    plan = Plan(
        default={"precision": "int4"},
        rules=(
            Rule("model.layers.7", {"placement": "cpu"}),          # no such module
            Rule("re:decoder\\..*", {"precision": "int8"}),        # pattern matching nothing
            Rule("model.norm", {"precision": "int8"}),             # a norm takes no precision
            Rule("model.layers.0", {"precision": "int8"}),         # nor does a block
            Rule("model.embed_tokens", {"precision": "int8"}),     # no quantized embedding
            Rule("model.layers.0.mlp.down_proj", {"kernel": "no-such-kernel"}),
        ),
    )
    problems = check_plan(llama, plan, jetson, space=space)
    found = {(p.fqn, p.knob) for p in problems}
    assert {("model.layers.7", None), ("re:decoder\\..*", None), ("model.norm", "precision"),
            ("model.layers.0", "precision"), ("model.embed_tokens", "precision"),
            ("model.layers.0.mlp.down_proj", "kernel")} <= found
    by = {(p.fqn, p.knob): p.reason for p in problems}
    assert "did you mean model.layers.1, model.layers.0" in by[("model.layers.7", None)]
    assert "does not apply to model.norm (norm)" in by[("model.norm", "precision")]
    assert "no quantized embedding" in by[("model.embed_tokens", "precision")]
    assert "not a `kernel` choice" in by[("model.layers.0.mlp.down_proj", "kernel")]
    with pytest.raises(PlanCheckError) as info:
        raise_for_problems(problems)
    assert isinstance(info.value, AutoSurgeonError) and len(info.value.problems) == len(problems)
    assert str(info.value).count("\n  - ") == len(problems)


def test_budget_below_the_smallest_feasible_plan_states_the_smallest(llama, jetson, space) -> None:
    floor, x = smallest_footprint(space, "gpu")
    assert space.is_valid(x) and 0 < floor
    plan = space.decode(space.default_vector())
    problems = check_plan(llama, plan, jetson, space=space, budgets={"gpu": floor - 1})
    assert len(problems) == 1
    with pytest.raises(PlanCheckError, match=rf"gpu budget .* is below the smallest footprint reachable on gpu: "
                                             rf".*\({floor} B\)"):
        raise_for_problems(problems)
    # A budget the smallest plan meets is feasible: that plan checks clean under it.
    assert check_plan(llama, space.decode(x), jetson, space=space, budgets={"gpu": floor}) == []


def test_reachable_budget_exceeded_names_need_budget_and_largest_offender(llama, jetson, space) -> None:
    plan = space.decode(space.default_vector())
    problems = check_plan(llama, plan, jetson, space=space, budgets={"gpu": "100KiB"})
    assert len(problems) == 1
    p = problems[0]
    by_unit = memory_breakdown(space, plan)["by_unit"]["gpu"]
    assert p.knob == "budget" and p.fqn == max(by_unit, key=by_unit.get) == "model.layers.0.mlp.gate_proj"
    assert "tier gpu needs" in p.reason and "budget is 100.00 KiB" in p.reason and "largest offender" in p.reason
    with pytest.raises(InvalidArgumentError, match="`budgets` tier 'vram' is unknown"):
        check_plan(llama, plan, jetson, space=space, budgets={"vram": 1})
    with pytest.raises(InvalidArgumentError, match=r"`budgets gpu` must be a byte size"):
        check_plan(llama, plan, jetson, space=space, budgets={"gpu": "lots"})


def test_device_capacity_is_a_budget_too() -> None:
    tiny_gpu = HardwareProfile(
        name="tiny-gpu", measured=False, cpu=CpuInfo(model="host"),
        units=(ComputeUnit(name="cuda:0", kind="gpu", memory_bytes=4096, memory_bandwidth=1e11,
                           gemm_flops={"float32": 1e12}),))
    cnn = DigitsCNN()
    problems = check_plan(cnn, Plan(), tiny_gpu, inputs={"x": torch.zeros(1, 1, 8, 8)})
    assert len(problems) == 1 and "capacity of cuda:0" in problems[0].reason


def test_corrupt_or_unknown_version_plan_names_field_and_version(space) -> None:
    good = json.loads(space.decode(space.default_vector()).to_json())
    with pytest.raises(PlanFormatError, match=r"`_version` 7 is newer .* \(up to 1\)"):
        Plan.from_dict({**good, "_version": 7})
    with pytest.raises(PlanFormatError, match=r"`rules\[0\]` must be an object"):
        Plan.from_dict({**good, "_data": {**good["_data"], "rules": ["oops"]}})
    with pytest.raises(PlanFormatError, match="not valid JSON"):
        Plan.from_json("{")


def test_misuse_is_refused(llama, jetson, space) -> None:
    with pytest.raises(InvalidArgumentError, match="`plan` must be an autosurgeon.plan.Plan"):
        check_plan(llama, {"precision": "int8"}, jetson, space=space)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="`space` was built for"):
        check_plan(llama, Plan(), cpu_profile(), space=space)


def test_settings_without_effect_are_warned(llama, jetson, space) -> None:
    plan = Plan(rules=(Rule("model.layers.0.mlp.up_proj", {"precision": "int8", "group_size": 64}),
                       Rule("model.layers.0.mlp.down_proj", {"precision": "int4", "group_size": 64})))
    problems = check_plan(llama, plan, jetson, space=space)
    assert [(p.fqn, p.knob, p.severity) for p in problems] == [("model.layers.0.mlp.up_proj", "group_size", "warning")]
    assert "has no effect" in problems[0].reason


def test_warnings_are_logged(llama, jetson, space, caplog) -> None:
    plan = Plan(model_fingerprint="ffff", device_fingerprint=jetson.fingerprint)
    with caplog.at_level(logging.WARNING):
        raise_for_problems(check_plan(llama, plan, jetson, space=space, force=True))
    assert "model fingerprint ffff" in caplog.text
