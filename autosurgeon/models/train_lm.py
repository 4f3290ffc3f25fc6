"""Train a small byte-level causal LM (Llama or Mixtral architecture) on the stdlib corpus, reproducibly.

Everything that changes the result is in ``LMRecipe``: architecture, data budget, optimiser schedule,
seed. Initialisation and the data order come from explicit seeds, so a recipe gives the same model on
the same machine and Python version (CPU float kernels may differ in the last bits across thread counts
and machines; the corpus fingerprint in the metrics says which data was used).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autosurgeon._logging import get_logger
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.models.recipes import ARCHES, AUTOCAST_DTYPES, LMRecipe  # noqa: F401  (re-exported: the recipe lives there)
from autosurgeon.models.text_corpus import (
    VOCAB_SIZE,
    build_corpus,
    heldout_windows,
    unigram_perplexity,
)

logger = get_logger(__name__)

def save_hf_dir(model: nn.Module, out_dir: Path) -> None:
    """Write ``model`` as a Hugging Face directory: ``config.json`` + ``model.safetensors``.

    Equivalent to ``save_pretrained`` for these untied single-shard models, without its progress bar
    (library code does not draw on the terminal).
    """
    from safetensors.torch import save_file

    model.config.architectures = [type(model).__name__]  # lets AutoConfig users pick the class
    model.config.save_pretrained(out_dir)
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})


@contextlib.contextmanager
def _num_threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _lr_at(step: int, recipe: LMRecipe) -> float:
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return recipe.lr * (recipe.min_lr_ratio + (1.0 - recipe.min_lr_ratio) * cosine)


@torch.no_grad()
def heldout_perplexity(model: nn.Module, windows: torch.Tensor, *, batch_size: int = 32) -> float:
    """Per-byte perplexity of ``model`` on ``(N, T + 1)`` windows: exp of the mean next-byte cross-entropy."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, windows.shape[0], batch_size):
        chunk = windows[start : start + batch_size]
        logits = model(input_ids=chunk[:, :-1]).logits.float()  # (B, T, V)
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum").item()
        count += chunk[:, 1:].numel()
    return math.exp(total / count)


def train_lm(recipe: LMRecipe, out_dir: Path) -> dict[str, Any]:
    """Train ``recipe``, save it to ``out_dir`` as a Hugging Face directory plus ``metrics.json``; return the metrics.

    ``metrics.json`` holds ``{"metrics": {name: float}, "provenance": {...}}``: held-out and unigram
    perplexity on the same held-out targets, wall times, and what produced the model.
    """
    with _num_threads(recipe.threads):
        corpus = build_corpus(train_bytes=recipe.train_bytes, heldout_bytes=recipe.heldout_bytes, seed=recipe.seed)
        windows = heldout_windows(corpus.heldout, recipe.seq_len)
        if corpus.train.numel() <= recipe.seq_len + 1 or windows.shape[0] == 0:
            raise InvalidArgumentError(
                f"the stdlib corpus gave {corpus.train.numel()} training and {corpus.heldout.numel()} held-out "
                f"bytes, too few for `seq_len`={recipe.seq_len}; lower `seq_len` or raise the byte budgets."
            )
        model = recipe.build_model()
        model.train()
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=recipe.lr, betas=(0.9, 0.95), weight_decay=recipe.weight_decay
        )
        data = corpus.train.long()
        offsets = torch.arange(recipe.seq_len + 1)
        generator = torch.Generator().manual_seed(recipe.seed + 1)  # data order, separate from initialisation
        is_moe = recipe.arch == "mixtral"
        started, cpu_started = time.perf_counter(), time.process_time()
        loss_value = float("nan")
        for step in range(recipe.steps):
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, recipe)
            starts = torch.randint(0, data.numel() - recipe.seq_len - 1, (recipe.batch_size,), generator=generator)
            batch = data[starts[:, None] + offsets]  # (B, T + 1)
            extra = {"output_router_logits": True} if is_moe else {}
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.autocast == "bfloat16"):
                out = model(input_ids=batch[:, :-1], **extra)
            loss = F.cross_entropy(out.logits.float().reshape(-1, VOCAB_SIZE), batch[:, 1:].reshape(-1))
            loss_value = loss.item()
            if is_moe and out.aux_loss is not None:
                loss = loss + recipe.router_aux_coef * out.aux_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            optimizer.step()
            if step % 50 == 0 or step == recipe.steps - 1:
                logger.info("%s step %d/%d loss %.3f", recipe.arch, step + 1, recipe.steps, loss_value)
        train_seconds = time.perf_counter() - started
        train_cpu_seconds = time.process_time() - cpu_started  # wall/CPU apart shows a contended machine

        started = time.perf_counter()
        perplexity = heldout_perplexity(model, windows)
        eval_seconds = time.perf_counter() - started
        unigram = unigram_perplexity(corpus.train, windows[:, 1:])

    model.eval()
    save_hf_dir(model, out_dir)
    params = sum(p.numel() for p in model.parameters())
    record = {
        "metrics": {
            "perplexity": perplexity,
            "unigram_perplexity": unigram,
            "final_train_loss": loss_value,
            "train_seconds": train_seconds,
            "train_cpu_seconds": train_cpu_seconds,
            "eval_seconds": eval_seconds,
            "train_tokens": float(recipe.steps * recipe.batch_size * recipe.seq_len),
            "heldout_tokens": float(windows[:, 1:].numel()),
            "params": float(params),
        },
        "provenance": {
            "recipe": dataclasses.asdict(recipe),
            "recipe_fingerprint": recipe.fingerprint(),
            "corpus": "python stdlib .py sources, byte-level",
            "corpus_fingerprint": corpus.fingerprint,
            "corpus_train_files": corpus.train_files,
            "corpus_heldout_files": corpus.heldout_files,
            "python": corpus.python_version,
            "torch": torch.__version__,
            "machine": platform.machine(),
            "threads": recipe.threads,
            "perplexity_method": "exp(mean next-byte cross-entropy) over non-overlapping held-out windows of "
            f"{recipe.seq_len + 1} bytes; unigram = add-one-smoothed training byte frequencies on the same targets",
        },
    }
    (out_dir / "metrics.json").write_text(json.dumps(record, indent=2, sort_keys=True))
    logger.info("trained %s in %.1f s: held-out perplexity %.3f (unigram %.3f)", recipe.arch, train_seconds,
                perplexity, unigram)
    return record
