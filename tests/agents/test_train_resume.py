"""Training checkpoints are data and resume bit for bit: weights, optimizer, RNGs, envs and history."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from agents.policy_io import load_policy, read_meta
from agents.ppo import PPOSettings, latest_checkpoint, train
from agents.train_state import checkpoints
from autosurgeon.errors import InvalidArgumentError

SMALL = PPOSettings(n_steps=32, batch_size=32, n_epochs=1)
ARGS = dict(device="h100-80gb", models=["digits-cnn"], evaluator="analytic", seed=3, n_envs=2, settings=SMALL,
            checkpoint_every=64, hv_every=128, hv_preferences=2)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "policy.safetensors"))


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "p"
    train(timesteps=256, out=out, **ARGS)
    return out


def test_stopped_and_resumed_equals_uninterrupted(straight: Path, tmp_path: Path) -> None:
    out = tmp_path / "p"
    train(timesteps=128, out=out, **ARGS)
    train(timesteps=256, out=out, resume=True, **ARGS)
    a, b = _weights(straight), _weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha, hb = read_meta(straight)["history"], read_meta(out)["history"]
    assert len(ha) == len(hb) == 256 // 64 and ha == hb  # the full history, not the resumed part only
    assert read_meta(straight)["obs_stats"] == read_meta(out)["obs_stats"]


def test_resume_from_a_middle_checkpoint_after_a_kill(straight: Path, tmp_path: Path) -> None:
    # A kill after the 128-step checkpoint: later checkpoints and the policy never got written.
    out = tmp_path / "p"
    shutil.copytree(straight, out)
    for step, path in checkpoints(out):
        if step > 128:
            shutil.rmtree(path)
    (out / "policy.safetensors").unlink()
    (out / "policy.json").unlink()
    train(timesteps=256, out=out, resume=True, **ARGS)
    a, b = _weights(straight), _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_corrupt_newest_checkpoint_falls_back(straight: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
                                              ) -> None:
    out = tmp_path / "p"
    shutil.copytree(straight, out)
    newest = latest_checkpoint(out)
    assert newest.name == "step_256"
    data = (newest / "state.safetensors").read_bytes()
    (newest / "state.safetensors").write_bytes(data[: len(data) // 2])  # torn
    (out / "policy.safetensors").unlink()
    with caplog.at_level("WARNING"):
        train(timesteps=256, out=out, resume=True, **ARGS)
    assert "skipping checkpoint step_256" in caplog.text
    a, b = _weights(straight), _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_other_settings_and_out_is_never_silently_replaced(straight: Path, tmp_path: Path) -> None:
    out = tmp_path / "p"
    shutil.copytree(straight, out)
    with pytest.raises(InvalidArgumentError, match=r"`--resume`: seed 4 differs from the checkpoint's 3"):
        train(timesteps=256, out=out, resume=True, **{**ARGS, "seed": 4})
    with pytest.raises(InvalidArgumentError, match=r"already holds a policy.*--resume.*--overwrite"):
        train(timesteps=64, out=out, **ARGS)
    assert torch.equal(_weights(out)["action_net.weight"], _weights(straight)["action_net.weight"])
    train(timesteps=64, out=out, overwrite=True, **ARGS)
    assert [s for s, _ in checkpoints(out)] == [64]  # the old run's checkpoints went with --overwrite


def test_checkpoints_and_policy_are_data(straight: Path) -> None:
    ckpt = latest_checkpoint(straight)
    assert sorted(p.name for p in ckpt.iterdir()) == ["state.json", "state.safetensors"]
    state = json.loads((ckpt / "state.json").read_text())["_data"]
    assert state["num_timesteps"] == 256 and state["run"]["seed"] == 3
    assert not list(straight.rglob("*.zip")) and not list(straight.rglob("*.pkl"))
    model, meta = load_policy(straight)
    assert meta["network"]["net_arch"] == [64, 64] and meta["network"]["activation_fn"] == "Tanh"
