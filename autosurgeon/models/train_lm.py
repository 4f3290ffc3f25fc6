"""Train a small byte-level causal LM (Llama or Mixtral architecture) on the stdlib corpus, reproducibly.

Everything that changes the result is in ``LMRecipe``: architecture, data budget, optimiser schedule,
seed. Initialisation and the data order come from explicit seeds, so a recipe gives the same model on
the same machine and Python version (CPU float kernels may differ in the last bits across thread counts
and machines; the corpus fingerprint in the metrics says which data was used).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autosurgeon._logging import get_logger
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.models.text_corpus import VOCAB_SIZE, build_corpus, heldout_windows, unigram_perplexity

logger = get_logger(__name__)

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

    def build_model(self) -> nn.Module:
        """A freshly initialised float32 model, seeded by ``seed``."""
        from transformers import AutoModelForCausalLM

        torch.manual_seed(self.seed)
        return AutoModelForCausalLM.from_config(self.hf_config(), dtype=torch.float32)


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
