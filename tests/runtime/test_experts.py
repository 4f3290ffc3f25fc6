"""Expert streaming: exact cache/prefetch statistics on scripted traces, token-identical greedy output on the
trained tiny-moe-test, accounting of the cache on the store, clean detach, precise errors."""
from __future__ import annotations

import pytest
import torch

from runtime.errors import BudgetExceededError, JalapenoError
from runtime.experts import ExpertConfig, ExpertStreamer, find_expert_modules
from runtime.prefetch_hybrid import HybridPrefetcher
from runtime.tensors import TensorStore


def tiny_mixtral(*, layers: int = 3, experts: int = 2, top_k: int = 1, seed: int = 0) -> torch.nn.Module:
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(seed)
    cfg = MixtralConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=layers, num_attention_heads=2,
                        num_key_value_heads=1, vocab_size=64, num_local_experts=experts, num_experts_per_tok=top_k,
                        max_position_embeddings=64, tie_word_embeddings=False)
    return MixtralForCausalLM(cfg).eval()


EXPERT_BYTES = (2 * 8 * 8 + 8 * 8) * 4  # gate_up (2I, H) + down (H, I), float32


def _replay(streamer: ExpertStreamer, tokens: list[tuple[int, ...]]) -> None:
    """Each token routes to ``token[layer]`` (top-1) at every layer, as the hooks would report it."""
    for token in tokens:
        for layer, expert in enumerate(token):
            streamer.route(layer, [[expert]])
            streamer.done()


@pytest.mark.parametrize("prefetch, expected", [
    # 3 layers x 2 experts, cache of 2 slots, the same path (0, 1, 0) for 4 tokens = a cycle of 3 experts.
    # LRU only: a cycle longer than the cache misses every time.
    ("lru", dict(hits=0, misses=12, prefetches=0, prefetch_used=0, fetches=12)),
    # Markov (order 1, one expert ahead, whole next token predicted for eviction): steps 1-3 miss while it
    # learns; the miss at step 3 evicts the expert ranked least urgent (layer 1's) rather than the least
    # recent; step 4 hits the still-cached layer-0 expert, and from there each layer prefetches the next
    # one's expert: 9 hits, 9 prefetches (steps 4-12), 8 of them used (step 12's is for a token not run).
    ("markov", dict(hits=9, misses=3, prefetches=9, prefetch_used=8, fetches=12)),
])
def test_cache_statistics_on_a_scripted_trace(prefetch: str, expected: dict[str, int]) -> None:
    model = tiny_mixtral()
    store = TensorStore()
    streamer = ExpertStreamer(model, store, ExpertConfig(home="cpu", capacity=2, prefetch=prefetch, lookahead=1),
                              device="cpu").attach()
    try:
        assert streamer.cache is not None and streamer.cache.capacity == 2
        _replay(streamer, [(0, 1, 0)] * 4)
        s = streamer.stats
        got = dict(hits=s.hits, misses=s.misses, prefetches=s.prefetches, prefetch_used=s.prefetch_used,
                   fetches=s.fetches)
        assert got == expected
        assert s.bytes_moved == expected["fetches"] * EXPERT_BYTES
        assert s.hit_rate == expected["hits"] / 12 and s.layers == 12
    finally:
        streamer.detach()
        store.close()


def test_gate_prefetch_and_eviction_order_on_a_scripted_trace() -> None:
    model = tiny_mixtral(layers=2, experts=4, top_k=1)
    store = TensorStore()
    streamer = ExpertStreamer(model, store, ExpertConfig(home="cpu", capacity=4, prefetch="lru", lookahead=0),
                              device="cpu").attach()
    try:
        _replay(streamer, [(0, 1), (2, 3)])  # 4 distinct experts fill the 4 slots
        assert streamer.cache.resident() == [0, 5, 2, 7]  # LRU order, global ids layer * 4 + expert
        _replay(streamer, [(0, 2)])  # 0 hits (moves to the end); 6 evicts the least recent, 5
        assert streamer.cache.resident() == [2, 7, 0, 6]
        assert (streamer.stats.hits, streamer.stats.misses) == (1, 5)
    finally:
        streamer.detach()
        store.close()


def test_token_identical_to_hugging_face_on_tiny_moe_test(tmp_path) -> None:
    from autosurgeon.zoo import load_model

    model = load_model("tiny-moe-test", cache_dir=tmp_path).model
    ids = torch.tensor([list(b"def main(argv):\n    ")])

    def greedy() -> torch.Tensor:
        with torch.no_grad():
            return model.generate(ids, max_new_tokens=24, do_sample=False, attention_mask=torch.ones_like(ids),
                                  pad_token_id=0)

    ref = greedy()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    total = sum(m.gate_up_proj.numel() + m.down_proj.numel() for _, m, _ in find_expert_modules(model)) * 4
    for prefetch in ("markov", "lru", "gate", "hybrid"):
        store = TensorStore()
        streamer = ExpertStreamer(model, store, ExpertConfig(home="disk", capacity=0.25, prefetch=prefetch,
                                                             lookahead=2)).attach()
        try:
            # 2 layers x 4 experts: 25% is 2 slots, raised to one layer's 4 (a prefill routes to all of them)
            assert streamer.cache.capacity == 4
            assert store.usage()["disk"]["used"] == total  # every expert lives on disk, sliced
            assert store.usage()["cpu"]["used"] == total // 2  # the cache: 4 of 8 experts
            assert torch.equal(greedy(), ref), prefetch
            s = streamer.stats
            assert s.misses > 0 and s.hits + s.misses >= 24 * 2 * 2 and s.layers == 24 * 2  # 1 prefill + 23 decode steps
            if prefetch == "hybrid":
                assert isinstance(streamer.prefetcher, HybridPrefetcher) and s.prefetches > 0
                assert streamer.prefetcher.gate_predictions > 0  # the hooks passed hidden states: the gate took part
        finally:
            streamer.detach()
            store.close()
        after = dict(model.named_parameters())
        assert all(torch.equal(after[n], before[n]) for n in before)  # detach restored the fused parameters
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_budget_and_validation_errors() -> None:
    with pytest.raises(JalapenoError, match="`capacity` must be a fraction in"):
        ExpertConfig(capacity=1.5)
    with pytest.raises(JalapenoError, match="`prefetch` must be one of markov, lru, gate"):
        ExpertConfig(prefetch="oracle")
    with pytest.raises(JalapenoError, match="`home` for experts must be 'cpu' or 'disk'"):
        ExpertConfig(home="gpu")
    with pytest.raises(JalapenoError, match="has no fused experts modules"):
        ExpertStreamer(torch.nn.Linear(2, 2), TensorStore(), ExpertConfig())
    model = tiny_mixtral()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    store = TensorStore(budgets={"cpu": EXPERT_BYTES})  # the cache needs 2 experts' bytes
    with pytest.raises(BudgetExceededError, match="experts:cache:cpu"):
        ExpertStreamer(model, store, ExpertConfig(home="disk", capacity=2), device="cpu").attach()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # failed attach restored all
    assert store.usage()["disk"]["used"] == 0 and store.usage()["cpu"]["used"] == 0


def test_home_on_the_execution_tier_still_fills_the_slots() -> None:
    # store.fetch returns a same-tier home copy as itself: the cache must copy it into the slot
    model = tiny_mixtral(layers=2, experts=4, top_k=2)
    ids = torch.randint(0, 64, (1, 5), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=8, do_sample=False, attention_mask=torch.ones_like(ids),
                             pad_token_id=0)
    store = TensorStore()
    streamer = ExpertStreamer(model, store, ExpertConfig(home="cpu", capacity=4), device="cpu").attach()
    try:
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=8, do_sample=False, attention_mask=torch.ones_like(ids),
                                 pad_token_id=0)
    finally:
        streamer.detach()
        store.close()
    assert torch.equal(out, ref)
