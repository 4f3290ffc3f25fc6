"""Prefetchers: sequential order with wrap-around, learned execution order, the interface contract."""
from __future__ import annotations

import pytest

from runtime.errors import JalapenoError
from runtime.prefetch import Prefetcher, SequentialPrefetcher


def test_sequential_predicts_next_with_wraparound() -> None:
    p = SequentialPrefetcher([3, 5, 7, 9], learn_order=False)
    assert p.predict(2) == [3, 5]  # nothing seen yet: from the start
    p.observe(7)
    assert p.predict(3) == [9, 3, 5]
    assert p.predict(10) == [9, 3, 5, 7]  # never more than the blocks, no repeats
    assert p.predict(0) == []
    p.observe(42)  # unknown ids are ignored
    assert p.predict(1) == [9] and p.observations == 1


def test_sequential_learns_execution_order_from_first_cycle() -> None:
    p = SequentialPrefetcher([0, 1, 2, 3])  # registration order
    for b in [2, 0, 1, 3]:  # execution order differs
        p.observe(b)
    p.observe(2)  # cycle complete
    assert p.order == (2, 0, 1, 3)
    assert p.predict(2) == [0, 1]
    p.observe(3)
    assert p.predict(2) == [2, 0]


def test_interface_validates() -> None:
    with pytest.raises(JalapenoError, match="must not repeat"):
        SequentialPrefetcher([1, 1])
    with pytest.raises(JalapenoError, match="`k` must be >= 0"):
        SequentialPrefetcher([1]).predict(-1)

    class Always(Prefetcher):  # a learned prefetcher only implements the two underscore hooks
        def _observe(self, block: int) -> None:
            self.last = block

        def _predict(self, k: int) -> list[int]:
            return [self.blocks[0]][:k]

    a = Always([4, 5])
    a.observe(5)
    assert a.predict(1) == [4] and a.last == 5
