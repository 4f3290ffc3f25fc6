"""Every road to the runtime goes through apply_plan: `run`'s flags are a plan, and a fitted placement equals
the runtime's default placement of the transformed model."""
from __future__ import annotations

import ast
import copy
from pathlib import Path

import torch
from _transform_models import LM_INPUTS, cpu_profile, tiny_llama
from torch import nn

from autosurgeon.cli.run_plan import flags_plan
from autosurgeon.plan import Plan
from autosurgeon.planners.default_placement import build_spec
from autosurgeon.transforms.apply import apply_plan, prepare_plan
from autosurgeon.transforms.open_session import open_session
from runtime.kernels import QuantizedLinear
from runtime.session import quantize_linears

ROOT = Path(__file__).resolve().parents[3]
# Building a Session outside open_session is allowed only where no plan is being run, in measuring harnesses:
# the profiled cost tables time single units on the runtime (cost/profiled.py, cost/profiled_kv.py, and its
# interleaved rounds in cost/profiled_context.py), and the KV sensitivity table swaps one session's KV configuration
# choice by choice (quality/sensitivity_kv.py).
ALLOWED = {"autosurgeon/transforms/open_session.py", "autosurgeon/cost/profiled.py", "autosurgeon/cost/profiled_kv.py",
           "autosurgeon/cost/profiled_context.py", "autosurgeon/quality/sensitivity_kv.py"}


def test_no_library_module_opens_a_session_but_open_session() -> None:
    offenders = []
    for path in sorted((ROOT / "autosurgeon").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Session":
                if rel not in ALLOWED:
                    offenders.append(f"{rel}:{node.lineno}")
    assert not offenders, f"runtime.Session built outside open_session: {offenders}"


def test_flags_plan_quantizes_the_block_linears_only() -> None:
    model = tiny_llama()
    plan = flags_plan(model, weight_format="int8", session={"kv_precision": "int8"})
    linears = {f"model.layers.{i}.{n}" for i, b in enumerate(model.model.layers)
               for n, m in b.named_modules() if type(m) is nn.Linear}
    assert {r.target for r in plan.rules} == linears
    assert all(r.decisions == {"precision": "int8"} for r in plan.rules)
    assert plan.session == {"kv_precision": "int8"}
    assert flags_plan(model, weight_format="bfloat16", session={}).rules == ()  # a load dtype, not a decision


def test_fitted_placement_equals_the_default_placement_of_the_same_model(tmp_path) -> None:
    profile = cpu_profile()
    model = tiny_llama(layers=4)
    reference = copy.deepcopy(model)
    for block in reference.model.layers:
        quantize_linears(block, "int8")
    budgets = {"cpu": 230_000}
    expected = build_spec(reference, device="cpu", budgets=budgets, lookahead=1, offload_dir=str(tmp_path))
    assert any(b.streamed for b in expected.blocks) and not all(b.streamed for b in expected.blocks)

    plan = flags_plan(model, weight_format="int8", session={})
    prepared = prepare_plan(model, plan, profile, budgets=budgets, inputs=LM_INPUTS, lookahead=1,
                            offload_dir=tmp_path, placement="fit", device="cpu")
    assert prepared.spec == expected
    assert all(isinstance(m, QuantizedLinear) for b in prepared.model.model.layers for m in b.modules()
               if isinstance(m, (nn.Linear, QuantizedLinear)))
    assert not any(isinstance(m, QuantizedLinear) for m in model.modules())  # the caller's model is untouched
    ids = torch.tensor([[1, 2, 3, 4]])
    with open_session(prepared) as session:
        fitted = session.generate(ids, max_new_tokens=4)
    with apply_plan(reference, Plan(), profile, budgets=budgets, inputs=LM_INPUTS, lookahead=1,
                    offload_dir=tmp_path, placement="fit", device="cpu") as session:
        assert session.spec == expected
        assert torch.equal(session.generate(ids, max_new_tokens=4), fitted)


def test_a_reserve_is_left_free_by_the_fitted_placement(tmp_path) -> None:
    profile = cpu_profile()
    budgets = {"cpu": 230_000}
    plan = flags_plan(tiny_llama(layers=4), weight_format="int8", session={})
    kwargs = dict(budgets=budgets, inputs=LM_INPUTS, lookahead=1, offload_dir=tmp_path, placement="fit", device="cpu")
    free = prepare_plan(tiny_llama(layers=4), plan, profile, **kwargs).spec
    held = prepare_plan(tiny_llama(layers=4), plan, profile, reserve_bytes=40_000, **kwargs).spec
    resident = [sum(not b.streamed for b in s.blocks) for s in (free, held)]
    assert resident[1] < resident[0]
    assert held.budgets == free.budgets  # the budget itself is unchanged; the placement leaves room in it
