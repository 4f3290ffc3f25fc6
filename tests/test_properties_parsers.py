"""Property-based tests of the parsers: any input either parses or raises the one-line user error the CLI prints.

A traceback is any other exception. Inputs mix the forms users write (sizes, shares, weights, JSON objects)
with whatever hypothesis makes of them (NaN, 1e999, unicode, deep nesting, wrong types).
"""
from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autosurgeon.errors import AutoSurgeonError
from runtime.errors import JalapenoError

USER_ERRORS = (AutoSurgeonError, JalapenoError)
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

numbers = st.one_of(st.integers(-10**30, 10**30), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, -0.0, 1e999, -1e999, float("nan"), 2**63, 2**64]))
units = st.sampled_from(["", "B", "kB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB", "k", "g", "EiB", "%", "xb"])
size_text = st.one_of(
    st.builds(lambda n, u, sp: f"{n}{' ' if sp else ''}{u}", numbers, units, st.booleans()),
    st.text(max_size=20),
    st.sampled_from(["1e999", "nan", "NaN", "inf", "-5", "", " ", "1e999%", "nan%", "-1%", "0%", "12.5.3MB", "1e-9"]),
)


def _one_line(exc: BaseException) -> None:
    text = str(exc)
    assert text and "\n" not in text, f"not one line: {text!r}"


def json_values(max_leaves: int = 12) -> st.SearchStrategy:
    leaves = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=8))
    return st.recursive(leaves, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), kids, max_size=4)),
                        max_leaves=max_leaves)


@FAST
@given(size_text)
def test_sizes(text: str) -> None:
    from runtime.sizes import MAX_BYTES, parse_bytes

    try:
        n = parse_bytes(text, what="--size")
    except USER_ERRORS as exc:
        _one_line(exc)
        assert "--size" in str(exc)
        return
    assert isinstance(n, int) and 0 <= n <= MAX_BYTES


@FAST
@given(st.one_of(size_text, numbers), st.integers(1, 2**40))
def test_memory_budgets(text: object, reference: int) -> None:
    from autosurgeon.planners.knapsack import parse_budget

    try:
        n = parse_budget(text, reference)
    except USER_ERRORS as exc:
        _one_line(exc)
        return
    assert isinstance(n, int) and n >= 0


@FAST
@given(st.one_of(size_text, numbers, st.none(), st.booleans()))
def test_kv_budgets(value: object) -> None:
    from autosurgeon.knobs import parse_kv_budget

    try:
        kind, amount = parse_kv_budget(value)
    except USER_ERRORS as exc:
        _one_line(exc)
        return
    assert kind in ("none", "bytes", "share")
    assert amount is None or (math.isfinite(amount) and amount > 0)


@FAST
@given(st.text(max_size=60))
def test_run_memory_budgets(text: str) -> None:
    from autosurgeon.cli.run import parse_budgets

    try:
        budgets = parse_budgets(text)
    except USER_ERRORS as exc:
        _one_line(exc)
        return
    assert all(isinstance(v, int) and v >= 0 for v in budgets.values())


@FAST
@given(st.one_of(st.text(max_size=40), st.builds(lambda a, b, c: f"latency={a},memory={b},energy={c}",
                                                  numbers, numbers, numbers)))
def test_preferences(text: str) -> None:
    from experiments.sweep.front import parse_preference

    try:
        weights = parse_preference(text, ("latency", "memory", "energy"))
    except USER_ERRORS as exc:
        _one_line(exc)
        return
    assert all(math.isfinite(w) and w >= 0 for w in weights.values())


@FAST
@given(st.one_of(json_values(), st.fixed_dictionaries(
    {"_type": st.just("autosurgeon.Plan"), "_version": st.one_of(st.just(1), numbers), "_data": json_values()})))
def test_plans(obj: object) -> None:
    from autosurgeon.plan import Plan

    text = json.dumps(obj, allow_nan=True)
    try:
        Plan.from_json(text)
    except USER_ERRORS as exc:
        _one_line(exc)


@FAST
@given(st.data())
def test_profiles(data: st.DataObject) -> None:
    from autosurgeon.hardware.resolve import load_preset
    from autosurgeon.hardware.profile import HardwareProfile

    base = load_preset("rtx-4090").to_dict()
    unit = dict(base["units"][0])
    unit["memory_bandwidth"] = data.draw(st.one_of(numbers, st.text(max_size=4), st.none()), "bandwidth")
    unit["gemm_flops"] = data.draw(st.one_of(st.dictionaries(st.sampled_from(["float32", "bfloat16", "int8"]),
                                                             st.one_of(numbers, st.text(max_size=3)), max_size=3),
                                             json_values(4)), "rates")
    unit["memory_bytes"] = data.draw(st.one_of(numbers, st.text(max_size=3)), "memory")
    doc = {**base, "units": [unit], "links": data.draw(st.dictionaries(st.text(max_size=5), numbers, max_size=2))}
    text = json.dumps(doc, allow_nan=True)
    try:
        profile = HardwareProfile.from_json(text, origin="p.json")
    except USER_ERRORS as exc:
        _one_line(exc)
        return
    u = profile.units[0]
    assert 0 < u.memory_bandwidth < math.inf and all(0 < r < math.inf for r in u.gemm_flops.values())


@FAST
@given(json_values())
def test_sweep_configs(obj: object) -> None:
    from experiments.sweep import SweepConfig

    if not isinstance(obj, dict):
        obj = {"model": obj}
    try:
        SweepConfig.from_dict(obj)
    except USER_ERRORS as exc:
        _one_line(exc)


@pytest.mark.parametrize("depth", [10, 5_000, 200_000])
def test_deeply_nested_json_is_a_user_error(depth: int) -> None:
    from autosurgeon.hardware.profile import HardwareProfile
    from autosurgeon.plan import Plan

    text = "[" * depth + "]" * depth
    for parse in (Plan.from_json, HardwareProfile.from_json):
        with pytest.raises(USER_ERRORS):
            parse(text)
