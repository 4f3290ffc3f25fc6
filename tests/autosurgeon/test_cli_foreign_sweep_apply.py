"""`sweep` and `apply` with default flags on an encoder and on a causal-LM directory without a tokenizer (issue 13's
last "Done when" bullet; `plan` and `evaluate` are in test_cli_foreign_models.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli_foreign_models import _bert, _neox

from agents.ppo import PPOSettings, train
from autosurgeon import cli
from autosurgeon.plan import Plan


@pytest.fixture(scope="module")
def local_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local-policy")
    train(device="local", models=["tiny-llama-test"], timesteps=64, out=out, n_envs=1,
          settings=PPOSettings(n_steps=64, batch_size=64, n_epochs=1), hv_every=10_000, checkpoint_every=10_000)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("make", [_bert, _neox], ids=["encoder", "causal-lm-without-tokenizer"])
def test_sweep_and_apply_with_default_flags(make, local_policy: Path, tmp_path: Path) -> None:
    """The session's test cache (conftest) holds the local profile the policy was trained on."""
    model = make(tmp_path / "model")
    run = tmp_path / "run"
    assert cli.main(["sweep", str(model), "--out", str(run), "--budget-evals", "12"]) == 0
    assert json.loads((run / "summary.json").read_text())
    out = tmp_path / "plan.json"
    assert cli.main(["apply", "--policy", str(local_policy), "--model", str(model), "--out", str(out)]) == 0
    assert Plan.load(out).metadata["proposer"] == "agents.apply"
