"""`train --workers N`: the envs' finished plans measured on Dask worker processes, and the same policy, history
and observation statistics as a serial run for the same seed (issue 18)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("distributed")

from agents.policy_io import read_meta  # noqa: E402
from agents.ppo import PPOSettings, train  # noqa: E402
from experiments.sweep.cluster import sweep_cluster  # noqa: E402

SMALL = PPOSettings(n_steps=32, batch_size=32, n_epochs=1)
ARGS = dict(device="h100-80gb", models=["digits-cnn"], evaluator="analytic", seed=3, n_envs=2, settings=SMALL,
            checkpoint_every=64, hv_every=128, hv_preferences=2)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "policy.safetensors"))


@pytest.mark.slow
def test_training_on_two_worker_processes_equals_serial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import envs.context

    # Each run builds its contexts (and evaluator caches) afresh: nothing measured by one is known to the other.
    monkeypatch.setattr(envs.context, "_CACHE", {})
    serial = train(timesteps=128, out=tmp_path / "serial", **ARGS)
    monkeypatch.setattr(envs.context, "_CACHE", {})
    with sweep_cluster(workers=2, threads=1) as cluster:
        spread = train(timesteps=128, out=tmp_path / "dask", cluster=cluster, **ARGS)
    assert serial.cluster is None
    (done,) = spread.cluster.values()  # one model context
    assert done["evaluated"] > 0 and sum(done["by_worker"].values()) == done["evaluated"]
    assert all(not address.startswith("inproc") for address in done["by_worker"])  # other processes measured
    a, b = _weights(tmp_path / "serial"), _weights(tmp_path / "dask")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = read_meta(tmp_path / "serial"), read_meta(tmp_path / "dask")
    assert sa["history"] == sb["history"] and sa["obs_stats"] == sb["obs_stats"]


def test_cli_refuses_bad_cluster_flags_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from autosurgeon.cli import main

    out = tmp_path / "p"
    assert main(["train", "--device", "h100-80gb", "--models", "digits-cnn", "--timesteps", "64", "--out", str(out),
                 "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "give `--workers` (2) or `--scheduler`" in err and not out.exists()
