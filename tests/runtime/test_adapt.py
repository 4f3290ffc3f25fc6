"""Adaptive tuning: a forced memory squeeze mid-generation makes the Session demote resident blocks (logged
with its reason) and the request completes with the same tokens; thresholds validated; expert lookahead."""
from __future__ import annotations

import pytest
import torch
from _streaming_models import greedy, tiny_llama

from runtime.adapt import AdaptConfig
from runtime.errors import JalapenoError
from runtime.session import Session, find_blocks, module_bytes
from runtime.spec import BlockSpec, SessionSpec


def test_memory_squeeze_mid_generation_demotes_blocks_without_failing() -> None:
    model = tiny_llama(layers=4)
    ids = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(3))
    ref = greedy(model, ids, 12)
    _, blocks = find_blocks(model)
    block = module_bytes(blocks[0])
    total = module_bytes(model)
    spec = SessionSpec(default=BlockSpec(device="cpu"), budgets={"cpu": int(total * 1.1)}, lookahead=1)
    with Session(model, spec, adapt=AdaptConfig(every=1)) as session:
        squeezed: dict[str, int] = {}

        def squeeze(module: torch.nn.Module, args: tuple, output: object) -> None:
            if session.adapter.step == 3 and not squeezed:  # after the 3rd step: the tier shrinks by 1.5 blocks
                squeezed["budget"] = session.store.used("cpu") - int(1.5 * block)
                session.store.budgets["cpu"] = squeezed["budget"]

        handle = model.register_forward_hook(squeeze)  # runs after the adapter's hook of the same step
        out = session.generate(ids, max_new_tokens=12)
        handle.remove()
        stats = session.stats()
        used = session.store.used("cpu")
    assert torch.equal(out, ref)  # the request completed, tokens unchanged (streaming is exact)
    adjustments = stats.extra["adjustments"]
    residency = [a for a in adjustments if a["knob"] == "residency"]
    assert residency and residency[0]["step"] == 4  # reacted at the first step after the squeeze
    assert "of its budget" in residency[0]["reason"] and "demoted" in residency[0]["reason"]
    assert stats.extra["streamed_blocks"] and stats.extra["streamed_blocks"][-1] == 3  # last resident block first
    assert used <= squeezed["budget"]  # back under the shrunk budget
    assert stats.misses > 0 and stats.fetches > 0  # the demoted blocks really streamed


def test_squeeze_lowers_lookahead_first_when_blocks_already_stream() -> None:
    model = tiny_llama(layers=3)
    ids = torch.randint(0, 256, (1, 5), generator=torch.Generator().manual_seed(4))
    ref = greedy(model, ids, 8)
    spec = SessionSpec(blocks=(BlockSpec(device="cpu"), BlockSpec(device="cpu", home="disk"),
                               BlockSpec(device="cpu", home="disk")), lookahead=2, budgets={"cpu": "64MiB"})
    with Session(model, spec, adapt=AdaptConfig(every=1)) as session:
        slot = max(u.nbytes for u in session.streamer.units if u.streamed)

        def squeeze(module: torch.nn.Module, args: tuple, output: object) -> None:
            if session.adapter.step == 2:
                session.store.budgets["cpu"] = session.store.used("cpu") - slot // 2

        handle = model.register_forward_hook(squeeze)
        out = session.generate(ids, max_new_tokens=8)
        handle.remove()
        adjustments = session.stats().extra["adjustments"]
    assert torch.equal(out, ref)
    first = adjustments[0]
    assert (first["knob"], first["old"], first["new"], first["step"]) == ("lookahead", 2, 1, 3)
    assert "one staging slot fewer" in first["reason"]


def test_adapt_config_validation() -> None:
    with pytest.raises(JalapenoError, match="need 0 < `pressure_low` < `pressure_high`"):
        AdaptConfig(pressure_low=0.9, pressure_high=0.5)


def test_squeeze_with_a_kv_cache_halves_the_window_and_asks_int8_for_the_next_request() -> None:
    from runtime.kvcache import KVCacheConfig

    model = tiny_llama(layers=2)
    ids = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(8))
    spec = SessionSpec(default=BlockSpec(device="cpu"), budgets={"cpu": "64MiB"})
    with Session(model, spec, kv=KVCacheConfig(precision="float", page_tokens=4),
                 adapt=AdaptConfig(every=1, long_sequence=16, min_kv_window=8)) as session:

        def squeeze(module: torch.nn.Module, args: tuple, output: object) -> None:
            if session.adapter.step == 20:  # 25 tokens in the cache: the tier shrinks under what is held
                session.store.budgets["cpu"] = session.store.used("cpu") - 1

        handle = model.register_forward_hook(squeeze)
        out = session.generate(ids, max_new_tokens=30)
        handle.remove()
        stats = session.stats()
        knobs = [(a["knob"], a["old"], a["new"], a["step"]) for a in stats.extra["adjustments"]]
        # step 21 sees 26 tokens (6 prompt + 20 decoded): the window becomes 13, and that step sheds nothing else
        assert knobs[:2] == [("kv_window", None, 13, 21), ("kv_precision", "float", "int8", 21)]
        assert out.shape[1] == 6 + 30 and stats.extra["kv"]["evictions"] > 0
        assert stats.extra["kv"]["tokens_kept"] <= 13 + 4 + 4  # window + sinks + a page being filled
        session.store.budgets["cpu"] = None
        session.generate(ids, max_new_tokens=2)  # the next request stores its KV in int8
        int8_bytes = session.stats().extra["kv"]["bytes_used"]
    with Session(model, spec, kv=KVCacheConfig(precision="float", page_tokens=4)) as plain:
        plain.generate(ids, max_new_tokens=2)
        float_bytes = plain.stats().extra["kv"]["bytes_used"]
    assert 0 < int8_bytes < float_bytes / 2  # 1 byte per value + fp16 scales instead of 4 bytes


def test_expert_lookahead_drops_when_prefetches_go_unused() -> None:
    from transformers import MixtralConfig, MixtralForCausalLM

    from runtime.experts import ExpertConfig

    torch.manual_seed(0)
    cfg = MixtralConfig(hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=256, num_local_experts=4, num_experts_per_tok=2,
                        max_position_embeddings=128, tie_word_embeddings=False)
    model = MixtralForCausalLM(cfg).eval()
    ids = torch.randint(0, 256, (1, 5), generator=torch.Generator().manual_seed(1))
    ref = greedy(model, ids, 16)
    # a hit-rate bar no prefetcher clears: the tuner must lower the expert lookahead, logging why
    with Session(model, SessionSpec(), experts=ExpertConfig(home="cpu", capacity=4, lookahead=3),
                 adapt=AdaptConfig(every=2, min_prefetch_hit_rate=1.01)) as session:
        out = session.generate(ids, max_new_tokens=16)
        stats = session.stats()
    assert torch.equal(out, ref)
    drops = [a for a in stats.extra["adjustments"] if a["knob"] == "expert_lookahead"]
    assert drops and drops[0]["old"] == 3 and drops[0]["new"] == 2 and "prefetched experts were used" in drops[0]["reason"]
    assert stats.extra["experts"]["lookahead"] < 3
