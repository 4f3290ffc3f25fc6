"""The preference probe on a tiny trained policy: plans per preference, probability spread, entropy."""
from __future__ import annotations

import json

from agents.ppo import PPOSettings, train
from experiments.benchmarks.policy_preference import main


def test_probe_reports_plans_spread_and_entropy(tmp_path) -> None:
    out = tmp_path / "policy"
    train(device="h100-80gb", models=["digits-cnn"], timesteps=64, out=out, n_envs=1, hv_every=10**9,
          settings=PPOSettings(n_steps=32, batch_size=32, n_epochs=1))
    assert main(["--policy", str(out), "--device", "h100-80gb", "--models", "digits-cnn", "--front", "4",
                 "--out", str(tmp_path / "p.json")]) == 0
    data = json.loads((tmp_path / "p.json").read_text())
    row = data["rows"][0]
    assert len(row["plans"]) == 4 and 1 <= row["distinct_plans"] <= 4 and row["steps"] > 0
    assert 0.0 <= row["prob_spread_median"] <= row["prob_spread_max"] <= 1.0 and row["entropy_min"] >= 0.0
    assert data["policy"]["reward"]["shaping"] is False and data["policy"]["reward"]["scale"] == "raw"  # defaults
