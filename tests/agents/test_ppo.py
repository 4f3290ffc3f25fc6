"""PPO training through the real evaluator path: a few hundred steps, checkpoints, resume, policy folder."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from agents.policy_io import POLICY_TYPE, device_class, read_meta
from agents.ppo import PPOSettings, latest_checkpoint, train
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.hardware.resolve import resolve_profile
from envs.observation import ObservationLayout

SMALL = PPOSettings(n_steps=64, batch_size=64, n_epochs=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("policy")
    result = train(device="h100-80gb", models=["tiny-llama-test", "digits-cnn"], timesteps=256, out=out,
                   evaluator="analytic", seed=0, n_envs=2, settings=SMALL, checkpoint_every=128, hv_every=128,
                   hv_preferences=3)
    assert result.timesteps == 256
    return out


def test_training_writes_policy_checkpoints_and_logs(trained: Path) -> None:
    assert (trained / "policy.safetensors").is_file() and not (trained / "policy.zip").exists()
    meta = read_meta(trained)
    assert meta["device_class"] == "gpu-sm90" and meta["models"] == ["tiny-llama-test", "digits-cnn"]
    assert meta["layout"] == ObservationLayout().to_dict() and meta["knobs"] == ["precision", "placement"]
    assert meta["device_fingerprint"] == resolve_profile("h100-80gb").fingerprint
    assert json.loads((trained / "policy.json").read_text())["_type"] == POLICY_TYPE
    stats = meta["obs_stats"]
    assert stats["count"] >= 256 and len(stats["mean"]) == ObservationLayout().size
    history = meta["history"]
    assert history and all("budget_violation_rate" in h for h in history if "episodes" in h)
    hv = [h for h in history if "hv/tiny-llama-test" in h]
    assert hv and all(0.0 <= h["hv/tiny-llama-test"] <= 8.0 for h in hv)
    assert latest_checkpoint(trained).name == "step_256"
    events = list((trained / "tb").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"


def test_resume_continues_to_the_total(trained: Path) -> None:
    result = train(device="h100-80gb", models=["tiny-llama-test", "digits-cnn"], timesteps=384, out=trained,
                   resume=True, n_envs=2, settings=SMALL, checkpoint_every=128, hv_every=10_000)
    assert result.timesteps == 384
    assert latest_checkpoint(trained).name == "step_384"


def test_bad_training_inputs(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="no checkpoint under"):
        train(models=["digits-cnn"], timesteps=10, out=tmp_path / "none", resume=True, device="h100-80gb")
    with pytest.raises(InvalidArgumentError, match="`--models` must name at least one model"):
        train(models=[" "], timesteps=10, out=tmp_path, device="h100-80gb")
    with pytest.raises(InvalidArgumentError, match="`--timesteps` must be >= 1, got 0"):
        train(models=["digits-cnn"], timesteps=0, out=tmp_path, device="h100-80gb")


def test_device_class_scheme() -> None:
    assert device_class(resolve_profile("h100-80gb")) == "gpu-sm90"
    assert device_class(resolve_profile("jetson-orin-nano-8gb")) == "gpu-sm87"


def test_runtime_checks_during_training(tmp_path: Path) -> None:
    # The policy's equal-preference plan applied and run end to end (tiny-llama-test trains in seconds).
    result = train(device="local", models=["tiny-llama-test"], timesteps=64, out=tmp_path, n_envs=1,
                   settings=PPOSettings(n_steps=64, batch_size=64, n_epochs=1), hv_every=10**6,
                   checkpoint_every=10**6, runtime_every=1)
    rows = [h for h in result.history if "runtime/tiny-llama-test/latency_ratio" in h]
    assert rows and rows[0]["runtime/tiny-llama-test/latency_ratio"] > 0
    assert rows[0]["runtime/tiny-llama-test/latency_error"] > -1.0
    with pytest.raises(InvalidArgumentError, match="not this machine's profile"):
        train(device="h100-80gb", models=["tiny-llama-test"], timesteps=64, out=tmp_path / "x", runtime_every=1)
