"""Evaluation results by key: the cache every evaluator holds (memory, optionally a JSON lines file)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from autosurgeon._logging import get_logger
from autosurgeon.metrics import Metrics
from autosurgeon.plan import Plan

logger = get_logger(__name__)



def plan_hash(plan: Plan) -> str:
    """sha256 (16 hex) of a plan's decisions (rules, default and session; metadata and fingerprints left out).

    A plan without session decisions hashes as it did before session knobs existed."""
    data = plan.to_dict()["_data"]
    decisions = {"default": data["default"], "rules": data["rules"]}
    if plan.session:
        decisions["session"] = dict(plan.session)
    blob = json.dumps(decisions, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class EvaluationCache:
    """Metrics by key, in memory and optionally in a JSON lines file (one ``{"key", "metrics"}`` per line).

    Args:
        path: a ``.jsonl`` file to load on creation and append every new result to (None: memory only).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._data: dict[str, Metrics] = {}
        if self.path is not None and self.path.is_file():
            for n, line in enumerate(self.path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    self._data[row["key"]] = Metrics.from_dict(row["metrics"])
                except (ValueError, KeyError, TypeError) as exc:  # a torn last line after a crash
                    logger.warning("%s line %d unreadable (%s); skipped", self.path, n, exc)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def get(self, key: str) -> Metrics | None:
        return self._data.get(key)

    def put(self, key: str, metrics: Metrics) -> None:
        self._data[key] = metrics
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as fh:
                fh.write(json.dumps({"key": key, "metrics": metrics.to_dict()}, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
