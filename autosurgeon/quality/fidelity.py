"""Fidelity to the unmodified model, in the model's own vocabulary: the default quality of any causal LM.

A model that is not from the zoo has no data set of ours that it understands (the zoo's byte corpus fed as ids
to a BPE model is noise to it). So the default compares the candidate with the unmodified model on inputs the
model itself lives on:

* text encoded with the model's own tokenizer when its directory has one (``tokenizer.json`` ...): held-out
  windows of the local byte corpus's held-out split, tokenized;
* else token sequences SAMPLED from the unmodified model (seeded, temperature 1, starting from seeded random
  first tokens): what the model would produce, so every position is in-distribution for it.

Per position: KL(reference || candidate) of the next-token distributions (nats) and whether the two argmaxes
agree. The loss is ``expm1(mean KL)``: on sequences sampled from the reference this is exactly the expected
relative perplexity increase, and it is the same unit as the sensitivity proxy (``expm1`` of summed KL), so
the bound means one thing for both. Uncertainty: a 95 % bootstrap interval over sequences (positions within a
sequence are correlated, so resampling them would understate it).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autosurgeon.errors import InvalidArgumentError
from autosurgeon.models.inputs import model_device_dtype
from autosurgeon.models.text_corpus import build_corpus, decode

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
BOOTSTRAP = 400


def has_tokenizer(path: Path | None) -> bool:
    """Whether a model directory holds tokenizer files transformers can load."""
    return path is not None and any((Path(path) / f).is_file() for f in TOKENIZER_FILES)


def load_tokenizer(path: Path) -> Any:
    """The directory's tokenizer (local files only)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def vocab_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    text = config.get_text_config() if config is not None and hasattr(config, "get_text_config") else config
    size = getattr(text, "vocab_size", None)
    if size is None:
        raise InvalidArgumentError(f"{type(model).__name__} has no `config.vocab_size`; pass `data` as token ids.")
    return int(size)


def tokenized_heldout(tokenizer: Any, *, n_samples: int, seq_len: int, heldout_bytes: int = 131_072,
                      seed: int = 0) -> torch.Tensor:
    """``(n_samples, seq_len)`` consecutive windows of the held-out corpus encoded with ``tokenizer``."""

    corpus = build_corpus(train_bytes=0, heldout_bytes=heldout_bytes, seed=seed)
    ids = torch.tensor(tokenizer(decode(corpus.heldout))["input_ids"], dtype=torch.long)
    n = min(n_samples, ids.numel() // seq_len)
    if n < 1:
        raise InvalidArgumentError(f"the held-out text gives {ids.numel()} tokens, fewer than `seq_len`={seq_len}.")
    return ids[: n * seq_len].view(n, seq_len)


@torch.no_grad()
def sampled_sequences(model: nn.Module, *, n_samples: int, seq_len: int, seed: int = 0,
                      batch_size: int = 8) -> torch.Tensor:
    """``(n_samples, seq_len)`` ids sampled from ``model`` (temperature 1), seeded, with a KV cache."""

    device, _ = model_device_dtype(model)
    vocab = vocab_size(model)
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    chunks = []
    for start in range(0, n_samples, batch_size):
        b = min(batch_size, n_samples - start)
        ids = torch.randint(0, vocab, (b, 1), generator=generator)
        past = None
        for _ in range(seq_len - 1):
            out = model(input_ids=ids[:, -1:].to(device), past_key_values=past, use_cache=True)
            past = out.past_key_values
            probs = torch.softmax(out.logits[:, -1].float().cpu(), dim=-1)  # (B, V)
            ids = torch.cat([ids, torch.multinomial(probs, 1, generator=generator)], dim=1)
        chunks.append(ids)
    return torch.cat(chunks)


@torch.no_grad()
def log_probs(model: nn.Module, ids: torch.Tensor, *, batch_size: int = 8) -> torch.Tensor:
    """``(N, T, V)`` next-token log-probabilities, float32 on the CPU."""

    device, _ = model_device_dtype(model)
    model.eval()
    out = []
    for start in range(0, ids.shape[0], batch_size):
        logits = model(input_ids=ids[start : start + batch_size].to(device)).logits
        out.append(torch.log_softmax(logits.float(), dim=-1).cpu())
    return torch.cat(out)


def bootstrap_ci(per_sample: np.ndarray, *, seed: int = 0, n: int = BOOTSTRAP) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the mean of ``per_sample`` (one value per independent sample)."""
    values = np.asarray(per_sample, dtype=float)
    if values.size < 2:
        return float(values.mean()), float(values.mean())
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (n, values.size))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def compare(reference: torch.Tensor, candidate: torch.Tensor) -> dict[str, Any]:
    """KL and top-1 agreement of ``(N, T, V)`` log-probabilities, with per-sequence bootstrap intervals."""
    kl = (reference.exp() * (reference - candidate)).sum(-1).clamp_min(0.0)  # (N, T)
    agree = (reference.argmax(-1) == candidate.argmax(-1)).double()  # (N, T)
    kl_seq, agree_seq = kl.double().mean(1).numpy(), agree.mean(1).numpy()
    return {"kl": float(kl_seq.mean()), "kl_ci": bootstrap_ci(kl_seq),
            "top1_agreement": float(agree_seq.mean()), "top1_agreement_ci": bootstrap_ci(agree_seq, seed=1),
            "positions": int(kl.numel()), "sequences": int(kl.shape[0])}
