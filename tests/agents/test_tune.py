"""Optuna tuning: trials run through the real env, the SQLite study resumes, bad inputs are refused."""
from __future__ import annotations

from pathlib import Path

import pytest

from agents.tune import settings_from_params, tune
from autosurgeon.errors import InvalidArgumentError


def test_tune_runs_and_resumes(tmp_path: Path) -> None:
    kw = dict(device="h100-80gb", models=["digits-cnn"], timesteps=64, out=tmp_path, n_envs=1, hv_preferences=2)
    first = tune(trials=1, **kw)
    assert first.finished == 1 and (tmp_path / "study.db").is_file() and (tmp_path / "best.json").is_file()
    second = tune(trials=2, **kw)  # same storage: one more trial, not two
    assert second.finished == 2
    if second.best_params:
        settings = settings_from_params(second.best_params)
        assert settings.net_arch[0] == second.best_params["width"]


def test_tune_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="`--trials` must be >= 1, got 0"):
        tune(models=["digits-cnn"], trials=0, timesteps=64, out=tmp_path, device="h100-80gb")
