"""Example inputs for a model's forward: token ids for prefill, a filled KV cache for decode, images.

Decode caches are filled directly, layer by layer, with the config's KV shapes (keys and values drawn
from a seeded generator, or empty on meta) rather than by running a prefill: that costs nothing even
for a 70B shape, and the values do not change what a decode step costs. Token ids come from a seeded
generator too, or from a caller-supplied source (the trained byte LMs use held-out text).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from autosurgeon.errors import InvalidArgumentError

TokenSource = Callable[[int, int, torch.Generator], torch.Tensor]  # (batch, length, generator) -> (B, T) int64

PHASES = ("prefill", "decode")


def check_sizes(batch: int, seq_len: int, phase: str) -> None:
    """Validate the user-facing sizes (clear errors, never ``assert``)."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InvalidArgumentError(f"`batch` must be an integer >= 1, got {batch!r}.")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise InvalidArgumentError(f"`seq_len` must be an integer >= 1, got {seq_len!r}.")
    if phase not in PHASES:
        raise InvalidArgumentError(f"`phase` must be one of {PHASES}, got {phase!r}.")


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first floating parameter (CPU/float32 if none)."""
    for param in model.parameters():
        if param.is_floating_point():
            return param.device, param.dtype
    return torch.device("cpu"), torch.float32


def random_tokens(vocab_size: int) -> TokenSource:
    """A token source drawing ids uniformly from ``[0, vocab_size)``."""

    def draw(batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, vocab_size, (batch, length), generator=generator)

    return draw


def _kv_shape(config: Any) -> tuple[int, int, int]:
    """``(num_layers, num_kv_heads, head_dim)`` of a decoder config."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = text.num_hidden_layers
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return int(layers), int(kv_heads), int(head_dim)


def filled_cache(
    model: nn.Module, batch: int, seq_len: int, *, device: torch.device, generator: torch.Generator
) -> Any:
    """A transformers ``DynamicCache`` holding ``seq_len`` positions for every layer of ``model``."""
    from transformers import DynamicCache

    config = model.config
    layers, kv_heads, head_dim = _kv_shape(config)
    _, dtype = model_device_dtype(model)
    cache = DynamicCache(config=config)
    shape = (batch, kv_heads, seq_len, head_dim)  # (B, n_kv, T, hs)
    for layer in range(layers):
        if device.type == "meta":
            key = torch.empty(shape, device=device, dtype=dtype)
            value = torch.empty(shape, device=device, dtype=dtype)
        else:
            key = torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
            value = torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
        cache.update(key, value, layer)
    return cache


def causal_lm_inputs(
    model: nn.Module, batch: int, seq_len: int, *, phase: str, device: torch.device, tokens: TokenSource, seed: int = 0
) -> dict[str, Any]:
    """Prefill: ``{"input_ids": (B, T)}``; decode: one new token per row and a cache of ``seq_len`` positions."""
    generator = torch.Generator().manual_seed(seed)

    def ids(length: int) -> torch.Tensor:
        if device.type == "meta":  # shapes only: don't draw (a token source may read files)
            return torch.empty((batch, length), dtype=torch.long, device=device)
        return tokens(batch, length, generator).to(device)

    if phase == "prefill":
        return {"input_ids": ids(seq_len)}
    new_token = ids(1)
    cache = filled_cache(model, batch, seq_len, device=device, generator=generator)
    return {"input_ids": new_token, cache_argument(model): cache, "use_cache": True}


def cache_argument(model: nn.Module) -> str:
    """The forward's name for the KV cache: ``cache`` (transformers 5.2x renamed it, warning on the old name
    until its removal) or ``past_key_values`` (older transformers and models that keep it)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def image_inputs(
    batch: int, shape: tuple[int, int, int], *, name: str, device: torch.device, dtype: torch.dtype, seed: int = 0
) -> dict[str, Any]:
    """``{name: (B, C, H, W)}`` of uniform [0, 1) pixels from a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((batch, *shape), generator=generator)
    return {name: _place(x.to(dtype), device)}


def _place(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "meta":
        return torch.empty_like(tensor, device="meta")
    return tensor.to(device)
