"""A user's quality data (``--data FILE``): UTF-8 text or token ids, read as data (never executed or unpickled).

Formats, by suffix:
  * ``.json``: a list of token ids, or a list of lists of token ids (sequences are concatenated);
  * ``.ids``: whitespace-separated integer token ids;
  * anything else: UTF-8 text, encoded with the model's tokenizer when its directory has one, else as bytes
    (ids 0..255, which needs a vocabulary of at least 256 ids: the zoo's byte LMs).

The ids are cut into non-overlapping windows of ``seq_len + 1`` (inputs + next-token targets). Every problem is
one line naming ``--data``, the value and the fix.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from autosurgeon.errors import InvalidArgumentError

ARG = "--data"


def _fail(path: Path, why: str, fix: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"`{ARG}` {str(path)!r} {why}; {fix}")


def read_ids(path: str | Path, *, tokenizer: Any = None) -> torch.Tensor:
    """1-D int64 token ids of ``path`` (see the module docstring)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise _fail(path, f"cannot be read ({exc.strerror or exc})",
                    "pass a readable text file, a .json list of token ids or a .ids file.") from None
    if path.suffix == ".json":
        try:
            value = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise _fail(path, f"is not valid JSON ({exc})", "write a JSON list of integer token ids.") from None
        flat = value if isinstance(value, list) and all(not isinstance(v, list) for v in value) else None
        if flat is None and isinstance(value, list):
            flat = [v for seq in value for v in (seq if isinstance(seq, list) else [seq])]
        if flat is None or not all(isinstance(v, int) and not isinstance(v, bool) for v in flat):
            raise _fail(path, "holds something other than integer token ids",
                        "write a JSON list of ints, or a list of lists of ints.")
        ids = flat
    elif path.suffix == ".ids":
        try:
            ids = [int(t) for t in raw.decode("utf-8").split()]
        except (UnicodeDecodeError, ValueError):
            raise _fail(path, "holds a token that is not an integer",
                        "write whitespace-separated integer ids, or give the text a .txt suffix.") from None
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _fail(path, "is not UTF-8 text", "save it as UTF-8, or pass token ids as .json / .ids.") from None
        ids = list(tokenizer(text)["input_ids"]) if tokenizer is not None else list(text.encode("utf-8"))
    if not ids:
        raise _fail(path, "is empty", "pass a file with at least two tokens of text or ids.")
    return torch.tensor(ids, dtype=torch.long)


def data_windows(path: str | Path, *, vocab_size: int, seq_len: int, max_windows: int | None = None,
                 tokenizer: Any = None) -> torch.Tensor:
    """``(N, T + 1)`` windows of the file's ids for perplexity, checked against the model's vocabulary.

    ``T`` is ``seq_len``, or the whole file when it is shorter; at least 2 tokens are needed.
    """
    path = Path(path)
    ids = read_ids(path, tokenizer=tokenizer)
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        hint = ("it was encoded as bytes (the model's directory has no tokenizer)" if tokenizer is None
                and path.suffix not in (".json", ".ids") else "the ids come from another vocabulary")
        raise _fail(path, f"holds token id {bad}, outside the model's vocabulary [0, {vocab_size})",
                    f"{hint}: pass ids from this model's tokenizer.")
    if ids.numel() < 2:
        raise _fail(path, "holds a single token", "perplexity needs at least two tokens (input and target).")
    width = min(seq_len + 1, ids.numel())
    n = ids.numel() // width
    if max_windows is not None:
        n = min(n, max_windows)
    return ids[: n * width].view(n, width)
