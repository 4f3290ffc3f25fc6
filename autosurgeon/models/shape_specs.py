"""The large architectures by shape, as plain data (no torch): ``shapes`` builds them, ``listing`` counts them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
    # 4 of Llama-7B's layers (1.07B parameters, 4.3 GB in float32): a shape a small machine can hold in RAM, to run
    # with its blocks streamed from the disk tier (`run llama-7b-4l-shape --device cpu --memory-budget cpu=1.5GiB`).
    "llama-7b-4l-shape": ShapeSpec("llama", 4096, 4, 32, 32, 11008),
    "llama-70b-shape": ShapeSpec("llama", 8192, 80, 64, 8, 28672),
    "mixtral-8x7b-shape": ShapeSpec("mixtral", 4096, 32, 32, 8, 14336, num_experts=8, experts_per_token=2,
                                    max_position_embeddings=32768),
}
