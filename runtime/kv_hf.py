"""The Hugging Face face of the paged KV cache: a ``transformers`` Cache whose layers are :class:`LayerKV`.

Kept apart from :mod:`runtime.kvcache` because it imports ``transformers`` (the Cache API it implements);
``make_kv_cache`` imports this module only when a cache is made.
"""
from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from runtime._log import get_logger
from runtime.errors import JalapenoError
from runtime.kv_pages import LayerKV, RopeRotator
from runtime.kv_policies import get_policy
from runtime.kv_quant import KVCodec
from runtime.tensors import TensorStore

logger = get_logger(__name__)


class PagedKVLayer(CacheLayerMixin):
    """One layer: ``update`` returns the kept past (decoded) followed by the new states as given."""

    is_compileable = False
    is_croppable = False
    is_sliding = False

    def __init__(self, kv: LayerKV) -> None:
        super().__init__()
        self.kv = kv

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.dtype = key_states.dtype
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        past = self.kv.gather()  # before storing: eviction below must not change what this step attends to
        self.kv.append(key_states, value_states)
        if past is None:
            return key_states, value_states
        return torch.cat([past[0], key_states], dim=-2), torch.cat([past[1], value_states], dim=-2)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        kept = self.kv.kept
        return kept + query_length, self.kv.seen - kept

    def get_seq_length(self) -> int:
        return self.kv.seen

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.kv.clear()
        self.is_initialized = False

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.kv.reorder(beam_idx)

    def crop(self, tokens_to_remove: int) -> None:

        raise JalapenoError("PagedKVCache cannot be cropped (assisted decoding); use DynamicCache for that.")

    def offload(self) -> None:  # whole-layer offload is Cache(offloading=True)'s scheme; ours is per page
        return None

    def prefetch(self) -> None:
        return None


class PagedKVCache(Cache):
    """A paged, budgeted, optionally quantized KV cache; build it with :func:`runtime.kvcache.make_kv_cache`."""

    def __init__(self, config: Any, *, num_layers: int, device: torch.device, dtype: torch.dtype, tier: str,
                 store: TensorStore | None, inv_freq: torch.Tensor | None) -> None:
        self.config = config
        policy = get_policy(config.policy)
        if policy.repositions_sinks and inv_freq is None:
            logger.info("KV policy %r: this model's RoPE cannot be re-rotated exactly; sinks keep their "
                        "original positions", config.policy)
        rotator = RopeRotator(inv_freq) if inv_freq is not None else None
        share = None if config.budget_bytes is None else config.budget_bytes // num_layers
        cold = None if config.offload_budget_bytes is None else config.offload_budget_bytes // num_layers
        codec = KVCodec(config.precision, dtype)
        layers = [
            PagedKVLayer(LayerKV(i, codec=codec, policy=get_policy(config.policy), sinks=config.sinks,
                                 window=config.window, page_tokens=config.page_tokens, budget_bytes=share,
                                 cold_budget_bytes=cold, device=device, tier=tier, offload=config.offload_cold,
                                 store=store, rotator=rotator))
            for i in range(num_layers)
        ]
        super().__init__(layers=layers)

    @property
    def kv_layers(self) -> list[LayerKV]:
        return [layer.kv for layer in self.layers]

    def kv_stats(self) -> dict[str, Any]:
        """Bytes (hot tier, all layers), pages (hot + offloaded), tokens evicted and kept *per layer* (every
        layer keeps the same tokens), tokens seen, and the fraction of allocated KV bytes holding no token."""
        kvs = self.kv_layers
        hot = sum(kv.hot_bytes for kv in kvs)
        cold = sum(kv.cold_bytes for kv in kvs)
        slots = sum(kv.allocated_slots() for kv in kvs)
        live = sum(kv.kept for kv in kvs)
        return {
            "bytes_used": hot,
            "bytes_budget": self.config.budget_bytes,
            "pages": sum(len(kv.pages) for kv in kvs),
            "evictions": max((kv.evicted for kv in kvs), default=0),
            "tokens_kept": max((kv.kept for kv in kvs), default=0),
            "tokens_seen": max((kv.seen for kv in kvs), default=0),
            "waste_fraction": (slots - live) / slots if slots else 0.0,
            "offloaded_pages": sum(sum(p.cold for p in kv.pages) for kv in kvs),
            "offloaded_bytes": cold,
        }

    def close(self) -> None:
        """Give every byte back to the store (the cache is empty afterwards)."""
        for kv in self.kv_layers:
            kv.clear()


__all__ = ["PagedKVCache", "PagedKVLayer"]
