"""The evaluator-error benchmark's runtime reference: plans kept open, timed in interleaved rounds; ties."""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest

from autosurgeon.cost.profiled import TimingSettings
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.evaluate import EvaluationCache, RuntimeEvaluator
from autosurgeon.space.search_space import SearchSpace
from experiments.benchmarks.runtime_reference import Reference, measure, order_check
from runtime.kernels import QuantizedLinear

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "autosurgeon"))
from test_evaluate import host_profile, tiny_lm, with_all


class _FakeRuntime:
    timing = TimingSettings(clock="cpu")

    def __init__(self) -> None:
        self.opened, self.closed, self.calls = [], [], []

    @contextlib.contextmanager
    def open_step(self, x):
        self.opened.append(x)
        try:
            yield None, (lambda: self.calls.append(x)), None, "cpu"
        finally:
            self.closed.append(x)


def test_every_plan_is_opened_once_and_timed_in_every_round_in_a_new_order():
    rt = _FakeRuntime()
    ref = measure(rt, [0, 1, 2, 3], rounds=4, steps=2, warmup=1, seed=0)
    assert rt.opened == [0, 1, 2, 3] and sorted(rt.closed) == [0, 1, 2, 3]  # applied once, closed at the end
    assert [len(r) for r in ref.rounds] == [4] * 4
    assert all(sorted(o) == [0, 1, 2, 3] for o in ref.orders) and len({tuple(o) for o in ref.orders}) > 1
    assert len(rt.calls) == 4 * 4 * (1 + 2)  # rounds x plans x (warm-up + timed steps)
    # the calls follow the rounds' orders: each plan's warm-up and steps together, plans interleaved by round
    assert rt.calls[::3] == [i for o in ref.orders for i in o]


def test_a_pair_is_ordered_only_when_one_plan_is_faster_in_every_round():
    ref = Reference(rounds=[[1.0, 1.1, 0.9], [2.0, 2.1, 1.9], [1.5, 0.8, 2.5]])
    assert ref.order(0, 1) == -1 and ref.order(1, 0) == 1
    assert ref.order(0, 2) == 0 and ref.order(1, 2) == 0  # crossed in some round: a tie
    assert ref.medians == [1.0, 2.0, 1.5]
    assert ref.dispersion(0) == pytest.approx(0.2)
    check = order_check(ref, [0, 1, 2], [3.0, 1.0, 0.5], ["a", "b", "c"])
    assert check["resolved"] == 1 and check["ties"] == 2 and check["pairs"] == 3
    assert check["misordered"] == ["a < b"] and not check["matches"]  # the runtime's order is what is listed
    assert order_check(ref, [0, 1, 2], [1.0, 2.0, 0.1], ["a", "b", "c"])["matches"]  # ties cannot be mis-ordered


def test_fewer_than_two_rounds_is_refused_naming_the_argument():
    with pytest.raises(InvalidArgumentError, match="`rounds` must be >= 2"):
        measure(_FakeRuntime(), [0], rounds=1)


def test_the_runtime_evaluator_opens_what_it_evaluates():
    loaded, profile = tiny_lm(), host_profile()
    space = SearchSpace.build(loaded, profile)
    rt = RuntimeEvaluator(loaded, profile, space=space, quality=False, energy=False, cache=EvaluationCache(),
                          timing=TimingSettings(clock="cpu", step_warmup=1, step_repeats=2))
    x8 = with_all(space, "precision", "int8")
    with rt.open_step(x8) as (session, step, prefill, device):
        assert device == "cpu" and prefill is not None
        assert any(isinstance(m, QuantizedLinear) for m in session.model.modules())
        step()
    ref = measure(rt, [space.default_vector(), x8], rounds=2, steps=1, warmup=0)
    assert all(len(r) == 2 and min(r) > 0 for r in ref.rounds)
    assert rt.evaluate(x8).latency_s > 0  # evaluate goes through the same road
