"""Prompt inputs for `autosurgeon run` and the API: `--prompt` text or `--prompt-ids`, checked before any build.

``--prompt-ids 1,2,3`` gives token ids; ``--prompt-ids random:16`` draws 16 seeded random ids from the
model's vocabulary. That is how shapes with random weights and directories without a tokenizer run.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autosurgeon.errors import InvalidArgumentError
from autosurgeon.models.registry import ZOO
from autosurgeon.models.text_corpus import decode, encode

if TYPE_CHECKING:  # annotations only
    from autosurgeon.zoo import LoadedModel

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model")
_IDS = re.compile(r"^\d+(,\d+)*$")
_RANDOM = re.compile(r"^random:(\d+)$")
MAX_RANDOM = 1_000_000


@dataclass(frozen=True)
class PromptIds:
    """``--prompt-ids``: explicit ``ids``, or ``random`` ids of that length (seeded)."""

    ids: tuple[int, ...] = ()
    random: int = 0


def parse_prompt_ids(text: str | None) -> PromptIds | None:
    """``"1,2,3"`` -> ids; ``"random:16"`` -> 16 random ids; None -> None. One-line errors naming the flag."""
    if text is None:
        return None
    value = text.strip().replace(" ", "")
    match = _RANDOM.match(value)
    if match:
        n = int(match.group(1))
        if not 1 <= n <= MAX_RANDOM:
            raise InvalidArgumentError(f"`--prompt-ids` random:{n}: the length must be 1..{MAX_RANDOM}, "
                                       "e.g. random:16.")
        return PromptIds(random=n)
    if not _IDS.match(value):
        raise InvalidArgumentError(f"`--prompt-ids` must be comma-separated token ids (1,2,3) or random:N "
                                   f"(random:16), got {text!r}.")
    return PromptIds(ids=tuple(int(v) for v in value.split(",")))


def check_before_build(spec: str, prompt_ids: PromptIds | None) -> None:
    """Refuse, before any weight is built or read, a run that cannot get its input.

    Zoo shapes have random weights and no tokenizer; a Hugging Face directory without tokenizer files cannot
    take ``--prompt`` text; both need ``--prompt-ids``. Byte-level zoo models and classifiers need nothing.
    """
    if prompt_ids is not None:
        return

    hint = "pass --prompt-ids random:16 (or explicit ids: --prompt-ids 1,2,3)"
    entry = ZOO.get(spec)
    if entry is not None:
        if entry.recipe is None:
            raise InvalidArgumentError(f"{spec!r} is an architecture shape with random weights and no tokenizer; "
                                       f"{hint}.")
        return
    folder = Path(spec).expanduser()
    config_path = folder / "config.json"
    if not folder.is_dir() or not config_path.is_file():
        return  # a factory, or a folder load_model will explain
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return
    if config.get("autosurgeon_arch") or config.get("vocab_size") == 256:
        return  # the zoo's digits CNN, or a byte-level LM
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise InvalidArgumentError(f"{spec!r} has no tokenizer files ({', '.join(TOKENIZER_FILES[:4])} ...), so "
                                   f"`--prompt` text cannot be encoded; {hint}.")


def vocab_size(model: Any) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    size = getattr(text, "vocab_size", None)
    return int(size) if size else None


def prompt_ids_tensor(loaded: LoadedModel, prompt_ids: PromptIds, *, seed: int = 0) -> Any:
    """The ``(1, T)`` int64 ids ``prompt_ids`` asks for, checked against the model's vocabulary."""
    import torch

    vocab = vocab_size(loaded.model)
    if prompt_ids.random:
        if vocab is None:
            raise InvalidArgumentError(f"`--prompt-ids random:N` draws from the vocabulary, but {loaded.name!r} has no "
                                       f"`config.vocab_size`; give explicit ids.")
        generator = torch.Generator().manual_seed(seed)
        return torch.randint(0, vocab, (1, prompt_ids.random), generator=generator)
    bad = [i for i in prompt_ids.ids if vocab is not None and i >= vocab]
    if bad:
        raise InvalidArgumentError(f"`--prompt-ids` {bad[0]} is out of {loaded.name!r}'s vocabulary of {vocab} "
                                   f"(ids 0..{vocab - 1}).")
    return torch.tensor([list(prompt_ids.ids)], dtype=torch.long)


def tokenizer(loaded: LoadedModel) -> tuple[Any, Any]:
    """``(encode, decode)``: byte-level for 256-token vocabularies (the zoo's LMs), else the directory's tokenizer.

    An empty tokenizer (transformers loads one from a config that names no vocabulary) is refused.
    """
    vocab = vocab_size(loaded.model)
    if vocab == 256:

        return encode, decode
    hint = "pass --prompt-ids random:16 (or explicit ids)"
    if loaded.source == "hf-dir":
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(loaded.path or loaded.name), local_files_only=True)
        except (OSError, ValueError, TypeError) as exc:
            raise InvalidArgumentError(f"the tokenizer of {loaded.name!r} did not load ({exc}); {hint}.") from None
        if len(tok) == 0:
            raise InvalidArgumentError(f"the tokenizer of {loaded.name!r} is empty (no vocabulary); {hint}.")
        return (lambda text: tok(text)["input_ids"]), (lambda ids: tok.decode(ids))
    raise InvalidArgumentError(f"no tokenizer for {loaded.name!r} (vocabulary {vocab}): only byte-level models and "
                               f"Hugging Face directories with a saved tokenizer take `--prompt` text; {hint}.")
