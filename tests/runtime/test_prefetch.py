"""Prefetchers: sequential order with wrap-around, learned execution order, the interface contract; expert
prefetchers: Markov order-k probabilities and backoff on scripted traces, block skips, gate speculation."""
from __future__ import annotations

import pytest

from runtime.errors import JalapenoError
from runtime.prefetch import GatePrefetcher, LRUOnlyPrefetcher, MarkovPrefetcher, Prefetcher, SequentialPrefetcher


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


# ---------------------------------------------------------------------------------------------- experts


def _feed(p: MarkovPrefetcher, trace: list[list[tuple[int, ...]]]) -> None:
    """``trace[t][layer]`` is token t's experts at that layer (one token per call, as in decoding)."""
    for token in trace:
        for layer, row in enumerate(token):
            p.observe_routing(layer, [row])


def test_markov_order1_probabilities_on_a_scripted_trace() -> None:
    p = MarkovPrefetcher(2, 4, order=1)
    _feed(p, [[(0, 1), (2, 3)]] * 3 + [[(0, 1), (0, 2)]])
    p.observe_routing(0, [(1, 0)])  # unsorted rows are the same context
    # context "layer 0 used {0, 1}" was followed 4 times: expert 2 every time, 3 three times, 0 once
    assert p.probabilities() == {2: 1.0, 3: 0.75, 0: 0.25}
    assert p.predict(3) == [1 * 4 + 2, 1 * 4 + 3, 1 * 4 + 0]  # global ids, most probable first
    # layer 1 -> layer 0 (next token) is learned too: {2,3} -> {0,1} three times (tokens 1-2, 2-3, 3-4)
    assert p.counts[1][((1, (2, 3)),)][0] == {0: 3}
    assert p.probabilities(order=0) == {2: 1.0, 3: 0.75, 0: 0.25}  # marginal of layer 1 (4 tokens)


def test_markov_order2_disambiguates_and_backs_off() -> None:
    # 3 layers, 1 expert per token: layer 1 is always expert 0, layer 2 copies layer 0's choice (1 -> 1, 2 -> 2)
    trace = [[(1,), (0,), (1,)], [(2,), (0,), (2,)]] * 3
    one = MarkovPrefetcher(3, 4, order=1)
    two = MarkovPrefetcher(3, 4, order=2)
    for p in (one, two):
        _feed(p, trace)
        p.observe_routing(0, [(1,)])
        p.observe_routing(1, [(0,)])
    assert one.probabilities() == {1: 0.5, 2: 0.5}  # layer 1's expert 0 says nothing about layer 2
    assert two.probabilities() == {1: 1.0}  # (layer 0: 1, layer 1: 0) -> layer 2 uses 1
    assert two.predict(1) == [2 * 4 + 1]
    # an unseen order-2 context backs off to order 1
    two.observe_routing(0, [(3,)])
    two.observe_routing(1, [(0,)])
    assert two.probabilities() == {1: 0.5, 2: 0.5}


def test_markov_learns_block_skips_and_observe_by_id() -> None:
    p = MarkovPrefetcher(4, 2, order=1)
    for _ in range(3):  # a model that exits after layer 1 or skips layer 2: 0 -> 1 -> 3 -> 0
        for layer in (0, 1, 3):
            p.observe(p.expert_id(layer, 1))
    p.observe(p.expert_id(1, 1))
    assert p.next_layer(1) == 3 and p.predict(1) == [p.expert_id(3, 1)]
    # observe(id) of two experts of one layer forms one row (counted once, complete)
    q = MarkovPrefetcher(2, 4, order=1)
    for _ in range(2):
        q.observe(q.expert_id(0, 0)); q.observe(q.expert_id(0, 3)); q.observe(q.expert_id(1, 2))  # noqa: E702
    q.observe(q.expert_id(0, 0)); q.observe(q.expert_id(0, 3))  # noqa: E702
    assert q.counts[1][((0, (0, 3)),)][0] == {1: 2} and q.probabilities() == {2: 1.0}


def test_gate_prefetcher_applies_the_next_router_and_lru_predicts_nothing() -> None:
    import torch

    routers = [torch.eye(3), torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])]
    g = GatePrefetcher(routers, top_k=1)
    g.observe_routing(0, [(0,)], hidden=torch.tensor([[0.0, 4.0, 0.0]]))
    assert g.predict(1) == [1 * 3 + 2]  # router 1 maps hidden dim 1 to expert 2
    assert g.predict(3)[0] == 5 and sorted(g.predict(3)) == [3, 4, 5]
    g.observe_routing(1, [(2,)], hidden=torch.tensor([[0.0, 4.0, 0.0]]))
    assert g.predict(2) == []  # the last layer: the next token's routing is not known yet
    lru = LRUOnlyPrefetcher(2, 3)
    lru.observe_routing(0, [(1,)])
    assert lru.predict(4) == []


def test_expert_prefetcher_validates() -> None:
    with pytest.raises(JalapenoError, match="`order` must be >= 1"):
        MarkovPrefetcher(2, 2, order=0)
    with pytest.raises(JalapenoError, match=r"`layer` must be in \[0, 2\)"):
        MarkovPrefetcher(2, 2).observe_routing(2, [(0,)])
