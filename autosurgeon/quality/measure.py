"""Task quality on held-out data, and quality loss relative to the unmodified model.

Metrics (never on training data):
  * causal LMs, default for any model outside the zoo: FIDELITY to the unmodified model in the model's own
    vocabulary (``quality.fidelity``: KL of next-token distributions and top-1 agreement, on text encoded with
    the model's tokenizer, else on sequences sampled from the unmodified model); loss ``expm1(mean KL)``;
  * causal LMs given data (``data=`` windows or a ``--data`` file, ``quality.data_file``), and the zoo's own
    byte LMs: per-token perplexity, ``exp(mean next-token NLL)``, on non-overlapping windows of the byte
    corpus's HELD-OUT split (``text_corpus.heldout_windows``, scored by ``train_lm.heldout_perplexity``:
    the same loop that scored the zoo models when they were trained);
  * image classifiers: top-1 accuracy on the digits TEST split (``digits.load_split``);
  * encoders (``"feature-extraction"``): embedding fidelity against the unmodified model: mean cosine
    similarity of mean-pooled embeddings, and top-k retrieval agreement (the share of each item's k
    nearest neighbours, by cosine, that the candidate's embeddings keep).

Every result says its method, sample count, reference value and a 95 % interval (bootstrap over sequences /
items, Wilson for accuracy), and whether the reference sits at chance level (``QualityResult.summary``).

``quality_loss(reference, candidate)`` is the RELATIVE loss (0.01 = 1 %), positive when worse:
  fidelity: ``expm1(KL_cand - KL_ref)`` (KL_ref = 0); perplexity: ``ppl_cand / ppl_ref - 1``; accuracy: ``acc_ref - acc_cand`` (points / 100);
  embeddings: ``1 - mean cosine`` (the reference's own cosine is 1).

:class:`QualityEvaluator` computes the unmodified model's reference once and keeps it (and, for encoders,
its embeddings) in the object the caller holds.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from autosurgeon.errors import InvalidArgumentError
from autosurgeon.models.digits import DigitsRecipe, load_split
from autosurgeon.models.text_corpus import build_corpus, heldout_windows
from autosurgeon.quality import fidelity
from autosurgeon.quality.calibration import module_of
from autosurgeon.quality.data_file import data_windows
from autosurgeon.quality.fidelity import bootstrap_ci, compare, log_probs
from autosurgeon.quality.model_images import SOURCE, is_foreign_classifier, model_images

TASKS = ("causal-lm", "image-classification", "feature-extraction")
from autosurgeon.quality.methods import METHODS  # noqa: E402  (plain data, shared with the CLI)

if TYPE_CHECKING:  # annotations only
    from autosurgeon.zoo import LoadedModel

_METRICS = {"perplexity": ("perplexity", False), "fidelity": ("next_token_kl", False),
            "accuracy": ("accuracy", True), "embedding": ("embedding_cosine", True)}
FIDELITY_SEQ_LEN = 128


@dataclass(frozen=True)
class QualityResult:
    """One quality measurement.

    Attributes:
        metric: ``"perplexity"``, ``"accuracy"`` or ``"embedding_cosine"``.
        value: the metric's value.
        n_samples: tokens scored (LMs), examples (classifiers) or embedded items (encoders).
        higher_is_better: the metric's direction.
        details: extra figures, e.g. ``{"top5_agreement": 0.96}`` for encoders.
        method: how it was measured, in words (data, sample count, what it compares).
        interval: a 95 % interval of ``value`` (None where not computed).
        chance: the value a model at chance would get (uniform perplexity = vocabulary size, 1 / classes
            accuracy); None where it has no meaning.
    """

    metric: str
    value: float
    n_samples: int
    higher_is_better: bool
    details: Mapping[str, float] = field(default_factory=dict)
    method: str = ""
    interval: tuple[float, float] | None = None
    chance: float | None = None

    @property
    def at_chance(self) -> bool:
        """Whether the value is no better than chance (within its interval): a reference this weak says little."""
        if self.chance is None:
            return False
        best = self.value if self.interval is None else (self.interval[1] if self.higher_is_better
                                                         else self.interval[0])
        return best <= self.chance if self.higher_is_better else best >= self.chance * 0.95

    def summary(self) -> str:
        """One line: metric, value, interval, samples, method; chance-level called out."""
        ci = "" if self.interval is None else f" [95% {self.interval[0]:.4g}, {self.interval[1]:.4g}]"
        extra = "".join(f", {k} {v:.4g}" for k, v in self.details.items() if isinstance(v, (int, float)))
        warn = f" -- AT CHANCE LEVEL ({self.chance:.4g}): differences mean little" if self.at_chance else ""
        return f"{self.metric} {self.value:.4g}{ci} on {self.n_samples} samples{extra} ({self.method}){warn}"

    def to_dict(self) -> dict[str, object]:
        return {"metric": self.metric, "value": self.value, "n_samples": self.n_samples,
                "higher_is_better": self.higher_is_better, "details": dict(self.details), "method": self.method,
                "interval": list(self.interval) if self.interval is not None else None, "chance": self.chance,
                "at_chance": self.at_chance}


def quality_loss(reference: QualityResult, candidate: QualityResult) -> float:
    """Relative quality loss of ``candidate`` against ``reference`` (positive = worse; see module docstring)."""
    if reference.metric != candidate.metric:
        raise InvalidArgumentError(
            f"cannot compare a {candidate.metric!r} result with a {reference.metric!r} reference; evaluate both "
            "with the same task."
        )
    if reference.metric == "perplexity":
        return candidate.value / reference.value - 1.0
    if reference.metric == "next_token_kl":
        return math.expm1(candidate.value - reference.value)
    return reference.value - candidate.value  # accuracy in [0, 1]; cosine with reference 1.0


# --- default held-out data -----------------------------------------------------------------------


def lm_heldout_windows(*, seq_len: int = 256, max_windows: int | None = 32, heldout_bytes: int = 131_072,
                       seed: int = 0) -> torch.Tensor:
    """``(N, seq_len + 1)`` held-out byte windows: the split the zoo LMs were scored on (seed 0, 131072 bytes)."""

    corpus = build_corpus(train_bytes=0, heldout_bytes=heldout_bytes, seed=seed)
    windows = heldout_windows(corpus.heldout, seq_len, max_windows)
    if windows.shape[0] == 0:
        raise InvalidArgumentError(f"`heldout_bytes`={heldout_bytes} holds no window of `seq_len`={seq_len}.")
    return windows


def digits_test_split() -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_test, y_test)`` of the digits recipe the zoo's ``digits-cnn`` trained with (never trained on)."""

    _, _, x_test, y_test = load_split(DigitsRecipe())
    return x_test, y_test


def encoder_inputs(*, vocab_size: int, n_items: int = 64, seq_len: int = 32, seed: int = 0) -> torch.Tensor:
    """``(n_items, seq_len)`` token ids from a seeded generator (encoders have no zoo data of their own)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (n_items, seq_len), generator=generator)


# --- metrics -------------------------------------------------------------------------------------


def _device(model: nn.Module) -> torch.device:
    """Where inputs go: the first parameter's device, skipping meta ones (offloaded by accelerate's hooks)."""
    for p in model.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device("cpu")


@torch.no_grad()
def perplexity(model: nn.Module, windows: torch.Tensor, *, batch_size: int = 16,
               method: str = "held-out windows") -> QualityResult:
    """Perplexity on ``(N, T + 1)`` token windows (inputs + next-token targets), with a bootstrap interval.

    The value is ``exp`` of the mean next-token cross-entropy over all positions (``train_lm.heldout_perplexity``'s
    definition); the interval resamples windows.
    """
    if windows.dim() != 2 or windows.shape[1] < 2:
        raise InvalidArgumentError(f"LM `data` must be (N, T + 1) token windows, got shape {tuple(windows.shape)}.")

    model.eval()
    device, nll = _device(model), []
    for start in range(0, windows.shape[0], batch_size):
        chunk = windows[start : start + batch_size].to(device)
        logits = model(input_ids=chunk[:, :-1]).logits.float()  # (B, T, V)
        loss = F.cross_entropy(logits.transpose(1, 2), chunk[:, 1:], reduction="none")  # (B, T)
        nll.append(loss.mean(1).double().cpu())
    per_window = torch.cat(nll).numpy()
    low, high = bootstrap_ci(per_window)
    vocab = logits.shape[-1]
    return QualityResult("perplexity", math.exp(float(per_window.mean())), int(windows[:, 1:].numel()),
                         higher_is_better=False, method=f"perplexity on {windows.shape[0]} {method}",
                         interval=(math.exp(low), math.exp(high)), chance=float(vocab))


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % by default)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@torch.no_grad()
def predictions(model: nn.Module, x: torch.Tensor, *, batch_size: int = 256) -> tuple[torch.Tensor, int]:
    """Top-1 predictions of ``model`` on images ``x`` (eval mode), and the number of classes."""
    model.eval()
    device, preds, classes = _device(model), [], 0
    for start in range(0, len(x), batch_size):
        out = model(x[start : start + batch_size].to(device))
        logits = getattr(out, "logits", out)
        classes = int(logits.shape[-1])
        preds.append(logits.argmax(dim=-1).cpu())
    return torch.cat(preds), classes


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 256,
             reference_predictions: torch.Tensor | None = None) -> QualityResult:
    """Top-1 accuracy on ``(x, y)`` with a Wilson interval; agreement with ``reference_predictions`` if given."""
    preds, classes = predictions(model, x, batch_size=batch_size)
    correct = int((preds == y).sum())
    details: dict[str, float] = {}
    if reference_predictions is not None:
        details["top1_agreement"] = float((preds == reference_predictions).double().mean())
    return QualityResult("accuracy", correct / len(y), int(len(y)), higher_is_better=True, details=details,
                         method=f"top-1 accuracy on {len(y)} labelled test examples",
                         interval=wilson(correct, len(y)), chance=1.0 / max(classes, 1))


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
    """Mean cosine of paired embeddings (bootstrap interval over items), with top-k agreement in ``details``.

    Retrieval: each item queries all the others by cosine similarity (itself excluded); agreement is the
    mean share of the reference's k nearest neighbours that the candidate's k nearest neighbours contain.
    """
    if reference.shape != candidate.shape or reference.dim() != 2:
        raise InvalidArgumentError(f"embeddings must be two (N, H) tensors of one shape, got "
                                   f"{tuple(reference.shape)} and {tuple(candidate.shape)}.")
    n = reference.shape[0]
    if not 1 <= top_k < n:
        raise InvalidArgumentError(f"`top_k` must be in [1, {n - 1}] for {n} items, got {top_k}.")

    per_item = F.cosine_similarity(reference.double(), candidate.double(), dim=1)
    cosine = per_item.mean().item()

    def neighbours(e: torch.Tensor) -> torch.Tensor:
        unit = F.normalize(e.double(), dim=1)
        sim = unit @ unit.T
        sim.fill_diagonal_(-float("inf"))
        return sim.topk(top_k, dim=1).indices  # (N, k)

    ref_nn, cand_nn = neighbours(reference), neighbours(candidate)
    hits = (ref_nn[:, :, None] == cand_nn[:, None, :]).any(dim=2).double().mean().item()
    return QualityResult("embedding_cosine", cosine, n, higher_is_better=True,
                         details={f"top{top_k}_agreement": hits}, interval=bootstrap_ci(per_item.numpy()),
                         method=f"mean cosine of mean-pooled embeddings of {n} items vs the unmodified model, "
                                f"top-{top_k} neighbour agreement")


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
    """The zoo's held-out data each task is scored on (byte windows, digits test split, seeded ids)."""
    if task == "causal-lm":
        return lm_heldout_windows(seq_len=seq_len, max_windows=max_samples if max_samples is not None else 32)
    if task == "image-classification":
        return digits_test_split()
    return encoder_inputs(vocab_size=vocab_size, n_items=max_samples or 64, seed=seed)


def _is_zoo_lm(loaded: LoadedModel) -> bool:
    """A zoo byte LM (its own held-out data set exists): ``source == "zoo"`` with a token source."""
    return getattr(loaded, "source", None) == "zoo" and getattr(loaded, "token_source", None) is not None


def resolve_method(loaded: LoadedModel, task: str, method: str, data: Any) -> str:
    """The measurement a task + ``--quality-method`` + ``--data`` gives (see the module docstring)."""
    if method not in METHODS:
        raise InvalidArgumentError(f"`--quality-method` must be one of {METHODS}, got {method!r}.")
    if task == "image-classification":
        return "accuracy"
    if task == "feature-extraction":
        return "embedding"
    if method == "auto":
        return "perplexity" if data is not None or _is_zoo_lm(loaded) else "fidelity"
    if method == "perplexity" and data is None and not _is_zoo_lm(loaded):
        raise InvalidArgumentError("`--quality-method`='perplexity' needs data this model understands; pass "
                                   "`--data FILE` (text or token ids), or use `--quality-method fidelity`.")
    return method


class QualityEvaluator:
    """Scores models of one task against the unmodified model's reference, on fixed inputs.

    The reference (and the reference's log-probabilities, embeddings or predictions) is computed once, HERE
    at construction, from the model as it is now, and kept: a search that scores thousands of plans pays for
    it once, and a candidate that is the same module changed in place (``precision_swap.swapped``,
    ``apply_plan(inplace=True)``) can never be mistaken for the reference.

    Args:
        reference_model: the unmodified model (``nn.Module`` or ``LoadedModel``).
        task: one of ``TASKS``; default from the ``LoadedModel`` or the module's class.
        data: LM: ``(N, T + 1)`` windows or a file path (``quality.data_file``); classifier: ``(x, y)``;
            encoder: ``(N, T)`` ids. Default: see ``method``.
        max_samples: sequences / windows / examples / items (a fast, deterministic prefix). Defaults: 32
            perplexity windows of 256 tokens, 8 fidelity sequences of 128 tokens, 64 encoder items.
        batch_size: samples per forward.
        top_k: neighbour-agreement depth for encoders (lowered to ``items - 1`` when fewer items are asked).
        method: causal LMs: ``"auto"`` (perplexity when data is given or for the zoo's byte LMs, else
            fidelity), ``"fidelity"`` or ``"perplexity"`` (needs data outside the zoo).
        seed: seeds sampled sequences and encoder ids.
    """

    def __init__(self, reference_model: Any, *, task: str | None = None, data: Any = None,
                 max_samples: int | None = None, batch_size: int = 16, top_k: int = 5, method: str = "auto",
                 seed: int = 0) -> None:
        if max_samples is not None and (isinstance(max_samples, bool) or max_samples < 1):
            raise InvalidArgumentError(f"`max_samples` (`--quality-samples`) must be >= 1 or None, got {max_samples}.")
        if batch_size < 1:
            raise InvalidArgumentError(f"`batch_size` must be >= 1, got {batch_size}.")
        self.task = _task_of(reference_model, task)
        self.method = resolve_method(reference_model, self.task, method, data)
        self.metric, self.higher_is_better = _METRICS[self.method]
        self._model = module_of(reference_model)
        self.batch_size, self.seed = batch_size, seed
        self._reference_out: Any = None
        self.last: QualityResult | None = None
        path = getattr(reference_model, "path", None)
        if self.method == "fidelity":
            self.data, self._source = self._fidelity_inputs(reference_model, data, max_samples, path)

            self._reference_out = log_probs(self._model, self.data, batch_size=self.batch_size)
            self._reference = self.evaluate(self._model)
            return
        if self.method == "perplexity":
            self.data = self._perplexity_windows(reference_model, data, max_samples, path)
            self._source = "user data" if data is not None else "held-out windows of the zoo's byte corpus"
        elif self.method == "embedding":
            self.data = self._encoder_inputs(data, max_samples, path)
            n = self.data.shape[0]
            if n < 2:
                raise InvalidArgumentError(f"`--quality-samples` must be >= 2 for an encoder (neighbour agreement "
                                           f"compares items), got {n}.")
            self.top_k = max(1, min(top_k, n - 1))
        else:

            if data is None and is_foreign_classifier(reference_model):
                data = model_images(reference_model, n_samples=max_samples or 64, seed=self.seed)
                self._source = SOURCE
            if data is None:
                data = digits_test_split()
            self.data = _limit(self.task, data, max_samples)
        if self.method == "embedding":
            self._reference_out = embed(self._model, self.data, batch_size=self.batch_size)
            e = self._reference_out
            self._reference = embedding_fidelity(e, e, top_k=self.top_k)
        elif self.method == "accuracy":
            self._reference_out, _ = predictions(self._model, self.data[0])
            self._reference = self.evaluate(self._model)
        else:
            self._reference = self.evaluate(self._model)

    # ---- inputs
    def _fidelity_inputs(self, loaded: LoadedModel, data: Any, max_samples: int | None, path: Any) -> tuple[Any, str]:

        n, seq_len = max_samples or 8, _max_len(self._model, FIDELITY_SEQ_LEN)
        if data is not None:
            windows = self._perplexity_windows(loaded, data, max_samples or 8, path)
            return windows[:, :-1].contiguous(), "user data"
        if fidelity.has_tokenizer(path):
            ids = fidelity.tokenized_heldout(fidelity.load_tokenizer(path), n_samples=n, seq_len=seq_len)
            _check_vocab(ids, fidelity.vocab_size(self._model), "the model's tokenizer")
            return ids, "held-out text encoded with the model's tokenizer"
        if _is_zoo_lm(loaded):
            return lm_heldout_windows(seq_len=seq_len, max_windows=n)[:, :-1].contiguous(), \
                "held-out windows of the zoo's byte corpus"
        ids = fidelity.sampled_sequences(self._model, n_samples=n, seq_len=seq_len, seed=self.seed)
        return ids, f"sequences sampled from the unmodified model (seed {self.seed})"

    def _perplexity_windows(self, loaded: LoadedModel, data: Any, max_samples: int | None, path: Any) -> torch.Tensor:
        if isinstance(data, (str, Path)):

            tok = fidelity.load_tokenizer(path) if fidelity.has_tokenizer(path) else None
            return data_windows(data, vocab_size=fidelity.vocab_size(self._model), seq_len=_max_len(self._model, 256),
                                max_windows=max_samples or 32, tokenizer=tok)
        if data is None:
            vocab = getattr(getattr(self._model, "config", None), "vocab_size", 256)
            if vocab < 256:
                raise InvalidArgumentError(f"the default held-out text is byte-level (ids 0..255) but the model's "
                                           f"vocabulary has {vocab} ids; pass `data` as (N, T + 1) token windows.")
            return lm_heldout_windows(seq_len=256, max_windows=max_samples if max_samples is not None else 32)
        return _limit(self.task, data, max_samples)

    def _encoder_inputs(self, data: Any, max_samples: int | None, path: Any) -> torch.Tensor:

        n = max_samples or 64
        if data is not None:
            return _limit(self.task, data, max_samples)
        if fidelity.has_tokenizer(path):
            self._source = "held-out text encoded with the model's tokenizer"
            return fidelity.tokenized_heldout(fidelity.load_tokenizer(path), n_samples=n, seq_len=_max_len(self._model, 32))
        vocab = getattr(getattr(self._model, "config", None), "vocab_size", 256)
        self._source = f"seeded random token ids (seed {self.seed})"
        return encoder_inputs(vocab_size=vocab, n_items=n, seed=self.seed)

    # ---- scoring
    @property
    def reference(self) -> QualityResult:
        """The unmodified model's quality, measured when this evaluator was made."""
        return self._reference

    def evaluate(self, model: Any) -> QualityResult:
        """Quality of ``model`` (same task) on this evaluator's data; kept as ``self.last``."""
        module = module_of(model)
        if self.method == "perplexity":
            result = perplexity(module, self.data, batch_size=self.batch_size, method=self._source)
        elif self.method == "fidelity":

            stats = compare(self._reference_out, log_probs(module, self.data, batch_size=self.batch_size))
            result = QualityResult(
                "next_token_kl", stats["kl"], stats["positions"], higher_is_better=False,
                details={"top1_agreement": stats["top1_agreement"],
                         "top1_agreement_low": stats["top1_agreement_ci"][0],
                         "top1_agreement_high": stats["top1_agreement_ci"][1]},
                interval=stats["kl_ci"],
                method=f"fidelity vs the unmodified model: KL(ref||cand) of next-token distributions and top-1 "
                       f"agreement on {stats['sequences']} {self._source}")
        elif self.method == "accuracy":
            x, y = self.data
            result = accuracy(module, x, y, batch_size=max(self.batch_size, 256),
                              reference_predictions=self._reference_out)
            if getattr(self, "_source", None):  # not the digits test split: say what the labels are
                result = dataclasses.replace(result, method=f"{result.method}, on {self._source}")
        else:
            candidate = embed(module, self.data, batch_size=self.batch_size)
            result = embedding_fidelity(self._reference_out, candidate, top_k=self.top_k)
            result = QualityResult(result.metric, result.value, result.n_samples, True, result.details,
                                   method=f"{result.method}, on {self._source}", interval=result.interval)
        self.last = result
        return result

    def loss(self, model: Any) -> float:
        """:func:`quality_loss` of ``model`` against the cached reference."""
        return quality_loss(self.reference, self.evaluate(model))

    def loss_interval(self, result: QualityResult | None = None) -> tuple[float, float] | None:
        """A 95 % interval of the loss of ``result`` (default the last evaluated), from its own interval."""
        r = result or self.last
        if r is None or r.interval is None:
            return None
        lo, hi = (quality_loss(self.reference, _with_value(r, v)) for v in r.interval)
        return (min(lo, hi), max(lo, hi))

    def report(self, result: QualityResult | None = None) -> dict[str, Any]:
        """Method, samples, reference and candidate values, the loss's interval, chance level: for Metrics."""
        r = result or self.last
        out: dict[str, Any] = {"method": self.method, "reference": self.reference.to_dict()}
        if r is not None:
            out.update(candidate=r.to_dict(), loss=quality_loss(self.reference, r), loss_interval=self.loss_interval(r))
        return out


def _max_len(model: nn.Module, want: int) -> int:
    """``want`` tokens, or fewer when the model's positions end sooner (learned position embeddings)."""
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return min(want, int(limit) - 1) if limit else want


def _with_value(r: QualityResult, value: float) -> QualityResult:
    return QualityResult(r.metric, value, r.n_samples, r.higher_is_better)


def _check_vocab(ids: torch.Tensor, vocab: int, what: str) -> None:
    if ids.numel() and int(ids.max()) >= vocab:
        raise InvalidArgumentError(f"{what} produced token id {int(ids.max())}, outside the model's vocabulary "
                                   f"[0, {vocab}); pass `--data` as ids of this model's vocabulary.")


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
                     batch_size: int = 16, method: str = "auto") -> QualityResult:
    """Quality of ``model`` alone (perplexity or accuracy). Fidelity and encoders are relative: use QualityEvaluator."""
    task = _task_of(model, task)
    if task == "feature-extraction":
        raise InvalidArgumentError("embedding fidelity is relative to the unmodified encoder; use "
                                   "QualityEvaluator(reference_model, task='feature-extraction').evaluate(candidate).")
    if task == "causal-lm" and method == "auto":
        method = "perplexity"  # a model alone: its own perplexity (zoo data, or `data`)
    return QualityEvaluator(model, task=task, data=data, max_samples=max_samples, batch_size=batch_size,
                            method=method).reference
