"""Large architectures by shape only: Llama-2-7B, a 16-layer 7B (the streaming benchmark), Llama-2-70B, Mixtral-8x7B.

They have random weights (or none, on ``device="meta"``), so they serve analysis, cost models and
latency/memory benchmarks, never quality. On a real device they allocate every byte: ``build_shape``
refuses up front when that does not fit, naming the size and suggesting ``device="meta"``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autosurgeon.errors import InvalidArgumentError


@dataclass(frozen=True)
class ShapeSpec:
    """The architecture of one shape model (Hugging Face config fields)."""

    arch: str  # "llama" | "mixtral"
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int = 32000
    num_experts: int = 0
    experts_per_token: int = 0
    max_position_embeddings: int = 4096

    def hf_config(self) -> Any:
        common = dict(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads, num_key_value_heads=self.num_kv_heads,
            intermediate_size=self.intermediate_size, max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=False,
        )
        if self.arch == "llama":
            from transformers import LlamaConfig

            return LlamaConfig(**common)
        from transformers import MixtralConfig

        return MixtralConfig(**common, num_local_experts=self.num_experts, num_experts_per_tok=self.experts_per_token)


SHAPES: dict[str, ShapeSpec] = {
    "llama-7b-shape": ShapeSpec("llama", 4096, 32, 32, 32, 11008),
    "llama-7b-16l-shape": ShapeSpec("llama", 4096, 16, 32, 32, 11008),
    "llama-70b-shape": ShapeSpec("llama", 8192, 80, 64, 8, 28672),
    "mixtral-8x7b-shape": ShapeSpec("mixtral", 4096, 32, 32, 8, 14336, num_experts=8, experts_per_token=2,
                                    max_position_embeddings=32768),
}


def _free_bytes(device: torch.device) -> int | None:
    """Bytes free for new tensors on ``device`` (None when unknown: the build then just tries)."""
    if device.type == "cpu":
        import psutil

        return int(psutil.virtual_memory().available)
    if device.type == "cuda":  # asked only when the caller chose a CUDA device
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return None


def meta_build_kwargs(config: Any) -> dict[str, Any]:
    """Extra ``from_config`` arguments so a meta-device model can run forward (for shape analysis).

    Mixture-of-experts layers default to ``grouped_mm``, whose meta kernel accepts only bfloat16, or to
    ``eager``, which routes with data-dependent ``nonzero``; ``batched_mm`` runs on meta in any dtype.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text, "num_local_experts", 0) or getattr(text, "num_experts", 0):
        return {"experts_implementation": "batched_mm"}
    return {}


def build_config_model(
    config: Any, *, device: str | torch.device, dtype: torch.dtype | None, name: str, seed: int = 0
) -> nn.Module:
    """Build a causal LM from a Hugging Face config on ``device`` (random weights from ``seed``; none on meta).

    On a real device every weight is allocated and initialised: the 16-layer 7B shape is 14 GB in float32,
    the 70B shape 276 GB.

    Raises:
        InvalidArgumentError: the weights would not fit in the device's free memory.
    """
    from transformers import AutoModelForCausalLM

    device = torch.device(device)
    dtype = dtype or torch.float32
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, dtype=dtype, **meta_build_kwargs(config))
    if device.type == "meta":
        return skeleton.eval()
    need = sum(p.numel() * p.element_size() for p in skeleton.parameters())
    free = _free_bytes(device)
    if free is not None and need > free:
        raise InvalidArgumentError(
            f"{name} on device={str(device)!r} in {dtype} needs {need / 2**30:.1f} GiB of weights but only "
            f"{free / 2**30:.1f} GiB is free; use device=\"meta\" to analyse it without weights, or a smaller dtype."
        )
    del skeleton
    # Seeded, without disturbing the caller's CPU generator: the same shape gets the same random weights.
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def build_shape(name: str, *, device: str | torch.device = "meta", dtype: torch.dtype | None = None) -> nn.Module:
    """Build the shape model ``name`` (a key of ``SHAPES``); see ``build_config_model``."""
    return build_config_model(SHAPES[name].hf_config(), device=device, dtype=dtype, name=name)
