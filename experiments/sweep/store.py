"""RunStore: a sweep's folder ``runs/NAME/``, written as results arrive so a crash loses no finished evaluation.

Files: ``config.json`` (the SweepConfig), ``reference.json`` (the unmodified model's metrics: the
normaliser), ``evals.jsonl`` (one record per distinct evaluated plan, appended and flushed to disk the
moment it is measured), ``eval_cache.jsonl`` (the evaluator's own ``EvaluationCache``: a second net for a
crash between measuring and recording), ``baselines.json``, ``summary.json``.

A record: ``{"eval", "algo", "generation", "x", "plan", "metrics", "objectives", "feasible"}``; ``x`` is the
(repaired) vector in the sweep's SearchSpace. A torn last line (killed mid-write) is skipped on load.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from autosurgeon._logging import get_logger
from autosurgeon.errors import InvalidArgumentError

logger = get_logger(__name__)

EVALS = "evals.jsonl"
CONFIG = "config.json"
REFERENCE = "reference.json"
SUMMARY = "summary.json"
BASELINES = "baselines.json"
EVAL_CACHE = "eval_cache.jsonl"


def _default(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def dumps(obj: Any, *, indent: int | None = None) -> str:
    return json.dumps(obj, default=_default, indent=indent)


class RunStore:
    """The files of one run folder (see the module docstring).

    Args:
        run_dir: the folder (created on :meth:`open`).
        fsync: force each record to disk (survives a power cut, not only a crash); a few ms per record.
    """

    def __init__(self, run_dir: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.dir = Path(run_dir)
        self.fsync = fsync

    def path(self, name: str) -> Path:
        return self.dir / name

    def is_empty(self) -> bool:
        return not self.dir.exists() or not any(p.name != ".lock" for p in self.dir.iterdir())  # runfolder's lock

    def open(self, *, resume: bool) -> None:
        """Create the folder; refuse a non-empty one unless resuming, and a missing/foreign one when resuming."""
        if self.dir.exists() and not self.dir.is_dir():
            raise InvalidArgumentError(f"`--out` {str(self.dir)!r} is a file; give a folder such as runs/NAME.")
        if resume:
            if not self.path(CONFIG).is_file():
                raise InvalidArgumentError(f"`--resume`: {str(self.dir)!r} holds no sweep to continue ({CONFIG} "
                                           "missing: none was started, or it was stopped during set-up before "
                                           "recording anything); start it anew with --overwrite instead of --resume.")
        elif not self.is_empty():
            raise InvalidArgumentError(f"`--out` {str(self.dir)!r} is not empty; pass --resume to continue that "
                                       "sweep, or choose another folder (a run is never overwritten).")
        self.dir.mkdir(parents=True, exist_ok=True)

    # ---- json files
    def write_json(self, name: str, obj: Any) -> Path:
        path = self.path(name)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(dumps(obj, indent=2) + "\n")
            os.replace(tmp, path)  # atomic: a crash leaves the old file or the new one, never half
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def read_json(self, name: str) -> Any:
        path = self.path(name)
        if not path.is_file():
            raise InvalidArgumentError(f"{str(path)!r} is missing; is {str(self.dir)!r} a sweep run folder "
                                       "(autosurgeon sweep --out ...)?")
        try:
            return json.loads(path.read_text())
        except ValueError as exc:
            raise InvalidArgumentError(f"{str(path)!r} is not valid JSON ({exc}).") from None
        except RecursionError:
            raise InvalidArgumentError(f"{str(path)!r} is JSON nested too deeply to be a run's file.") from None

    # ---- records
    def append(self, record: Mapping[str, Any]) -> None:
        with self.path(EVALS).open("a") as fh:
            fh.write(dumps(record) + "\n")
            fh.flush()
            if self.fsync:
                os.fsync(fh.fileno())

    def records(self) -> list[dict[str, Any]]:
        path = self.path(EVALS)
        if not path.is_file():
            return []
        out = []
        lines = path.read_bytes().splitlines()
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
                record = None
            if not (isinstance(record, dict) and isinstance(record.get("x"), list)):
                logger.warning("%s line %d unreadable (torn write?); skipped", path, n)
                continue
            out.append(record)
        return out

    def rewrite_records(self, records: list[Mapping[str, Any]]) -> None:
        """Replace ``evals.jsonl`` (used on resume to drop a torn line before appending)."""
        path = self.path(EVALS)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text("".join(dumps(r) + "\n" for r in records))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


__all__ = ["BASELINES", "CONFIG", "EVALS", "EVAL_CACHE", "REFERENCE", "SUMMARY", "RunStore", "dumps"]
