"""Paged KV cache: HF equivalence, budgets, quantization error, eviction, waste, offload, policies."""
from __future__ import annotations

import inspect

import pytest
import torch

from runtime.errors import BudgetExceededError, JalapenoError
from runtime.kv_pages import RopeRotator
from runtime.kv_quant import KVCodec, fp8_dtype
from runtime.kvcache import KVCacheConfig, make_kv_cache
from runtime.tensors import TensorStore

transformers = pytest.importorskip("transformers")
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM = 4, 2, 16


def _llama(layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=512)
    return LlamaForCausalLM(cfg).eval()


def _mixtral() -> MixtralForCausalLM:
    torch.manual_seed(0)
    cfg = MixtralConfig(vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, num_local_experts=4,
                        num_experts_per_tok=2, max_position_embeddings=512, sliding_window=None)
    return MixtralForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def llama() -> LlamaForCausalLM:
    return _llama()


# transformers renamed `past_key_values` to `cache` during 5.x; use whichever this version's forward takes.
CACHE_KW = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


def _generate(model: torch.nn.Module, ids: torch.Tensor, cache: object, n: int = 24) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=0,
                              attention_mask=torch.ones_like(ids), **{CACHE_KW: cache})


def _token_bytes(precision: str = "float", batch: int = 1) -> int:
    return KVCodec(precision, torch.float32).bytes_per_token(batch, KV_HEADS, HEAD_DIM)


# ------------------------------------------------------------------------------ equivalence with HF
@pytest.mark.parametrize("build", [_llama, _mixtral], ids=["llama", "mixtral"])
@pytest.mark.parametrize("kc", [KVCacheConfig(), KVCacheConfig(page_tokens=3, sinks=2)], ids=["default", "odd-pages"])
def test_greedy_generation_matches_dynamic_cache(build, kc: KVCacheConfig) -> None:
    model = build()
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(1))
    ref = _generate(model, ids, DynamicCache(config=model.config))
    cache = make_kv_cache(kc, model.config, device="cpu", dtype=torch.float32)
    assert torch.equal(_generate(model, ids, cache), ref)
    stats = cache.kv_stats()
    assert stats["tokens_seen"] == stats["tokens_kept"] == 7 + 24 - 1 and stats["evictions"] == 0


def test_beam_search_and_left_padding_match_dynamic_cache(llama) -> None:
    ids = torch.randint(1, 128, (2, 8), generator=torch.Generator().manual_seed(11))
    mask = torch.ones_like(ids)
    ids[0, :3], mask[0, :3] = 0, 0  # left padding (nothing is evicted, so the padding mask lines up)
    for extra in ({"num_beams": 3}, {"attention_mask": mask}):
        outs = []
        for cache in (DynamicCache(config=llama.config),
                      make_kv_cache(KVCacheConfig(page_tokens=4), llama.config, device="cpu", dtype=torch.float32)):
            kwargs = {"attention_mask": torch.ones_like(ids), **extra}
            with torch.no_grad():
                outs.append(llama.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=0,
                                           **kwargs, **{CACHE_KW: cache}))
        assert torch.equal(outs[0], outs[1]), extra


def test_reset_gives_every_byte_back(llama) -> None:
    store = TensorStore()
    cache = make_kv_cache(KVCacheConfig(precision="int8"), llama.config, device="cpu", dtype=torch.float32,
                          store=store)
    with torch.no_grad():
        llama(input_ids=torch.zeros(1, 21, dtype=torch.long), **{CACHE_KW: cache})
    assert store.used("cpu") == cache.kv_stats()["bytes_used"] > 0
    cache.reset()
    assert store.used("cpu") == 0 and cache.get_seq_length() == 0


def test_logits_match_dynamic_cache_exactly_with_chunked_prefill(llama) -> None:
    ids = torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(2))
    ref_cache = DynamicCache(config=llama.config)
    cache = make_kv_cache(KVCacheConfig(page_tokens=5), llama.config, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        for chunk in ids.split(9, dim=1):  # prefill chunks that straddle pages
            a = llama(input_ids=chunk, **{CACHE_KW: ref_cache}).logits
            b = llama(input_ids=chunk, **{CACHE_KW: cache}).logits
            assert torch.equal(a, b)


def test_offloaded_pages_cpu_to_cpu_keep_generation_exact(llama) -> None:
    """Degenerate offload path (host execution): cold pages leave the hot budget, nothing is lost."""
    ids = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(3))
    ref = _generate(llama, ids, DynamicCache(config=llama.config), n=30)
    layers = llama.config.num_hidden_layers
    budget = layers * (4 + 2 * 4) * _token_bytes()  # sinks + 2 pages of 4 per layer
    store = TensorStore()
    cache = make_kv_cache(KVCacheConfig(budget_bytes=budget, page_tokens=4, offload_cold=True), llama.config,
                          device="cpu", dtype=torch.float32, store=store)
    assert torch.equal(_generate(llama, ids, cache, n=30), ref)
    st = cache.kv_stats()
    assert st["offloaded_pages"] > 0 and st["evictions"] == 0 and st["bytes_used"] <= budget
    assert store.used("cpu") == st["bytes_used"] + st["offloaded_bytes"]
    assert store.usage()["cpu"]["used"] > 0 and "kv:layer0:cold" in store._holders["cpu"]


def test_offload_budget_evicts_oldest_cold_pages(llama) -> None:
    layers = llama.config.num_hidden_layers
    tb = _token_bytes()
    cache = make_kv_cache(KVCacheConfig(budget_bytes=layers * (4 + 8) * tb, page_tokens=4, offload_cold=True,
                                        offload_budget_bytes=layers * 8 * tb), llama.config, device="cpu",
                          dtype=torch.float32)
    ids = torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        llama(input_ids=ids, **{CACHE_KW: cache})
    kv = cache.kv_layers[0]
    assert kv.cold_bytes <= 8 * tb and kv.hot_bytes <= 12 * tb
    assert kv.positions() == [0, 1, 2, 3] + list(range(24, 40))  # sinks, 2 cold pages, 2 hot pages
    assert cache.kv_stats()["offloaded_pages"] == 2 * layers


@pytest.mark.gpu
def test_offload_gpu_to_host_keeps_generation_exact() -> None:
    model = _llama().cuda()
    ids = torch.randint(0, 128, (1, 6), generator=torch.Generator().manual_seed(3)).cuda()
    ref = _generate(model, ids, DynamicCache(config=model.config), n=30)
    budget = 2 * (4 + 8) * _token_bytes()
    store = TensorStore()
    cache = make_kv_cache(KVCacheConfig(budget_bytes=budget, page_tokens=4, offload_cold=True), model.config,
                          device="cuda", dtype=torch.float32, store=store)
    assert torch.equal(_generate(model, ids, cache, n=30), ref)
    st = cache.kv_stats()
    assert st["offloaded_pages"] > 0 and store.used("gpu") == st["bytes_used"] <= budget
    assert store.used("cpu") == st["offloaded_bytes"]


# ------------------------------------------------------------------------------ budgets and accounting
@pytest.mark.parametrize("precision", ["float", "int8"])
def test_budget_holds_at_every_step_and_store_agrees(llama, precision: str) -> None:
    layers = llama.config.num_hidden_layers
    budget = layers * (4 + 3 * 8) * _token_bytes(precision) + 7  # sinks + 3 pages of 8, not a page multiple
    store = TensorStore()
    cache = make_kv_cache(KVCacheConfig(precision=precision, budget_bytes=budget, page_tokens=8), llama.config,
                          device="cpu", dtype=torch.float32, store=store)
    ids = torch.randint(0, 128, (1, 90), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        llama(input_ids=ids[:, :20], **{CACHE_KW: cache})
        for t in range(20, 90):
            llama(input_ids=ids[:, t:t + 1], **{CACHE_KW: cache})
            st = cache.kv_stats()
            assert st["bytes_used"] <= budget
            assert store.used("cpu") == st["bytes_used"]
    assert st["evictions"] > 0 and st["tokens_seen"] == 90
    cache.close()
    assert store.used("cpu") == 0


def test_store_budget_refusal_names_the_layer(llama) -> None:
    store = TensorStore(budgets={"cpu": 4 * _token_bytes()})
    cache = make_kv_cache(KVCacheConfig(page_tokens=16), llama.config, device="cpu", dtype=torch.float32,
                          store=store)
    with pytest.raises(BudgetExceededError, match="kv:layer0"), torch.no_grad():
        llama(input_ids=torch.zeros(1, 3, dtype=torch.long), **{CACHE_KW: cache})


def test_budget_too_small_for_sinks_and_a_page(llama) -> None:
    cache = make_kv_cache(KVCacheConfig(budget_bytes=1000, page_tokens=16), llama.config, device="cpu",
                          dtype=torch.float32)
    with pytest.raises(JalapenoError, match="cannot hold its sinks and one page.*budget_bytes"), torch.no_grad():
        llama(input_ids=torch.zeros(1, 3, dtype=torch.long), **{CACHE_KW: cache})


# ------------------------------------------------------------------------------ quantization
def test_int8_round_trip_error_is_bounded_per_token() -> None:
    x = torch.randn(2, 3, 50, 64, generator=torch.Generator().manual_seed(6)) * torch.logspace(-3, 2, 50)[:, None]
    codec = KVCodec("int8", torch.float32)
    q, scale = codec.encode(x)
    assert q.dtype == torch.int8 and scale.shape == (2, 3, 50, 1) and scale.dtype == torch.float16
    err = (codec.decode(q, scale) - x).abs()
    amax = x.abs().amax(-1, keepdim=True)
    # half a step: the step is amax/127 rounded up to float16 (at most 2^-9 relative), floored at 2^-14
    step = torch.clamp(amax / 127, min=2 ** -14) * (1 + 2 ** -9)
    assert (err <= step / 2 + 1e-7).all()
    assert (err / amax).max() > 1e-4  # it is really quantized


@pytest.mark.skipif(fp8_dtype() is None, reason="no float8 dtype in this torch")
def test_fp8_round_trip_error_is_bounded_per_token() -> None:
    x = torch.randn(1, 2, 40, 64, generator=torch.Generator().manual_seed(7))
    codec = KVCodec("fp8", torch.float32)
    q, scale = codec.encode(x)
    assert q.dtype == fp8_dtype()
    err = (codec.decode(q, scale) - x).abs()
    amax = x.abs().amax(-1, keepdim=True)
    # e4m3: 3 mantissa bits -> half-ulp relative error 2^-4 on normals; subnormal step 2^-9 of the scale
    assert (err <= x.abs() * 2 ** -4 * 1.01 + amax / 448 * 2 ** -9 + amax * 2 ** -10).all()


def test_int8_cache_stays_close_to_float(llama) -> None:
    ids = torch.randint(0, 128, (1, 30), generator=torch.Generator().manual_seed(8))
    caches = [make_kv_cache(KVCacheConfig(precision=p), llama.config, device="cpu", dtype=torch.float32)
              for p in ("float", "int8")]
    with torch.no_grad():
        outs = [[llama(input_ids=ids[:, t:t + 1], **{CACHE_KW: c}).logits for t in range(30)] for c in caches]
    a, b = torch.cat(outs[0]), torch.cat(outs[1])
    assert (a - b).abs().max() < 2e-2 * a.abs().max()
    st = [c.kv_stats() for c in caches]
    assert st[0]["bytes_used"] / st[1]["bytes_used"] == pytest.approx(4 * HEAD_DIM / (HEAD_DIM + 2))


# ------------------------------------------------------------------------------ eviction and positions
def test_window_keeps_sinks_and_exact_recent_tokens(llama) -> None:
    cache = make_kv_cache(KVCacheConfig(window=10, sinks=4, page_tokens=4), llama.config, device="cpu",
                          dtype=torch.float32)
    ids = torch.randint(0, 128, (1, 50), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        llama(input_ids=ids[:, :23], **{CACHE_KW: cache})
        for t in range(23, 50):
            llama(input_ids=ids[:, t:t + 1], **{CACHE_KW: cache})
            for kv in cache.kv_layers:
                assert kv.positions() == [0, 1, 2, 3] + list(range(t + 1 - 10, t + 1))
    assert cache.kv_stats()["evictions"] == 50 - 14


def test_budget_eviction_keeps_sinks_and_a_recent_suffix(llama) -> None:
    layers, pages, p = llama.config.num_hidden_layers, 3, 4
    cache = make_kv_cache(KVCacheConfig(budget_bytes=layers * (4 + pages * p) * _token_bytes(), page_tokens=p),
                          llama.config, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        for t in range(40):
            llama(input_ids=torch.tensor([[t % 128]]), **{CACHE_KW: cache})
            pos = cache.kv_layers[0].positions()
            if t >= 4 + pages * p:
                recent = pos[4:]
                assert pos[:4] == [0, 1, 2, 3]
                assert recent == list(range(recent[0], t + 1)) and pages * p - p < len(recent) <= pages * p


def test_truncate_policy_keeps_no_sinks(llama) -> None:
    cache = make_kv_cache(KVCacheConfig(window=6, policy="truncate", page_tokens=4), llama.config, device="cpu",
                          dtype=torch.float32)
    with torch.no_grad():
        llama(input_ids=torch.zeros(1, 20, dtype=torch.long), **{CACHE_KW: cache})
    assert cache.kv_layers[0].positions() == list(range(14, 20))
    kv_length, kv_offset = cache.get_mask_sizes(1, 0)
    assert (kv_length, kv_offset) == (7, 14)


def test_sink_rerotation_equals_rope_at_the_new_position(llama) -> None:
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    rope = LlamaRotaryEmbedding(llama.config)
    k = torch.randn(1, KV_HEADS, 3, HEAD_DIM, generator=torch.Generator().manual_seed(10))

    def at(pos: list[int]) -> torch.Tensor:
        cos, sin = rope(k, torch.tensor([pos]))
        return apply_rotary_pos_emb(k, k, cos, sin)[1]

    moved = RopeRotator(rope.inv_freq).rotate(at([0, 1, 2]), 97)
    torch.testing.assert_close(moved, at([97, 98, 99]), atol=1e-5, rtol=1e-5)


def test_sinks_window_reads_sinks_just_before_the_window(llama) -> None:
    cache = make_kv_cache(KVCacheConfig(window=8, sinks=2, page_tokens=4), llama.config, device="cpu",
                          dtype=torch.float32)
    keep = make_kv_cache(KVCacheConfig(window=8, sinks=2, page_tokens=4, policy="sinks-window-keep-positions"),
                         llama.config, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        for c in (cache, keep):
            llama(input_ids=torch.arange(30).unsqueeze(0), **{CACHE_KW: c})
    (k_moved, _), (k_orig, _) = cache.kv_layers[0].gather(), keep.kv_layers[0].gather()
    torch.testing.assert_close(k_moved[:, :, 2:], k_orig[:, :, 2:], atol=0, rtol=0)  # window untouched
    rot = cache.kv_layers[0].rotator
    torch.testing.assert_close(k_moved[:, :, :2], rot.rotate(k_orig[:, :, :2], 22 - 2))  # first window pos 22


# ------------------------------------------------------------------------------ paging
def test_page_waste_on_a_scripted_sequence(llama) -> None:
    cache = make_kv_cache(KVCacheConfig(sinks=2, page_tokens=4), llama.config, device="cpu", dtype=torch.float32)
    kv = cache.kv_layers[0]
    z = torch.zeros(1, KV_HEADS, 1, HEAD_DIM)
    kv.append(z.expand(-1, -1, 11, -1), z.expand(-1, -1, 11, -1))  # 2 sinks + 9 tokens -> 3 pages (12 slots)
    assert (kv.allocated_slots(), kv.kept, len(kv.pages)) == (14, 11, 3)
    for other in cache.kv_layers[1:]:
        other.append(z.expand(-1, -1, 11, -1), z.expand(-1, -1, 11, -1))
    assert cache.kv_stats()["waste_fraction"] == pytest.approx(3 / 14)
    kv.append(z, z)  # fills the third page
    assert kv.allocated_slots() - kv.kept == 2
    assert kv.hot_bytes == 14 * _token_bytes()


# ------------------------------------------------------------------------------ configuration
def test_policy_registry_error_lists_known_policies() -> None:
    with pytest.raises(JalapenoError, match=r"`policy` 'nope'.*sinks-window.*truncate"):
        KVCacheConfig(policy="nope")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"precision": "int4"}, r"`precision` must be one of float, int8, fp8, got 'int4'"),
    ({"budget_bytes": 0}, r"`budget_bytes` must be > 0"),
    ({"window": 0}, r"`window` must be an int >= 1"),
    ({"sinks": -1}, r"`sinks` must be an int >= 0"),
    ({"page_tokens": 0}, r"`page_tokens` must be an int >= 1"),
    ({"tier": "disk"}, r"`tier` must be 'gpu', 'cpu' or None"),
])
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(JalapenoError, match=match):
        KVCacheConfig(**kwargs)


def test_config_parses_byte_strings_and_rejects_gpu_tier_on_cpu(llama) -> None:
    assert KVCacheConfig(budget_bytes="1KiB").budget_bytes == 1024
    with pytest.raises(JalapenoError, match="`tier` 'gpu' needs a CUDA execution device"):
        make_kv_cache(KVCacheConfig(tier="gpu"), llama.config, device="cpu", dtype=torch.float32)


def test_sliding_window_models_are_refused() -> None:
    cfg = MixtralConfig(vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2, sliding_window=32)
    with pytest.raises(JalapenoError, match="full-attention layers only.*sliding_window=32"):
        make_kv_cache(KVCacheConfig(), cfg, device="cpu", dtype=torch.float32)


def test_budget_tail_smaller_than_a_page_is_used_by_a_short_page(llama) -> None:
    layers, tb = llama.config.num_hidden_layers, _token_bytes()
    budget = layers * (4 + 2 * 4 + 3) * tb  # sinks + 2 pages of 4 + a 3-token tail, per layer
    cache = make_kv_cache(KVCacheConfig(budget_bytes=budget, page_tokens=4), llama.config, device="cpu",
                          dtype=torch.float32)
    with torch.no_grad():
        llama(input_ids=torch.zeros(1, 15, dtype=torch.long), **{CACHE_KW: cache})
        kv = cache.kv_layers[0]
        assert [p.capacity for p in kv.pages] == [4, 4, 3] and cache.kv_stats()["bytes_used"] == budget
        for t in range(15, 40):  # steady state: never more than the budget, never a page's worth idle
            llama(input_ids=torch.zeros(1, 1, dtype=torch.long), **{CACHE_KW: cache})
            st = cache.kv_stats()
            assert st["bytes_used"] <= budget and budget - st["bytes_used"] < layers * 4 * tb
            assert kv.positions()[:4] == [0, 1, 2, 3] and kv.positions()[-1] == t
