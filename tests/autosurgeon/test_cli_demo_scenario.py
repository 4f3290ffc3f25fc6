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


def test_streaming_scenario_races_every_row_on_this_machine(tmp_path: object) -> None:
    """The GPU scenario's flow on a CPU (streaming from disk), small: every row raced, quality by the rule."""
    from experiments.demo_streaming import StreamingSettings, run_streaming_demo

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: demo_gpu.sh runs the scenario at full size")
    result = run_streaming_demo(StreamingSettings(model="tiny-llama-test", budget="cpu=40%", tokens=3,
                                                  quality_model="tiny-llama-test", quality_samples=2))
    rows = {r.label: r for r in result.comparison.rows}
    assert {"unmodified", "accelerate offload", "uniform int8"} <= set(rows), sorted(rows)
    # this 2-block test model cannot stream its way under 40 %: the row says why instead of vanishing
    assert "streamed float32" in rows or any(n.startswith("streamed float32 not raced: does not fit")
                                             for n in result.notes)
    assert not rows["unmodified"].fits and result.tiers == ("cpu",)
    assert rows["accelerate offload"].tier_bytes["disk"] > 0
    assert rows["accelerate offload"].quality_loss == rows["unmodified"].quality_loss  # same weights, same rule
    assert "measured on tiny-llama-test (trained) under the row's precision rule" in str(rows["uniform int8"].quality_method)
    assert result.chosen is not None and result.chosen.fits and result.chosen.kind == "plan"
    assert len(result.standings) == len(rows) - 1
    assert result.to_dict()["comparison"]["rows"]
