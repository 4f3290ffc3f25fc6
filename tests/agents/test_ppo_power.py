"""Training and applying a policy under a power cap (tiny budgets, the real path): the cap and mode reach
policy.json, TensorBoard HParams and the apply result; `--power-cap` 0 or negative exits 2."""
from __future__ import annotations

from pathlib import Path

import pytest

from agents.apply import apply_policy, write_front
from agents.policy_io import read_meta
from agents.ppo import PPOSettings, train
from autosurgeon import cli

SMALL = PPOSettings(n_steps=64, batch_size=64, n_epochs=1)
ORIN = "jetson-agx-orin-64gb"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("policy15")
    result = train(device=ORIN, models=["tiny-llama-test"], timesteps=64, out=out, evaluator="analytic", seed=0,
                   n_envs=1, settings=SMALL, checkpoint_every=10_000, hv_every=10_000, hv_preferences=2,
                   power_cap_w=15)
    assert result.timesteps == 64
    return out


def test_policy_records_the_cap_and_mode(trained: Path) -> None:
    meta = read_meta(trained)
    assert meta["power"]["power_cap_w"] == 15 and meta["power"]["power_mode"] == "15W" and meta["power"]["derated"]
    assert meta["power_mode"] == "15W"
    assert all(h.get("power_violation_rate", 0.0) == 0.0 for h in meta["history"])  # within the mode's envelope
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = [EventAccumulator(str(p.parent)).Reload() for p in trained.rglob("events.out.tfevents.*")]
    hparams = [e.PluginTagToContent("hparams") for e in events]
    assert any("_hparams_/session_start_info" in h for h in hparams)
    raw = b"".join(h["_hparams_/session_start_info"] for h in hparams if "_hparams_/session_start_info" in h)
    assert b"power_mode" in raw and b"15W" in raw


def test_apply_under_a_cap(trained: Path, tmp_path: Path) -> None:
    result = apply_policy(trained, "tiny-llama-test", device=ORIN, power_cap_w=20, front=2)
    power = result.power
    assert power["power_mode"] == "15W" and power["within_cap"] and power["plan_power_w"] <= 15.0
    assert result.metrics.energy_j / result.metrics.latency_s == pytest.approx(power["plan_power_w"])
    path = write_front(tmp_path / "f.json", result.front, result.space, power=power)
    assert '"power_mode": "15W"' in path.read_text()
    assert apply_policy(trained, "tiny-llama-test", device=ORIN).power is None


@pytest.mark.parametrize("command", ["train", "apply"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_cli_refuses_a_cap_that_is_not_positive(command, value, trained, tmp_path, monkeypatch, capsys) -> None:
    if command not in cli.COMMANDS:
        monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, command))
    argv = (["train", "--models", "tiny-llama-test", "--timesteps", "8"] if command == "train"
            else ["apply", "--policy", str(trained), "--model", "tiny-llama-test"])
    code = cli.main([*argv, "--device", ORIN, f"--power-cap={value}", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "`--power-cap` must be a power in watts > 0" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
