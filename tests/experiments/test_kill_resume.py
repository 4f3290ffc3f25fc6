"""kill -9 at random points and resume: sweep and training end equal to uninterrupted runs (slow: subprocesses)."""
from __future__ import annotations

from pathlib import Path

import pytest

from experiments.benchmarks.kill_resume import run_kind


@pytest.mark.slow
@pytest.mark.parametrize("kind,size", [("sweep", 40), ("train", 128)])
def test_killed_and_resumed_equals_uninterrupted(kind: str, size: int, tmp_path: Path) -> None:
    # Children are forked from this test process, sharing the session's AUTOSURGEON_CACHE (conftest).
    result = run_kind(kind, tmp_path, trials=2, size=size, seed=7, kills=2)
    assert result["equal"] == result["n"] == 2, result["trials"]  # equal includes: no temp file left at the end
