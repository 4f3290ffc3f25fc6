"""The least budget an unplanned model runs in: exact (the runtime runs at it and refuses one byte less), and
named by `run` and `api.apply` instead of the next allocation that failed (issue 17)."""
from __future__ import annotations

import argparse

import pytest
import torch

from autosurgeon.cli.run import register
from autosurgeon.cli.run_plan import flags_plan
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.planners.least_budget import FORMATS, least_budget
from autosurgeon.transforms.apply import prepare_plan
from autosurgeon.zoo import load_model
from runtime.errors import BudgetExceededError
from runtime.session import Session, find_blocks
from runtime.spec import BlockSpec, SessionSpec

MODEL = "tiny-llama-test"


def _formatted(fmt: str | None):
    """The model as `run --weight-format FMT` formats it (float: a cast; int8/int4: the flags' plan applied)."""
    loaded = load_model(MODEL, device="cpu")
    model = loaded.model
    if fmt in ("float32", "bfloat16", "float16"):
        model.to(getattr(torch, fmt))
    elif fmt in ("int8", "int4"):
        plan = flags_plan(model, weight_format=fmt, session={})
        model = prepare_plan(loaded, plan, "local", inplace=True, placement="fit", device="cpu").model
    return model


def _generate(model, cpu_budget: int) -> None:
    """Every block streamed from disk with no lookahead (the floor's placement), under ``cpu_budget``."""
    n = len(find_blocks(model)[1])
    spec = SessionSpec(blocks=tuple(BlockSpec(device="cpu", home="disk") for _ in range(n)),
                       rest=BlockSpec(device="cpu"), budgets={"cpu": cpu_budget}, lookahead=0)
    with Session(model, spec) as session:
        session.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2)


@pytest.mark.parametrize("fmt", [None, "bfloat16", "int4"])
def test_floor_is_exact_for_the_runtime(fmt) -> None:
    floor = least_budget(_formatted(None), weight_format=fmt).total
    assert floor == least_budget(_formatted(fmt)).total  # computed from the float model = measured once formatted
    _generate(_formatted(fmt), floor)  # runs at the floor ...
    with pytest.raises(BudgetExceededError):  # ... and the runtime itself refuses one byte less
        _generate(_formatted(fmt), floor - 1)


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["run", *argv])
    return args.func(args)


def test_run_names_the_true_minimum_not_the_next_allocation() -> None:
    model = _formatted(None)
    floor = least_budget(model).total
    best = min((least_budget(model, weight_format=f) for f in FORMATS), key=lambda f: f.total)
    with pytest.raises(InvalidArgumentError) as info:
        _run([MODEL, "--memory-budget", "cpu=64KiB", "--max-new-tokens", "2", "--prompt-ids", "1,2,3"])
    message = str(info.value)
    assert "`--memory-budget`" in message and "64.00 KiB" in message
    assert f"({floor} B) with the weights as loaded" in message
    assert f"({best.total} B) with `--weight-format {best.weight_format}`" in message
    assert best.total < floor


def test_run_at_the_named_minimum_works(capsys) -> None:
    floor = least_budget(_formatted(None), weight_format="int4").total
    with pytest.raises(InvalidArgumentError, match=f"least .* \\({floor} B\\) with int4"):
        _run([MODEL, "--memory-budget", f"cpu={floor - 1}B", "--weight-format", "int4", "--max-new-tokens", "2",
              "--prompt-ids", "1,2,3"])
    assert _run([MODEL, "--memory-budget", f"cpu={floor}B", "--weight-format", "int4", "--max-new-tokens", "2",
                 "--prompt-ids", "1,2,3", "--json"]) == 0


def test_api_apply_names_the_minimum() -> None:
    from autosurgeon import api

    loaded = load_model(MODEL, device="cpu")
    floor = least_budget(loaded.model).total
    with pytest.raises(InvalidArgumentError, match=f"`budget` gives the cpu tier .* \\({floor} B\\)"):
        api.apply(loaded, device="cpu", memory_budget="cpu=1KiB")
