"""`autosurgeon demo` picks its scenario: streaming where CUDA is visible and no model is named, else the search."""
from __future__ import annotations

import argparse

import pytest
import torch

from autosurgeon.cli import main
from autosurgeon.cli.demo import _scenario


def _args(scenario: str = "auto", model: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(scenario=scenario, model=model)


def test_auto_is_streaming_on_cuda_unless_a_model_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _scenario(_args()) == "streaming"
    assert _scenario(_args(model="tiny-llama")) == "search"
    assert _scenario(_args("search")) == "search"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _scenario(_args()) == "search"
    assert _scenario(_args("streaming")) == "streaming"


def test_streaming_without_a_gpu_is_one_line_naming_the_fix(capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the scenario runs (experiments/benchmarks/demo_gpu.sh)")
    assert main(["demo", "--scenario", "streaming"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a CUDA GPU" in err[0] and "autosurgeon demo" in err[0]
