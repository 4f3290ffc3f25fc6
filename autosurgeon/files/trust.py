"""What may run code: a ``module:factory`` MODEL imports a module and calls a function — it runs code.

It is accepted as typed on the command line (the user ran it), but a spec read from a file — a sweep
``--config``, a run folder's ``config.json`` on ``--resume`` — is data someone else may have written, so it
is refused unless the user opts in with ``--allow-code``. Zoo names and model directories never run code
(a directory's weights are read as safetensors).
"""
from __future__ import annotations

import os
from pathlib import Path

from autosurgeon.errors import InvalidArgumentError
from autosurgeon.models.registry import ZOO


def is_code_spec(spec: str | os.PathLike[str]) -> bool:
    """Whether ``spec`` would load as ``module:factory`` (not a zoo name, not an existing path)."""

    text = os.fspath(spec)
    return ":" in text and text not in ZOO and not Path(text).expanduser().exists()


def check_code_spec(spec: str | os.PathLike[str], *, source: str, allow: bool) -> None:
    """Refuse a ``module:factory`` ``spec`` read from ``source`` (a file) unless ``allow`` (``--allow-code``)."""
    if allow or not is_code_spec(spec):
        return
    raise InvalidArgumentError(
        f"MODEL {os.fspath(spec)!r} from {source} is 'module:factory', which imports and runs code; a file may "
        "not name one unless you pass --allow-code (only for files you trust), or give MODEL on the command line.")


__all__ = ["check_code_spec", "is_code_spec"]
