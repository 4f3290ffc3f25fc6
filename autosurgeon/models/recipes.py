"""The recipes of the trained zoo models: plain frozen dataclasses, importable without torch.

Everything that changes a trained model is a field here, and a recipe's ``fingerprint()`` names its cache
folder and is recorded with its shipped weights. Training lives in ``train_lm`` and ``digits``; listing the
zoo (``autosurgeon zoo``) reads only this module, so it stays fast.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from autosurgeon.errors import InvalidArgumentError

VOCAB_SIZE = 256  # byte-level: one token per byte (text_corpus.VOCAB_SIZE is this constant)

ARCHES = ("llama", "mixtral")
AUTOCAST_DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class LMRecipe:
    """Architecture, data and schedule of one trained byte-level LM.

    Attributes:
        arch: ``"llama"`` (dense) or ``"mixtral"`` (sparse mixture of experts).
        num_experts / experts_per_token: Mixtral only.
        seq_len, batch_size, steps: each step trains on ``batch_size`` random windows of ``seq_len + 1`` bytes.
        lr, warmup_steps, min_lr_ratio: AdamW with linear warm-up then cosine decay to ``lr * min_lr_ratio``.
        router_aux_coef: weight of Mixtral's load-balancing loss.
        train_bytes, heldout_bytes: corpus budgets (see ``text_corpus.build_corpus``).
        threads: torch CPU threads while training (restored afterwards).
        autocast: dtype of the forward/backward arithmetic: ``"float32"``, or ``"bfloat16"`` (CPU autocast;
            weights, gradients and AdamW state stay float32). bf16 halves the step time on CPUs with
            AVX-512 BF16 / AMX, which is what brings tiny-llama's training under the demo's time budget.
    """

    arch: str = "llama"
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 688
    num_experts: int = 0
    experts_per_token: int = 0
    max_position_embeddings: int = 1024
    seq_len: int = 256
    batch_size: int = 16
    steps: int = 300
    lr: float = 2e-3
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    router_aux_coef: float = 0.01
    train_bytes: int = 4_000_000
    heldout_bytes: int = 131_072
    seed: int = 0
    threads: int = 2
    autocast: str = "float32"

    def __post_init__(self) -> None:
        if self.arch not in ARCHES:
            raise InvalidArgumentError(f"`arch` must be one of {ARCHES}, got {self.arch!r}.")
        for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "seq_len",
                     "batch_size", "steps", "train_bytes", "heldout_bytes", "threads"):
            if getattr(self, name) < 1:
                raise InvalidArgumentError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise InvalidArgumentError(
                f"`hidden_size` ({self.hidden_size}) must divide by `num_heads` ({self.num_heads}), which must "
                f"divide by `num_kv_heads` ({self.num_kv_heads})."
            )
        if self.arch == "mixtral" and not 1 <= self.experts_per_token <= self.num_experts:
            raise InvalidArgumentError(
                f"mixtral needs 1 <= `experts_per_token` <= `num_experts`, got {self.experts_per_token} and "
                f"{self.num_experts}."
            )
        if self.autocast not in AUTOCAST_DTYPES:
            raise InvalidArgumentError(
                f"`autocast` must be one of {', '.join(AUTOCAST_DTYPES)}, got {self.autocast!r}.")
        if self.seq_len > self.max_position_embeddings:
            raise InvalidArgumentError(
                f"`seq_len` ({self.seq_len}) must be <= `max_position_embeddings` ({self.max_position_embeddings})."
            )

    def fingerprint(self) -> str:
        """Short hash of the recipe: a changed recipe gets its own cache folder, never a stale model."""
        fields = dataclasses.asdict(self)
        if fields["autocast"] == "float32":  # recipes from before the field existed keep their cache folder
            del fields["autocast"]
        blob = json.dumps(fields, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def hf_config(self) -> Any:
        """The Hugging Face config of this architecture (byte vocabulary, no special tokens in use)."""
        common = dict(
            vocab_size=VOCAB_SIZE,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=False,
            # Bytes 1 and 2 (transformers' default BOS/EOS) never occur in source text; say so plainly.
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=0,
        )
        if self.arch == "llama":
            from transformers import LlamaConfig

            return LlamaConfig(**common)
        from transformers import MixtralConfig

        return MixtralConfig(
            **common, num_local_experts=self.num_experts, num_experts_per_tok=self.experts_per_token,
            router_aux_loss_coef=self.router_aux_coef, output_router_logits=False,
        )

    def build_model(self) -> Any:
        """A freshly initialised float32 model, seeded by ``seed``."""
        import torch
        from transformers import AutoModelForCausalLM

        torch.manual_seed(self.seed)
        return AutoModelForCausalLM.from_config(self.hf_config(), dtype=torch.float32)



@dataclass(frozen=True)
class DigitsRecipe:
    """Data split and schedule of the digits CNN (all randomness from ``seed``)."""

    width: int = 32
    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    test_fraction: float = 0.2
    seed: int = 0
    # One thread: 8x8 convolutions are tiny parallel regions; on a shared 2-core machine two threads took
    # 2.5x the wall time of one (5 epochs: 14.7 s against 6.0 s, measured with other jobs running).
    threads: int = 1

    def __post_init__(self) -> None:
        for name in ("width", "epochs", "batch_size", "threads"):
            if getattr(self, name) < 1:
                raise InvalidArgumentError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        if not 0.0 < self.test_fraction < 1.0:
            raise InvalidArgumentError(f"`test_fraction` must be in (0, 1), got {self.test_fraction}.")

    def fingerprint(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]
