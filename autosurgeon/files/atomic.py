"""Output files written whole or not at all, at paths checked before any work is done.

:func:`check_out_file` refuses, in one line naming the argument, an ``--out`` that is empty, a folder, or
under a file, before a command spends minutes computing what it cannot write. :func:`write_text_atomic`
writes a sibling temp file (``.NAME.<pid>.tmp``) and renames it into place; the temp file is removed on
every exit path, so a failed or interrupted write leaves the old file or the new one and nothing else.
"""
from __future__ import annotations

import os
from pathlib import Path

from autosurgeon.errors import InvalidArgumentError


def check_out_file(path: str | os.PathLike[str] | None, *, argument: str = "--out") -> Path | None:
    """``path`` as a Path (None stays None); InvalidArgumentError for ``''``, a folder, or a parent that is a file."""
    if path is None:
        return None
    text = os.fspath(path)
    if not text.strip():
        raise InvalidArgumentError(f"`{argument}` must name a file, got {text!r}; give e.g. plan.json.")
    p = Path(text)
    if p.is_dir():
        raise InvalidArgumentError(f"`{argument}` {text!r} is a folder; give a file path such as "
                                   f"{str(p / 'out.json')!r}.")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InvalidArgumentError(f"`{argument}` {text!r}: {str(parent)!r} is a file, not a folder; give a "
                                           "path under a folder.")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise InvalidArgumentError(f"`{argument}` {text!r}: {str(parent)!r} is not writable; choose a "
                                           "writable folder.")
            break
    return p


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` through a sibling temp file and a rename (module docstring); creates folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


__all__ = ["check_out_file", "write_text_atomic"]
