"""Adaptive KV cache: paged, budgeted, int8/fp8-compressed, with StreamingLLM eviction, for HF ``generate()``.

Contract (what Session and ``autosurgeon run --kv-precision/--kv-budget/--kv-window`` build on; keep it)::

    KVCacheConfig(precision="float"|"int8"|"fp8", budget_bytes=None, tier=None (= the execution tier),
                  window=None, sinks=4, page_tokens=16, offload_cold=False, policy="sinks-window",
                  offload_budget_bytes=None)                      # frozen, validated (JalapenoError)
    make_kv_cache(config, model_config, *, device, dtype, store=None) -> PagedKVCache (a transformers Cache)
    cache.kv_stats() -> dict(bytes_used, bytes_budget, pages, evictions, tokens_kept, tokens_seen,
                             waste_fraction, offloaded_pages, offloaded_bytes)

Pass the cache to ``model.generate(..., past_key_values=cache)`` (or ``model(..., past_key_values=cache)``);
Llama- and Mixtral-family models (full attention, RoPE) are supported.

What it does and why:

- **Pages.** Every layer stores its tokens in pages of ``page_tokens`` (the first ``sinks`` tokens, when the
  policy pins them, in a sink block of exactly that size), allocated as the sequence grows: a sequence wastes
  at most one partly filled page per layer, not a ``max_length`` reservation.
- **Budget.** ``budget_bytes`` caps the stored KV bytes on the hot tier (``tier``), split evenly across the
  layers (every layer holds the same tokens, so an even split wastes nothing and no early layer can starve
  a later one). ``bytes_used <= budget_bytes`` at every moment. The budget covers *stored* KV only: the
  decoded keys/values handed to attention for one layer at a time are transient activations, as in any
  quantized or offloaded cache.
- **Precision.** ``"int8"``/``"fp8"`` store one float16 scale per (row, head, token); attention gets the
  states decoded to the model dtype. The token being processed attends to its own exact (unquantized) states.
- **Eviction.** When a page must be allocated and the budget is full, the oldest page goes (the policy picks;
  see :mod:`runtime.kv_policies`); ``window`` also caps the recent tokens kept (trimmed token by token).
  ``"sinks-window"`` is StreamingLLM: the sinks are never evicted.
- **Positions after eviction.** Hugging Face Llama caches keys *after* RoPE, and it derives the next query's
  position from ``get_seq_length()``, which here is the number of tokens *seen*, so queries and the window keys
  keep their original positions (RoPE scores depend only on position differences, so the window is exactly
  what it was). StreamingLLM instead numbers positions within the cache; the only place that differs is the
  sinks, whose distance to the query would otherwise grow without bound (past anything seen in training).
  ``"sinks-window"`` therefore re-rotates the sinks' keys at read time by ``first_window_position - sinks``,
  so they sit right before the window, exactly StreamingLLM's relative geometry; the stored keys are untouched
  (no error accumulates). ``"sinks-window-keep-positions"`` skips that (the ablation). RoPE variants whose
  frequencies change with length (dynamic NTK) cannot be re-rotated exactly and keep original positions.
  The attention mask is told the kept keys are the ``kept`` positions just before the query (``get_mask_sizes``
  returns ``(kept + q, seen - kept)``): right for causality; a left-padded batch with eviction is not supported
  (its padding mask would be read at the wrong positions, and its sinks would be pad tokens).
- **Offload.** With ``offload_cold`` a page pushed out of the hot budget moves to (page-locked) host memory
  instead of being evicted, and is copied back for attention each step; cold pages are limited by
  ``offload_budget_bytes`` and by the store's ``cpu`` budget, past which the oldest cold page is evicted.
- **Accounting.** With a ``store`` every page is charged (``kv:layer<i>``; offloaded ``kv:layer<i>:cold``) on its
  tier, so a budget the store enforces also bounds the KV cache, and BudgetExceededError names the layer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from runtime.errors import JalapenoError
from runtime.kv_hf import PagedKVCache
from runtime.kv_policies import get_policy, known_policies
from runtime.kv_quant import PRECISIONS, fp8_dtype
from runtime.sizes import parse_bytes
from runtime.tensors import TensorStore, tier_of

if TYPE_CHECKING:
    from runtime.kv_hf import PagedKVCache


@dataclass(frozen=True)
class KVCacheConfig:
    """How the KV cache stores, bounds and evicts.

    Attributes:
        precision: ``"float"`` (model dtype, lossless), ``"int8"`` or ``"fp8"`` (e4m3), per head/token scales.
        budget_bytes: stored-KV byte budget on the hot tier for all layers (int or ``"64MiB"``); None: unbounded.
        tier: hot tier, ``"gpu"`` or ``"cpu"``; None: the execution device's tier.
        window: most recent tokens kept (besides sinks); None: as many as the budget holds.
        sinks: leading tokens never evicted by sink-keeping policies (StreamingLLM uses 4).
        page_tokens: tokens per page.
        offload_cold: move pages pushed out of the hot budget to host memory instead of evicting them.
        policy: eviction policy name (``runtime.kv_policies``: "sinks-window", "sinks-window-keep-positions",
            "truncate").
        offload_budget_bytes: cap on offloaded (cold) bytes for all layers; None: the store's cpu budget only.
    """

    precision: str = "float"
    budget_bytes: int | str | None = None
    tier: str | None = None
    window: int | None = None
    sinks: int = 4
    page_tokens: int = 16
    offload_cold: bool = False
    policy: str = "sinks-window"
    offload_budget_bytes: int | str | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise JalapenoError(f"`precision` must be one of {', '.join(PRECISIONS)}, got {self.precision!r}.")
        if self.precision == "fp8" and fp8_dtype() is None:
            raise JalapenoError("`precision` 'fp8' needs torch.float8_e4m3fn, which this torch lacks; use 'int8'.")
        for name in ("budget_bytes", "offload_budget_bytes"):
            value = getattr(self, name)
            if value is not None:
                parsed = parse_bytes(value, what=f"`{name}`")
                if parsed <= 0:
                    raise JalapenoError(f"`{name}` must be > 0 bytes (or None for unbounded), got {value!r}.")
                object.__setattr__(self, name, parsed)
        if self.tier is not None and self.tier not in ("gpu", "cpu"):
            raise JalapenoError(f"`tier` must be 'gpu', 'cpu' or None (the execution tier), got {self.tier!r}.")
        if self.window is not None and (not isinstance(self.window, int) or self.window < 1):
            raise JalapenoError(f"`window` must be an int >= 1 (or None: as the budget allows), got {self.window!r}.")
        if not isinstance(self.sinks, int) or self.sinks < 0:
            raise JalapenoError(f"`sinks` must be an int >= 0, got {self.sinks!r}.")
        if not isinstance(self.page_tokens, int) or self.page_tokens < 1:
            raise JalapenoError(f"`page_tokens` must be an int >= 1, got {self.page_tokens!r}.")
        if self.policy not in known_policies():
            get_policy(self.policy)  # raises, listing the known policies


def _text_config(model_config: Any) -> Any:
    getter = getattr(model_config, "get_text_config", None)
    return getter(decoder=True) if callable(getter) else model_config


def _rope_inv_freq(cfg: Any) -> torch.Tensor | None:
    """RoPE inverse frequencies of ``cfg`` when they are static (re-rotation is exact), else None."""
    params = getattr(cfg, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    theta = params.get("rope_theta", getattr(cfg, "rope_theta", None))
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if getattr(cfg, "partial_rotary_factor", 1.0) not in (None, 1.0):
        return None
    if rope_type == "default":
        if theta is None:
            return None
        return 1.0 / (float(theta) ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
    if rope_type in ("dynamic", "longrope"):
        return None
    try:
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
        inv_freq, _ = ROPE_INIT_FUNCTIONS[rope_type](cfg, "cpu")
    except Exception:  # noqa: BLE001 - any failure means: keep original positions (logged by the caller)
        return None
    return inv_freq


def make_kv_cache(config: KVCacheConfig, model_config: Any, *, device: str | torch.device,
                  dtype: torch.dtype, store: TensorStore | None = None) -> PagedKVCache:
    """A :class:`~runtime.kv_hf.PagedKVCache` for a model with ``model_config`` running on ``device`` in ``dtype``.

    Raises:
        JalapenoError: the model has non-full-attention layers (sliding window, linear attention), or the
            config asks for something this device cannot do.
    """

    if not isinstance(config, KVCacheConfig):
        raise JalapenoError(f"`config` must be a KVCacheConfig, got {type(config).__name__}.")
    cfg = _text_config(model_config)
    device = torch.device(device)
    exec_tier = tier_of(device)
    tier = config.tier or exec_tier
    if tier == "gpu" and exec_tier != "gpu":
        raise JalapenoError(f"`tier` 'gpu' needs a CUDA execution device, got {str(device)!r}; use tier='cpu'.")
    types = getattr(cfg, "layer_types", None)
    if getattr(cfg, "sliding_window", None) is not None or (types and any(t != "full_attention" for t in types)):
        raise JalapenoError(
            f"the KV cache supports full-attention layers only; this {getattr(cfg, 'model_type', 'model')} config has "
            f"sliding_window={getattr(cfg, 'sliding_window', None)!r}, layer_types={types!r}. Use Hugging Face's "
            f"DynamicCache for it.")
    return PagedKVCache(config, num_layers=int(cfg.num_hidden_layers), device=device, dtype=dtype, tier=tier,
                        store=store, inv_freq=_rope_inv_freq(cfg))


def __getattr__(name: str) -> Any:  # PagedKVCache without importing transformers at `import runtime.kvcache`
    if name == "PagedKVCache":
        return PagedKVCache
    raise AttributeError(name)


__all__ = ["KVCacheConfig", "PagedKVCache", "make_kv_cache"]
