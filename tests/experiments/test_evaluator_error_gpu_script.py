"""The GPU column's script (experiments/benchmarks/evaluator_error_gpu.sh): its CPU path, without a GPU."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "benchmarks" / "evaluator_error_gpu.sh"


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable,
            "AUTOSURGEON_CACHE": str(tmp_path / "cache"), **env}
    return subprocess.run(["bash", str(SCRIPT)], cwd=SCRIPT.parents[2], env=full, capture_output=True, text=True,
                          check=False,
                          timeout=120)


def test_unknown_part_is_refused_naming_the_choices(tmp_path):
    out = _run(tmp_path, PART="3")
    assert out.returncode == 2
    assert "PART must be 1, 2 or all, got '3'" in out.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the script measures for minutes")
def test_without_a_gpu_it_records_the_machine_and_stops(tmp_path):
    out = _run(tmp_path, PART="2")
    assert out.returncode != 0
    assert "no CUDA GPU visible" in out.stderr
    machine = (tmp_path / "machine_part2.txt").read_text()
    assert "torch" in machine and "device NONE" in machine
