"""A byte-level text corpus every machine has: the Python standard library's ``.py`` sources.

The corpus is reproducible from its arguments alone: files are listed from ``sysconfig``'s stdlib path
in sorted order, shuffled by a seeded generator, and split into training and held-out sets *by file*
(a stable hash of each file's relative path), so no held-out byte is seen in training. The corpus
differs between Python versions; its fingerprint (recorded with every trained model) says which.
"""
from __future__ import annotations

import hashlib
import math
import random
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

from autosurgeon.models.recipes import VOCAB_SIZE


def encode(text: str | bytes) -> list[int]:
    """Return the byte-level token ids of ``text`` (UTF-8 for ``str``)."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return list(data)


def decode(ids: list[int] | torch.Tensor) -> str:
    """Return the text of byte-level token ids; invalid UTF-8 is replaced, never raised."""
    values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    return bytes(int(v) for v in values).decode("utf-8", errors="replace")


@dataclass(frozen=True)
class TextCorpus:
    """Training and held-out bytes (1-D ``torch.uint8``) plus where they came from."""

    train: torch.Tensor
    heldout: torch.Tensor
    train_files: int
    heldout_files: int
    fingerprint: str  # sha256 of both splits: equal fingerprints mean equal data

    @property
    def python_version(self) -> str:
        return f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"


def stdlib_sources() -> list[tuple[str, Path]]:
    """Return ``(relative path, path)`` of the stdlib's ``.py`` files, sorted, without site-packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if {"site-packages", "dist-packages", "__pycache__"} & set(rel.parts):
            continue
        found.append((rel.as_posix(), path))
    return sorted(found)


def _is_heldout(rel: str, heldout_every: int) -> bool:
    # A hash of the path, not of the content or the position in a list: a file keeps its split
    # whatever else is installed.
    return hashlib.sha256(rel.encode()).digest()[0] % heldout_every == 0


def build_corpus(
    *,
    train_bytes: int,
    heldout_bytes: int,
    seed: int = 0,
    max_file_bytes: int = 32_768,
    heldout_every: int = 10,
) -> TextCorpus:
    """Collect ``train_bytes`` of training text and ``heldout_bytes`` of held-out text from the stdlib.

    Args:
        train_bytes: bytes of training text to collect (the budget; files are taken whole up to
            ``max_file_bytes`` each, the last one truncated).
        heldout_bytes: bytes of held-out text, from files that never appear in training.
        seed: orders the files, so the budget samples the whole library rather than its first folders.
        max_file_bytes: keeps one long file from dominating the corpus.
        heldout_every: about one file in this many is held out.
    """
    files = stdlib_sources()
    random.Random(seed).shuffle(files)
    chunks: dict[bool, list[bytes]] = {False: [], True: []}
    budget = {False: train_bytes, True: heldout_bytes}
    counts = {False: 0, True: 0}
    for rel, path in files:
        split = _is_heldout(rel, heldout_every)
        if budget[split] <= 0:
            if budget[not split] <= 0:
                break
            continue
        try:
            data = path.read_bytes()[:max_file_bytes]
        except OSError:  # an unreadable file is skipped; the fingerprint records what was read
            continue
        data = data[: budget[split]]
        chunks[split].append(data)
        budget[split] -= len(data)
        counts[split] += 1
    train = b"".join(chunks[False])
    heldout = b"".join(chunks[True])
    digest = hashlib.sha256(train + b"\0--heldout--\0" + heldout).hexdigest()
    return TextCorpus(
        train=_byte_tensor(train),
        heldout=_byte_tensor(heldout),
        train_files=counts[False],
        heldout_files=counts[True],
        fingerprint=digest,
    )


def _byte_tensor(data: bytes) -> torch.Tensor:
    # torch.frombuffer refuses an empty buffer; an empty split is legal (e.g. held-out text only).
    if not data:
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def heldout_windows(heldout: torch.Tensor, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """Cut held-out bytes into non-overlapping ``(N, seq_len + 1)`` int64 windows (inputs + next-byte targets)."""
    width = seq_len + 1
    n = heldout.numel() // width
    if max_windows is not None:
        n = min(n, max_windows)
    return heldout[: n * width].view(n, width).long()


def unigram_perplexity(train: torch.Tensor, targets: torch.Tensor) -> float:
    """Per-byte perplexity of ``targets`` under byte frequencies of ``train`` (add-one smoothed).

    The baseline a language model must beat: it knows which bytes are common, nothing of context.
    """
    counts = torch.bincount(train.long().flatten(), minlength=VOCAB_SIZE).double() + 1.0
    log_probs = torch.log(counts / counts.sum())
    nll = -log_probs[targets.long().flatten()].mean().item()
    return math.exp(nll)


class HeldoutTokens:
    """A token source of held-out corpus windows, so example inputs of byte LMs are real text.

    The held-out bytes are read on first use and kept by this object (the caller holds it; there is no
    module-level cache).
    """

    def __init__(self, *, heldout_bytes: int, seed: int = 0) -> None:
        self._heldout_bytes = heldout_bytes
        self._seed = seed
        self._data: torch.Tensor | None = None

    def __call__(self, batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
        if self._data is None:
            self._data = build_corpus(train_bytes=0, heldout_bytes=self._heldout_bytes, seed=self._seed).heldout.long()
        data = self._data
        if data.numel() <= length:  # a very long request: repeat the text rather than fail
            data = data.repeat(length // max(1, data.numel()) + 2)
        starts = torch.randint(0, data.numel() - length, (batch,), generator=generator)
        return data[starts[:, None] + torch.arange(length)]  # (B, T)
