"""A policy folder is data: a crafted pickle payload in any of its files is never executed."""
from __future__ import annotations

import base64
import io
import json
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest

from agents.policy_convert import convert
from agents.policy_io import PolicyError, load_policy, read_meta
from agents.ppo import PPOSettings, train
from autosurgeon.cli import main

DEVICE = "h100-80gb"


class _Payload:
    """Unpickling this creates ``marker`` (``open(marker, "w")``): proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: D105
        return (open, (self.marker, "w"))


def _sb3_zip(path: Path, marker: Path) -> None:
    """A policy.zip as SB3 writes it, whose ``data`` entry unpickles the payload (SB3's ``:serialized:``)."""
    blob = base64.b64encode(pickle.dumps(_Payload(marker))).decode()
    data = {"policy_class": {":type:": "<class 'type'>", ":serialized:": blob}}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("data", json.dumps(data))
        zf.writestr("policy.pth", pickle.dumps(_Payload(marker)))
        zf.writestr("_stable_baselines3_version", "2.9.2")
    path.write_bytes(buf.getvalue())


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data-policy") / "p"
    train(device=DEVICE, models=["digits-cnn"], timesteps=32, out=out, n_envs=1,
          settings=PPOSettings(n_steps=32, batch_size=32, n_epochs=1), hv_every=10_000, checkpoint_every=32)
    return out


def test_a_pickle_payload_in_a_policy_folder_never_runs(policy: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "PWNED"
    # 1. An old-style folder: policy.json + a crafted policy.zip only.
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(policy / "policy.json", old / "policy.json")
    _sb3_zip(old / "policy.zip", marker)
    with pytest.raises(PolicyError, match=r"policy.zip, a pickled policy.*never loaded.*retrain it.*"
                                          r"python -m agents.policy_convert .* --trust-pickle"):
        load_policy(old)
    assert main(["apply", "--policy", str(old), "--model", "digits-cnn", "--device", DEVICE,
                 "--out", str(tmp_path / "plan.json")]) == 2
    err = capsys.readouterr().err
    assert "never loaded" in err and len(err.strip().splitlines()) == 1
    # 2. The payload beside a valid policy, and in place of its weights and of a checkpoint's tensors.
    mixed = tmp_path / "mixed"
    shutil.copytree(policy, mixed)
    _sb3_zip(mixed / "policy.zip", marker)
    load_policy(mixed)  # loads the safetensors; the zip beside it is ignored
    (mixed / "policy.safetensors").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(PolicyError, match="policy.safetensors is not a readable safetensors file"):
        load_policy(mixed)
    ckpt = next((mixed / "checkpoints").iterdir())
    (ckpt / "state.safetensors").write_bytes(pickle.dumps(_Payload(marker)))
    from autosurgeon.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="no readable checkpoint"):
        train(device=DEVICE, models=["digits-cnn"], timesteps=64, out=mixed, resume=True, n_envs=1,
              settings=PPOSettings(n_steps=32, batch_size=32, n_epochs=1), hv_every=10_000, checkpoint_every=32)
    # 3. The demo does not pick a policy up from the current directory.
    from experiments.demo_flow import DemoSettings, _policy_dir

    assert _policy_dir(DemoSettings(), "gpu-sm90") is None
    assert not marker.exists(), "a pickle payload in a policy folder was executed"
    # The payload is live: the explicit opt-in does unpickle it (so the assertions above could fail).
    with pytest.raises(PolicyError, match="--trust-pickle"):
        convert(old)
    with pytest.raises(Exception):
        convert(old, trust_pickle=True)
    assert marker.exists()


def test_truncated_or_mismatched_weights_are_refused(policy: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(policy, bad)
    data = (bad / "policy.safetensors").read_bytes()
    (bad / "policy.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(PolicyError, match="truncated or corrupt.*retrain the policy"):
        load_policy(bad)
    shutil.copy(policy / "policy.safetensors", bad / "policy.safetensors")
    doc = json.loads((bad / "policy.json").read_text())
    doc["_data"]["network"]["net_arch"] = [32]
    (bad / "policy.json").write_text(json.dumps(doc))
    with pytest.raises(PolicyError, match="does not fit the architecture.*do not belong together"):
        load_policy(bad)
    doc["_data"]["network"]["activation_fn"] = "os.system"
    (bad / "policy.json").write_text(json.dumps(doc))
    with pytest.raises(PolicyError, match="`activation_fn` must be one of Tanh"):
        load_policy(bad)
    (bad / "policy.json").write_text("[" * 100_000)
    with pytest.raises(PolicyError):
        read_meta(bad)
