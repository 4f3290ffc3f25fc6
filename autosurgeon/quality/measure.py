"""Task quality on held-out data, and quality loss relative to the unmodified model.

Metrics (never on training data):
  * causal LMs: per-token perplexity, ``exp(mean next-token NLL)``, on non-overlapping windows of the byte
    corpus's HELD-OUT split (``text_corpus.heldout_windows``, scored by ``train_lm.heldout_perplexity``:
    the same loop that scored the zoo models when they were trained);
  * image classifiers: top-1 accuracy on the digits TEST split (``digits.load_split``);
  * encoders (``"feature-extraction"``): embedding fidelity against the unmodified model: mean cosine
    similarity of mean-pooled embeddings, and top-k retrieval agreement (the share of each item's k
    nearest neighbours, by cosine, that the candidate's embeddings keep).

``quality_loss(reference, candidate)`` is the RELATIVE loss (0.01 = 1 %), positive when worse:
  perplexity: ``ppl_cand / ppl_ref - 1``; accuracy: ``acc_ref - acc_cand`` (points / 100);
  embeddings: ``1 - mean cosine`` (the reference's own cosine is 1).

:class:`QualityEvaluator` computes the unmodified model's reference once and keeps it (and, for encoders,
its embeddings) in the object the caller holds.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autosurgeon.quality.calibration import module_of
from autosurgeon.errors import InvalidArgumentError

TASKS = ("causal-lm", "image-classification", "feature-extraction")
_METRICS = {"causal-lm": ("perplexity", False), "image-classification": ("accuracy", True),
            "feature-extraction": ("embedding_cosine", True)}


@dataclass(frozen=True)
class QualityResult:
    """One quality measurement.

    Attributes:
        metric: ``"perplexity"``, ``"accuracy"`` or ``"embedding_cosine"``.
        value: the metric's value.
        n_samples: tokens scored (LMs), examples (classifiers) or embedded items (encoders).
        higher_is_better: the metric's direction.
        details: extra figures, e.g. ``{"top5_agreement": 0.96}`` for encoders.
    """

    metric: str
    value: float
    n_samples: int
    higher_is_better: bool
    details: Mapping[str, float] = field(default_factory=dict)


def quality_loss(reference: QualityResult, candidate: QualityResult) -> float:
    """Relative quality loss of ``candidate`` against ``reference`` (positive = worse; see module docstring)."""
    if reference.metric != candidate.metric:
        raise InvalidArgumentError(
            f"cannot compare a {candidate.metric!r} result with a {reference.metric!r} reference; evaluate both "
            "with the same task."
        )
    if reference.metric == "perplexity":
        return candidate.value / reference.value - 1.0
    return reference.value - candidate.value  # accuracy in [0, 1]; cosine with reference 1.0


# --- default held-out data -----------------------------------------------------------------------


def lm_heldout_windows(*, seq_len: int = 256, max_windows: int | None = 32, heldout_bytes: int = 131_072,
                       seed: int = 0) -> torch.Tensor:
    """``(N, seq_len + 1)`` held-out byte windows: the split the zoo LMs were scored on (seed 0, 131072 bytes)."""
    from autosurgeon.models.text_corpus import build_corpus, heldout_windows

    corpus = build_corpus(train_bytes=0, heldout_bytes=heldout_bytes, seed=seed)
    windows = heldout_windows(corpus.heldout, seq_len, max_windows)
    if windows.shape[0] == 0:
        raise InvalidArgumentError(f"`heldout_bytes`={heldout_bytes} holds no window of `seq_len`={seq_len}.")
    return windows


def digits_test_split() -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_test, y_test)`` of the digits recipe the zoo's ``digits-cnn`` trained with (never trained on)."""
    from autosurgeon.models.digits import DigitsRecipe, load_split

    _, _, x_test, y_test = load_split(DigitsRecipe())
    return x_test, y_test


def encoder_inputs(*, vocab_size: int, n_items: int = 64, seq_len: int = 32, seed: int = 0) -> torch.Tensor:
    """``(n_items, seq_len)`` token ids from a seeded generator (encoders have no zoo data of their own)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (n_items, seq_len), generator=generator)


# --- metrics -------------------------------------------------------------------------------------


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def perplexity(model: nn.Module, windows: torch.Tensor, *, batch_size: int = 16) -> QualityResult:
    """Perplexity on ``(N, T + 1)`` token windows (inputs + next-token targets), via ``heldout_perplexity``."""
    from autosurgeon.models.train_lm import heldout_perplexity

    if windows.dim() != 2 or windows.shape[1] < 2:
        raise InvalidArgumentError(f"LM `data` must be (N, T + 1) token windows, got shape {tuple(windows.shape)}.")
    value = heldout_perplexity(model, windows.to(_device(model)), batch_size=batch_size)
    return QualityResult("perplexity", value, int(windows[:, 1:].numel()), higher_is_better=False)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256) -> QualityResult:
    """Top-1 accuracy on ``(x, y)`` (images passed positionally), in eval mode."""
    model.eval()
    device, correct = _device(model), 0
    for start in range(0, len(y), batch_size):
        out = model(x[start : start + batch_size].to(device))
        logits = getattr(out, "logits", out)
        correct += int((logits.argmax(dim=-1).cpu() == y[start : start + batch_size]).sum())
    return QualityResult("accuracy", correct / len(y), int(len(y)), higher_is_better=True)


@torch.no_grad()
def embed(model: nn.Module, input_ids: torch.Tensor, *, batch_size: int = 16) -> torch.Tensor:
    """``(N, H)`` mean-pooled last hidden states (``last_hidden_state``, else ``hidden_states[-1]``)."""
    model.eval()
    device, chunks = _device(model), []
    for start in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[start : start + batch_size].to(device)
        out = model(input_ids=ids, output_hidden_states=True)
        hidden = getattr(out, "last_hidden_state", None)
        if hidden is None:
            hidden = out.hidden_states[-1]
        chunks.append(hidden.float().mean(dim=1).cpu())  # (B, T, H) -> (B, H)
    return torch.cat(chunks)


def embedding_fidelity(reference: torch.Tensor, candidate: torch.Tensor, *, top_k: int = 5) -> QualityResult:
    """Mean cosine of paired embeddings, with top-k retrieval agreement in ``details``.

    Retrieval: each item queries all the others by cosine similarity (itself excluded); agreement is the
    mean share of the reference's k nearest neighbours that the candidate's k nearest neighbours contain.
    """
    if reference.shape != candidate.shape or reference.dim() != 2:
        raise InvalidArgumentError(f"embeddings must be two (N, H) tensors of one shape, got "
                                   f"{tuple(reference.shape)} and {tuple(candidate.shape)}.")
    n = reference.shape[0]
    if not 1 <= top_k < n:
        raise InvalidArgumentError(f"`top_k` must be in [1, {n - 1}] for {n} items, got {top_k}.")
    cosine = F.cosine_similarity(reference.double(), candidate.double(), dim=1).mean().item()

    def neighbours(e: torch.Tensor) -> torch.Tensor:
        unit = F.normalize(e.double(), dim=1)
        sim = unit @ unit.T
        sim.fill_diagonal_(-float("inf"))
        return sim.topk(top_k, dim=1).indices  # (N, k)

    ref_nn, cand_nn = neighbours(reference), neighbours(candidate)
    hits = (ref_nn[:, :, None] == cand_nn[:, None, :]).any(dim=2).double().mean().item()
    return QualityResult("embedding_cosine", cosine, n, higher_is_better=True,
                         details={f"top{top_k}_agreement": hits})


# --- one entry point -----------------------------------------------------------------------------


def _task_of(model: Any, task: str | None) -> str:
    task = task or getattr(model, "task", None)
    if task is None:
        module = module_of(model)
        task = "causal-lm" if type(module).__name__.endswith("ForCausalLM") else None
    if task not in TASKS:
        raise InvalidArgumentError(f"`task` must be one of {TASKS}, got {task!r}; pass task=... for a bare module.")
    return task


def default_data(task: str, *, max_samples: int | None = None, seq_len: int = 256, vocab_size: int = 256,
                 seed: int = 0) -> Any:
    """The held-out data each task is scored on when ``data`` is None (see the module docstring)."""
    if task == "causal-lm":
        return lm_heldout_windows(seq_len=seq_len, max_windows=max_samples if max_samples is not None else 32)
    if task == "image-classification":
        return digits_test_split()
    return encoder_inputs(vocab_size=vocab_size, n_items=max_samples or 64, seed=seed)


class QualityEvaluator:
    """Scores models of one task on fixed held-out data against the unmodified model's reference.

    The reference (and, for encoders, its embeddings) is computed once, HERE at construction, from the model
    as it is now, and kept: a search that scores thousands of plans pays for it once, and scoring a candidate
    that is the same module changed in place (``precision_swap.swapped``, ``apply_plan(inplace=True)``) can
    never be mistaken for the reference.

    Args:
        reference_model: the unmodified model (``nn.Module`` or ``LoadedModel``).
        task: one of ``TASKS``; default from the ``LoadedModel`` or the module's class.
        data: LM: ``(N, T + 1)`` windows; classifier: ``(x, y)``; encoder: ``(N, T)`` ids. Default: held-out
            data of the zoo (:func:`default_data`).
        max_samples: cap on windows / examples / items (a fast, deterministic prefix). The LM default is 32
            windows of 256 bytes: fast, but changes below a few tenths of a percent of perplexity are within
            its noise (experiments/benchmarks/results/sensitivity_rank.md gives measured standard errors);
            pass ``data=lm_heldout_windows(max_windows=None)`` to score the whole held-out split.
        batch_size: samples per forward.
        top_k: retrieval agreement depth (encoders).
    """

    def __init__(self, reference_model: Any, *, task: str | None = None, data: Any = None,
                 max_samples: int | None = None, batch_size: int = 16, top_k: int = 5) -> None:
        if max_samples is not None and max_samples < 1:
            raise InvalidArgumentError(f"`max_samples` must be >= 1 or None, got {max_samples}.")
        if batch_size < 1:
            raise InvalidArgumentError(f"`batch_size` must be >= 1, got {batch_size}.")
        self.task = _task_of(reference_model, task)
        self.metric, self.higher_is_better = _METRICS[self.task]
        self._model = module_of(reference_model)
        if data is None:
            vocab = getattr(getattr(self._model, "config", None), "vocab_size", 256)
            if self.task == "causal-lm" and vocab < 256:
                raise InvalidArgumentError(f"the default held-out text is byte-level (ids 0..255) but the model's "
                                           f"vocabulary has {vocab} ids; pass `data` as (N, T + 1) token windows.")
            data = default_data(self.task, max_samples=max_samples, vocab_size=vocab)
        self.data = _limit(self.task, data, max_samples)
        self.batch_size, self.top_k = batch_size, top_k
        self._reference_embeddings: torch.Tensor | None = None
        if self.task == "feature-extraction":
            self._reference_embeddings = embed(self._model, self.data, batch_size=self.batch_size)
            e = self._reference_embeddings
            self._reference = embedding_fidelity(e, e, top_k=self.top_k)
        else:
            self._reference = self.evaluate(self._model)

    @property
    def reference(self) -> QualityResult:
        """The unmodified model's quality, measured when this evaluator was made."""
        return self._reference

    def evaluate(self, model: Any) -> QualityResult:
        """Quality of ``model`` (same task) on this evaluator's data."""
        module = module_of(model)
        if self.task == "causal-lm":
            return perplexity(module, self.data, batch_size=self.batch_size)
        if self.task == "image-classification":
            x, y = self.data
            return accuracy(module, x, y, batch_size=max(self.batch_size, 256))
        assert self._reference_embeddings is not None  # internal invariant: set in __init__
        candidate = embed(module, self.data, batch_size=self.batch_size)
        return embedding_fidelity(self._reference_embeddings, candidate, top_k=self.top_k)

    def loss(self, model: Any) -> float:
        """:func:`quality_loss` of ``model`` against the cached reference."""
        return quality_loss(self.reference, self.evaluate(model))


def _limit(task: str, data: Any, max_samples: int | None) -> Any:
    if task == "image-classification":
        if not (isinstance(data, (tuple, list)) and len(data) == 2):
            raise InvalidArgumentError("classifier `data` must be a pair (x, y) of images and labels.")
        x, y = data
        return (x[:max_samples], y[:max_samples]) if max_samples else (x, y)
    if not isinstance(data, torch.Tensor) or data.dim() != 2:
        raise InvalidArgumentError(f"{task} `data` must be a 2-D tensor of token ids, got {type(data).__name__}.")
    return data[:max_samples] if max_samples else data


def evaluate_quality(model: Any, *, task: str | None = None, data: Any = None, max_samples: int | None = None,
                     batch_size: int = 16) -> QualityResult:
    """Quality of ``model`` alone (perplexity or accuracy). Encoders need a reference: use QualityEvaluator."""
    task = _task_of(model, task)
    if task == "feature-extraction":
        raise InvalidArgumentError("embedding fidelity is relative to the unmodified encoder; use "
                                   "QualityEvaluator(reference_model, task='feature-extraction').evaluate(candidate).")
    return QualityEvaluator(model, task=task, data=data, max_samples=max_samples, batch_size=batch_size).reference
