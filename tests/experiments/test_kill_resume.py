"""kill -9 at random points and resume: sweep and training end equal to uninterrupted runs (slow: subprocesses)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from experiments.benchmarks.kill_resume import run_kind


@pytest.mark.slow
@pytest.mark.parametrize("kind,size", [("sweep", 40), ("train", 128)])
def test_killed_and_resumed_equals_uninterrupted(kind: str, size: int, tmp_path: Path) -> None:
    from experiments.benchmarks.kill_resume import _env

    env = _env(Path(os.environ.get("AUTOSURGEON_CACHE", tmp_path / "cache")))
    result = run_kind(kind, tmp_path, env, trials=2, size=size, seed=7, kills=2)
    assert result["equal"] == result["n"] == 2, result["trials"]  # equal includes: no temp file left at the end
