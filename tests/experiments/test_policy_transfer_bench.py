"""The policy-transfer benchmark's bookkeeping: the non-dominated count, a policy trained earlier, the table."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from agents.policy_io import PolicyError
from experiments.benchmarks.policy_transfer import main, nondominated_count, render, trained_record


def test_nondominated_count_counts_distinct_points_no_other_dominates() -> None:
    pts = [[1.0, 0.3, 1.0], [1.0, 0.3, 1.0], [1.2, 0.2, 1.2], [1.0, 1.0, 1.0], [1.5, 0.1, 1.5]]
    assert nondominated_count(pts) == 3  # the duplicate counts once; (1, 1, 1) is dominated by (1, 0.3, 1)
    assert nondominated_count([[1.0, 1.0, 1.0]]) == 1


def _row(model: str, device: str) -> dict:
    return {"model": model, "device": device, "hv_policy": 4.0, "hv_candidates": 4.1, "hv_apply_front": 4.2,
            "hv_nsga2_mean": 4.0, "hv_best_family": 3.5, "best_family": "uniform", "distinct": 3,
            "distinct_full_budget": 1, "distinct_no_fill": 2, "hv_apply_front_no_fill": 4.1, "policy_objectives": [[1.0, 0.3, 1.0], [1.2, 0.2, 1.2], [1.0, 1.0, 1.0]],
            "policy_evaluations": 4, "baseline_evaluations": 7, "apply_front_origins": ["policy", "policy+fill", "baseline:x"],
            "nsga2_front_size": [10, 12, 9]}


def test_render_and_merge_report_distinct_non_dominated_and_full_budget_plans(tmp_path: Path) -> None:
    meta = {"command": "c", "machine": "m", "load_before": [1.0], "load_after": [1.0], "seeds": [0], "budgets": 6,
            "training": [{"device": "h100-80gb", "models": ["a"], "timesteps": 10, "seconds": 1.0, "seed": 0,
                          "reward": {}}]}
    text = render([_row("unseen-gpt2", "h100-80gb")], meta)
    assert "| 3 (2; 2; 1) |" in text and "| 1.050 |" in text  # apply front / NSGA-II 4.2 / 4.0
    assert "| 1.025 |" in text and "1 policy, 1 policy+fill, 1 baseline" in text  # without the fill 4.1 / 4.0
    part = tmp_path / "a.json"
    part.write_text(json.dumps({"meta": meta, "rows": [_row("unseen-gpt2", "h100-80gb"),
                                                       {"model": "unseen-vit", "device": "h100-80gb",
                                                        "error": "ValueError: x"}]}))
    assert main(["--merge", str(part), "--out", str(tmp_path / "merged")]) == 0
    md = (tmp_path / "merged.md").read_text()
    assert "| 3 (2; 2; 1) |" in md and "unseen-vit on h100-80gb: ValueError: x" in md


def test_a_policy_trained_earlier_is_recorded_from_its_policy_json(tmp_path: Path) -> None:
    from agents.ppo import PPOSettings, train

    train(device="h100-80gb", models=["tiny-llama-test"], timesteps=64, out=tmp_path / "policy-h100-80gb", n_envs=1,
          settings=PPOSettings(n_steps=64, batch_size=64, n_epochs=1), hv_every=10_000, checkpoint_every=10_000)
    rec = trained_record("h100-80gb", tmp_path / "policy-h100-80gb")
    assert rec["device"] == "h100-80gb" and rec["models"] == ["tiny-llama-test"] and rec["timesteps"] >= 64
    assert rec["seed"] == 0 and rec["seconds"] > 0


def test_policies_folder_without_the_device_policy_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(PolicyError):
        trained_record("h100-80gb", tmp_path / "policy-h100-80gb")
