"""Calibration data: the small, fixed batch sensitivity is measured on, drawn from TRAINING data.

Calibration comes from the training split on purpose: quality is judged on held-out data
(``autosurgeon.quality.measure``), so a proxy tuned on calibration windows is never graded on the same bytes.
Everything is reproducible from the arguments (explicit seeds); :meth:`CalibrationData.fingerprint`
hashes the tensors themselves, so a cache keyed by it can never serve a table measured on other data.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from autosurgeon.errors import InvalidArgumentError
from autosurgeon.models.digits import DigitsRecipe, load_split
from autosurgeon.models.text_corpus import build_corpus, decode
from autosurgeon.quality import fidelity
from autosurgeon.quality.model_images import SOURCE, is_foreign_classifier, model_images

if TYPE_CHECKING:  # annotations only
    from autosurgeon.zoo import LoadedModel

KINDS = ("tokens", "images", "embeddings")  # embeddings: token ids in, mean-pooled hidden state compared


@dataclass(frozen=True)
class CalibrationData:
    """Model inputs plus the targets a loss needs (Hutchinson), split into batches on demand.

    Attributes:
        kind: ``"tokens"`` (``inputs`` (N, T) int64 ids, ``targets`` (N, T) next ids), ``"images"``
            (``inputs`` (N, C, H, W) float, ``targets`` (N,) labels) or ``"embeddings"`` (an encoder's
            ``inputs`` (N, T) ids; ``targets`` unused, the same ids).
        inputs: what the model's forward takes (ids as ``input_ids=``; images positionally).
        targets: next-token ids or class labels; the divergence needs none, the Hessian's loss does.
        settings: how the data was made (goes into the fingerprint and reports).
    """

    kind: str
    inputs: torch.Tensor
    targets: torch.Tensor
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidArgumentError(f"`kind` must be one of {KINDS}, got {self.kind!r}.")
        if self.inputs.shape[0] != self.targets.shape[0] or self.inputs.shape[0] == 0:
            raise InvalidArgumentError(
                f"`inputs` and `targets` must hold the same number (>= 1) of samples, got "
                f"{self.inputs.shape[0]} and {self.targets.shape[0]}."
            )

    @property
    def n_samples(self) -> int:
        return int(self.inputs.shape[0])

    def fingerprint(self) -> str:
        """sha256 of the kind, settings and tensors' bytes (16 hex digits)."""
        h = hashlib.sha256(self.kind.encode())
        h.update(json.dumps(self.settings, sort_keys=True, default=str).encode())
        for tensor in (self.inputs, self.targets):
            t = tensor.detach().cpu().contiguous()
            h.update(f"{tuple(t.shape)}:{t.dtype};".encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()[:16]

    def batches(self, batch_size: int,
                device: torch.device | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(inputs, targets)`` chunks of at most ``batch_size`` samples, in order, on ``device``."""
        if batch_size < 1:
            raise InvalidArgumentError(f"`batch_size` must be >= 1, got {batch_size}.")
        for start in range(0, self.n_samples, batch_size):
            x = self.inputs[start : start + batch_size]
            y = self.targets[start : start + batch_size]
            yield (x, y) if device is None else (x.to(device), y.to(device))


def module_of(model: Any) -> nn.Module:
    """The ``nn.Module`` of a module or of a zoo ``LoadedModel`` (whose module is ``.model``).

    Checked by type, not by ``getattr(x, "model")``: Hugging Face ``*ForCausalLM`` modules have a ``.model``
    attribute too (their backbone).
    """
    if isinstance(model, nn.Module):
        return model
    module = getattr(model, "model", None)
    if not isinstance(module, nn.Module):
        raise InvalidArgumentError(f"expected an nn.Module or a LoadedModel, got {type(model).__name__}.")
    return module


def run_model(model: nn.Module, kind: str, inputs: torch.Tensor) -> torch.Tensor:
    """Logits of ``model`` on a batch: ``(B, T, V)`` for tokens, ``(B, classes)`` for images.

    Hugging Face outputs are unwrapped (``.logits``); plain modules may return the tensor itself.
    """
    if kind == "embeddings":  # (B, T, H) -> (B, H): what encoder quality compares (measure.embed)
        out = model(input_ids=inputs, output_hidden_states=True)
        hidden = getattr(out, "last_hidden_state", None)
        return (hidden if hidden is not None else out.hidden_states[-1]).float().mean(dim=1)
    out = model(input_ids=inputs) if kind == "tokens" else model(inputs)
    logits = getattr(out, "logits", out)
    if not isinstance(logits, torch.Tensor):
        raise InvalidArgumentError(
            f"the model returned {type(out).__name__} without `.logits`; sensitivity needs logits (a tensor or an "
            "output with `.logits`)."
        )
    return logits


def lm_calibration(*, seq_len: int = 128, n_windows: int = 8, seed: int = 0, corpus_seed: int = 0,
                   train_bytes: int = 262_144) -> CalibrationData:
    """``n_windows`` random windows of ``seq_len + 1`` bytes from the byte corpus's TRAINING split.

    Args:
        seq_len: tokens per window fed to the model (targets are the next bytes).
        n_windows: windows (the batch); small on purpose: sensitivity runs N units x P precisions forwards.
        seed: which windows (a seeded generator over start offsets).
        corpus_seed: the corpus's file order (``text_corpus.build_corpus``); 0 is what the zoo LMs train on.
        train_bytes: how much training text to draw the windows from.
    """

    for name, value in (("seq_len", seq_len), ("n_windows", n_windows), ("train_bytes", train_bytes)):
        if value < 1:
            raise InvalidArgumentError(f"`{name}` must be >= 1, got {value}.")
    corpus = build_corpus(train_bytes=train_bytes, heldout_bytes=0, seed=corpus_seed)
    data = corpus.train.long()
    if data.numel() <= seq_len + 1:
        raise InvalidArgumentError(
            f"`train_bytes`={train_bytes} gave {data.numel()} bytes, too few for `seq_len`={seq_len}; raise it."
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, data.numel() - seq_len - 1, (n_windows,), generator=generator)
    windows = data[starts[:, None] + torch.arange(seq_len + 1)]  # (N, T + 1)
    settings = {"source": "stdlib-bytes-train", "seq_len": seq_len, "n_windows": n_windows, "seed": seed,
                "corpus_seed": corpus_seed, "train_bytes": train_bytes, "corpus": corpus.fingerprint[:16]}
    return CalibrationData("tokens", windows[:, :-1].contiguous(), windows[:, 1:].contiguous(), settings)


def digits_calibration(*, n_samples: int = 128, seed: int = 0) -> CalibrationData:
    """``n_samples`` images of the digits TRAINING split (``models.digits.load_split``), chosen by ``seed``."""

    if n_samples < 1:
        raise InvalidArgumentError(f"`n_samples` must be >= 1, got {n_samples}.")
    x_train, y_train, _, _ = load_split(DigitsRecipe())
    generator = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(y_train), generator=generator)[:n_samples]
    settings = {"source": "digits-train", "n_samples": int(idx.numel()), "seed": seed}
    return CalibrationData("images", x_train[idx].contiguous(), y_train[idx].contiguous(), settings)


def default_calibration(task: str, **kwargs: Any) -> CalibrationData:
    """Calibration data for a zoo task: byte text for ``"causal-lm"``, digits for ``"image-classification"``."""
    if task == "causal-lm":
        return lm_calibration(**kwargs)
    if task == "image-classification":
        return digits_calibration(**kwargs)
    raise InvalidArgumentError(
        f"no default calibration data for task {task!r}; pass `calibration=CalibrationData(...)` "
        "(tokens or images with targets)."
    )


def calibration_for(loaded: LoadedModel, *, n_samples: int = 8, seq_len: int = 128, seed: int = 1) -> CalibrationData:
    """Calibration data any model understands, in its own vocabulary (the quality's inputs, other samples).

    Zoo models: their training data (:func:`default_calibration`). Causal LMs from a directory with a
    tokenizer: TRAINING text of the local corpus encoded with it; without one: sequences sampled from the
    model itself (``seed`` differs from quality's seed 0, so the proxy is never graded on its own inputs).
    Encoders (``feature-extraction``): tokenized training text, else seeded random ids; kind ``"embeddings"``.
    """

    task = getattr(loaded, "task", None)

    if is_foreign_classifier(loaded):
        # 64 images at least: the flip proxy's expected flip rate is a mean over them (quality.flip_proxy)
        x, y = model_images(loaded, n_samples=max(n_samples, 64), seed=seed)
        return CalibrationData("images", x, y, {"source": SOURCE, "n_samples": int(x.shape[0]), "seed": seed})
    if getattr(loaded, "source", None) == "zoo" or task == "image-classification":
        return default_calibration(task or "custom")
    module = module_of(loaded)
    path = getattr(loaded, "path", None)
    config = getattr(module, "config", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    seq_len = min(seq_len if task == "causal-lm" else 32, int(limit) - 1) if limit else seq_len
    vocab = fidelity.vocab_size(module)
    settings: dict[str, Any] = {"n_samples": n_samples, "seq_len": seq_len, "seed": seed}
    if fidelity.has_tokenizer(path):
        text = decode(build_corpus(train_bytes=131_072, heldout_bytes=0, seed=0).train)
        ids = torch.tensor(fidelity.load_tokenizer(path)(text)["input_ids"], dtype=torch.long)
        ids = ids[ids < vocab]
        generator = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, ids.numel() - seq_len - 1, (n_samples,), generator=generator)
        windows = ids[starts[:, None] + torch.arange(seq_len + 1)]  # (N, T + 1)
        settings["source"] = "stdlib-text-train, model tokenizer"
    elif task == "causal-lm":
        windows = fidelity.sampled_sequences(module, n_samples=n_samples, seq_len=seq_len + 1, seed=seed)
        settings["source"] = "sampled from the unmodified model"
    elif task == "feature-extraction":
        generator = torch.Generator().manual_seed(seed)
        windows = torch.randint(0, vocab, (n_samples, seq_len + 1), generator=generator)
        settings["source"] = "seeded random ids"
    else:
        return default_calibration(task or "custom")
    if task == "feature-extraction":
        return CalibrationData("embeddings", windows[:, :-1].contiguous(), windows[:, :-1].contiguous(), settings)
    return CalibrationData("tokens", windows[:, :-1].contiguous(), windows[:, 1:].contiguous(), settings)
