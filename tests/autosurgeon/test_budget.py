"""MemoryBudget: one grammar for every command's --memory-budget, carried by plans, enforced by apply_plan."""
from __future__ import annotations

import pytest

from autosurgeon.budget import FASTEST, MemoryBudget, Share
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.plan import Plan


@pytest.mark.parametrize("text, limits", [
    ("2GiB", {FASTEST: 2 * 2**30}),
    ("25%", {FASTEST: Share(25.0)}),
    ("gpu=3GiB,cpu=20GiB", {"gpu": 3 * 2**30, "cpu": 20 * 2**30}),
    (" cpu = 40% , disk=1MB ", {"cpu": Share(40.0), "disk": 10**6}),
    ("", {}),
])
def test_parse_forms(text, limits):
    assert dict(MemoryBudget.parse(text).limits) == limits


@pytest.mark.parametrize("text, match", [
    ("1e999", "--memory-budget"),
    ("nan%", "--memory-budget"),
    ("-5%", "--memory-budget"),
    ("tpu=3GiB", "tier 'tpu' is unknown"),
    ("gpu=1GiB,gpu=2GiB", "twice"),
    ("gpu=", "has no size"),
    ("3 parsecs", "--memory-budget"),
    ("2EiB", "--memory-budget"),
])
def test_bad_input_names_the_flag(text, match):
    with pytest.raises(InvalidArgumentError, match=match):
        MemoryBudget.parse(text, argument="--memory-budget")


def test_resolve_shares_and_the_fastest_tier():
    budget = MemoryBudget.parse("50%,disk=1KiB")
    assert budget.resolve(reference_bytes=1000, fastest="gpu") == {"gpu": 500, "disk": 1024}
    with pytest.raises(InvalidArgumentError, match="share"):
        budget.resolve(fastest="cpu")
    with pytest.raises(InvalidArgumentError, match="fastest"):
        budget.resolve(reference_bytes=1000)


def test_plan_carries_its_budget_and_old_plans_are_unchanged():
    plain = Plan(default={"precision": "int8"})
    assert "budgets" not in plain.to_dict()["_data"]  # a plan without a budget is written as before
    planned = Plan(default={"precision": "int8"}, budgets="cpu=25%")
    again = Plan.from_json(planned.to_json())
    assert again.budgets == planned.budgets and again.to_dict()["_data"]["budgets"] == {"cpu": "25%"}
    with pytest.raises(InvalidArgumentError, match="plan budgets"):
        Plan(budgets="cpu=lots")


def test_every_command_spells_the_budget_one_way():
    from autosurgeon.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    with_budget = []
    for name, command in sub.choices.items():
        text = command.format_help()
        assert "--budget-memory" not in text and "--budget " not in text, name
        if "--memory-budget" in text:
            with_budget.append(name)
    assert {"plan", "run", "front", "apply", "demo"} <= set(with_budget)
    # the old spellings still parse
    args = parser.parse_args(["plan", "m", "--device", "local", "--budget-memory", "25%", "--out", "p.json"])
    assert args.memory_budget == "25%"


def test_the_precision_table_is_what_every_consumer_reads():
    from autosurgeon import knobs, precisions
    from autosurgeon.cost import footprint
    from autosurgeon.cost.base import compute_dtype
    from autosurgeon.space import masks

    assert knobs.PRECISIONS == precisions.NAMES and masks.PRECISION_BITS is precisions.PRECISION_BITS
    assert footprint.FLOAT_ITEMSIZE is precisions.FLOAT_ITEMSIZE
    assert set(masks.FLOAT_PRECISIONS) | precisions.QUANTIZED_PRECISIONS == set(precisions.NAMES)
    for name, row in precisions.TABLE.items():
        parts = footprint.tensor_bytes(64 * 256, 64, name, 64)
        if row.is_float:
            assert parts == [64 * 256 * row.itemsize]
        else:  # codes at the row's bits per element, plus float32 scales (and offsets when grouped)
            assert parts[0] == 64 * 256 * row.bits // 8 and all(p > 0 for p in parts[1:])
        assert compute_dtype(name) == row.compute_dtype
