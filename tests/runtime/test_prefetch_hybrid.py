"""Hybrid expert prefetcher: Markov prior x next-layer gate likelihood on a scripted trace (exact numbers),
the Markov fallback where the gate cannot speak, cache statistics through the streamer, token-identical
generation on tiny-moe-test, validation messages."""
from __future__ import annotations

import math

import pytest
import torch

from runtime.errors import JalapenoError
from runtime.experts import ExpertConfig, ExpertStreamer
from runtime.prefetch import MarkovPrefetcher
from runtime.prefetch_hybrid import HybridPrefetcher
from runtime.tensors import TensorStore

# 2 layers x 4 experts, top-1; router r maps hidden dimension i to expert i (logit = hidden[i])
ROUTERS = [torch.eye(4), torch.eye(4)]
TRACE = [[(0,), (2,)]] * 3 + [[(0,), (3,)]]  # layer 0's expert 0 is followed by 2 three times, by 3 once


def _feed(p, trace) -> None:
    for token in trace:
        for layer, row in enumerate(token):
            p.observe_routing(layer, [row])


def test_prior_times_gate_on_a_scripted_trace() -> None:
    p = HybridPrefetcher(ROUTERS, top_k=1, depth=1, gate_weight=1.0, prior_floor=0.1)
    _feed(p, TRACE)
    hidden = torch.tensor([[0.0, 0.0, 0.0, math.log(9.0)]])  # gate: expert 3 with 9/12, the others 1/12 each
    p.observe_routing(0, [(0,)], hidden=hidden)
    prior = p.prior(p._history, 1, 1)
    # context {0} at layer 0 -> layer 1: {2: 3/4, 3: 1/4}; the layer's marginal is the same; + 1e-6 floor
    assert prior == pytest.approx([1e-6, 1e-6, 0.75 + 1e-6, 0.25 + 1e-6], abs=1e-9)
    gate = p.gate_probs(1)
    assert gate[0] == pytest.approx([1 / 12, 1 / 12, 1 / 12, 9 / 12], abs=1e-6)
    # q ~ prior * gate: expert 3 0.25 * 9/12 = 0.1875 beats expert 2 0.75 * 1/12 = 0.0625 -> 0.75 / 0.25
    q = p._combine(prior, p.gate_logits(1)[0])
    assert q[3] == pytest.approx(0.75, abs=1e-4) and q[2] == pytest.approx(0.25, abs=1e-4)
    assert p.predict(2) == [1 * 4 + 3, 1 * 4 + 2]  # the gate flips the Markov order
    markov = MarkovPrefetcher(2, 4, depth=1)
    _feed(markov, TRACE + [[(0,)]])
    assert markov.predict(2) == [1 * 4 + 2, 1 * 4 + 3]
    p.gate_weight = 0.0  # Markov alone: its order back
    assert p.predict(2) == [1 * 4 + 2, 1 * 4 + 3]


def test_gate_is_not_used_across_the_token_boundary_and_deeper_layers_chain() -> None:
    p = HybridPrefetcher(ROUTERS, top_k=1, depth=2)
    _feed(p, TRACE)
    p.observe_routing(0, [(0,)], hidden=torch.tensor([[0.0, 0.0, 0.0, math.log(9.0)]]))
    # depth 2: layer 1 (gate + prior: expert 3), then the next token's layer 0, chained on the predicted
    # row (3,): (1, (3,)) was followed by layer 0's expert 0 once
    assert p.predict(2) == [1 * 4 + 3, 0]
    # after the last layer the next token's first layer follows: a hidden state pointing at expert 1 for
    # router 0 is ignored (it belongs to the token just finished); Markov's (1, (2,)) -> 0 decides
    p.observe_routing(1, [(2,)], hidden=torch.tensor([[0.0, 9.0, 0.0, 0.0]]))
    assert p.predict(1) == [0]


@pytest.mark.parametrize("prefetch", ["markov", "hybrid"])
def test_cache_statistics_without_hidden_states_equal_markovs(prefetch: str) -> None:
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    cfg = MixtralConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=3, num_attention_heads=2,
                        num_key_value_heads=1, vocab_size=64, num_local_experts=2, num_experts_per_tok=1,
                        max_position_embeddings=64, tie_word_embeddings=False)
    model = MixtralForCausalLM(cfg).eval()
    store = TensorStore()
    streamer = ExpertStreamer(model, store, ExpertConfig(home="cpu", capacity=2, prefetch=prefetch, lookahead=1),
                              device="cpu").attach()
    try:
        assert type(streamer.prefetcher).__name__ == {"markov": "MarkovPrefetcher",
                                                      "hybrid": "HybridPrefetcher"}[prefetch]
        for _ in range(4):  # the path (0, 1, 0), routed without hidden states: the hybrid is its Markov prior
            for layer, expert in enumerate((0, 1, 0)):
                streamer.route(layer, [[expert]])
                streamer.done()
        s = streamer.stats
        assert (s.hits, s.misses, s.prefetches, s.prefetch_used, s.fetches) == (9, 3, 9, 8, 12)
    finally:
        streamer.detach()
        store.close()


def test_validation_names_the_options() -> None:
    with pytest.raises(JalapenoError, match="`prefetch` must be one of markov, lru, gate, hybrid, got 'oracle'"):
        ExpertConfig(prefetch="oracle")
    assert ExpertConfig(prefetch="hybrid").prefetch == "hybrid"
    with pytest.raises(JalapenoError, match="`gate_weight` must be >= 0, got -1"):
        HybridPrefetcher(ROUTERS, top_k=1, gate_weight=-1)
    with pytest.raises(JalapenoError, match=r"`prior_floor` must be in \(0, 1\], got 0"):
        HybridPrefetcher(ROUTERS, top_k=1, prior_floor=0)
    with pytest.raises(JalapenoError, match="`routers` must list one router weight per MoE layer"):
        HybridPrefetcher([], top_k=1)
    with pytest.raises(JalapenoError, match="`top_k` must be >= 1, got 0"):
        HybridPrefetcher(ROUTERS, top_k=0)
