"""The zoo's table: each name, its task, a one-line description, and the recipe that trains it.

Trained entries carry a recipe (``LMRecipe`` or ``DigitsRecipe``); shapes carry none and are built from
``shapes.SHAPES``. A recipe's fingerprint names its cache folder, so editing a recipe here retrains
rather than serving a stale model.
"""
from __future__ import annotations

from dataclasses import dataclass

from autosurgeon.models.recipes import DigitsRecipe, LMRecipe


@dataclass(frozen=True)
class ZooRecipe:
    """One zoo name: what it is, and how to train it (``recipe`` is None for architecture shapes)."""

    name: str
    task: str
    description: str
    recipe: LMRecipe | DigitsRecipe | None  # None for shapes


# bf16 autocast: 85 s of training measured on an idle 2-core AVX-512 machine, against ~170 s in float32
# there (0.56 s/step over 4 timed steps, x 300; whole runs took 486-636 s under CI-like load), for held-out
# perplexity 5.66 instead of 5.58 - what lets
# `autosurgeon demo` train it and still finish in a few minutes on a fresh machine.
_TINY_LLAMA = LMRecipe(arch="llama", hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2,
                       intermediate_size=688, seq_len=256, batch_size=16, steps=300, lr=2e-3, warmup_steps=30,
                       autocast="bfloat16")
# One thread for the MoE: its expert matmuls are small, so each is a short parallel region, and on a
# shared 2-core machine two threads spent ~5x the CPU time per step waiting at those barriers (measured
# with other jobs running: ~6 s CPU per step with two threads against ~1.1 s with one). 200 steps keep
# the one-thread CPU time near 220 s.
_TINY_MOE = LMRecipe(arch="mixtral", hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2,
                     intermediate_size=256, num_experts=8, experts_per_token=2, seq_len=256, batch_size=16,
                     steps=200, lr=2e-3, warmup_steps=20, threads=1)
# Fast recipes for tests and CI: seconds to train, still clearly better than a unigram model. One thread:
# their matrices are too small to gain from two, and a shared CI machine punishes oversubscription.
_TINY_LLAMA_TEST = LMRecipe(arch="llama", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                            intermediate_size=172, seq_len=128, batch_size=16, steps=150, lr=5e-3, warmup_steps=10,
                            train_bytes=1_000_000, heldout_bytes=32_768, threads=1)
_TINY_MOE_TEST = LMRecipe(arch="mixtral", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                          intermediate_size=64, num_experts=4, experts_per_token=2, seq_len=128, batch_size=16,
                          steps=150, lr=5e-3, warmup_steps=10, train_bytes=1_000_000, heldout_bytes=32_768,
                          threads=1)

ZOO: dict[str, ZooRecipe] = {
    entry.name: entry
    for entry in (
        ZooRecipe("tiny-llama", "causal-lm", "Llama (4 layers, hidden 256, GQA 4q/2kv), byte-level, trained on "
                "Python stdlib sources", _TINY_LLAMA),
        ZooRecipe("tiny-moe", "causal-lm", "Mixtral (4 layers, hidden 256, 8 experts top-2), byte-level, trained "
                "on Python stdlib sources", _TINY_MOE),
        ZooRecipe("digits-cnn", "image-classification", "residual CNN on scikit-learn's 8x8 digits",
                DigitsRecipe()),
        ZooRecipe("tiny-llama-test", "causal-lm", "fast tiny-llama recipe for tests (2 layers, hidden 64)",
                _TINY_LLAMA_TEST),
        ZooRecipe("tiny-moe-test", "causal-lm", "fast tiny-moe recipe for tests (2 layers, hidden 64, 4 experts)",
                _TINY_MOE_TEST),
        ZooRecipe("llama-7b-shape", "causal-lm", "Llama-2-7B architecture, random weights", None),
        ZooRecipe("llama-7b-16l-shape", "causal-lm", "Llama-2-7B with 16 layers (streaming benchmark), random "
                "weights", None),
        ZooRecipe("llama-7b-4l-shape", "causal-lm", "Llama-2-7B with 4 layers (fits a small machine's RAM; disk-tier "
                "streaming), random weights", None),
        ZooRecipe("llama-70b-shape", "causal-lm", "Llama-2-70B architecture (GQA 64q/8kv), random weights", None),
        ZooRecipe("mixtral-8x7b-shape", "causal-lm", "Mixtral-8x7B architecture (8 experts top-2), random weights",
                None),
    )
}
