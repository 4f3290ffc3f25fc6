"""Property-based tests of the folder loaders: policy folders, training checkpoints, sweep run folders and model
directories holding arbitrary bytes either load or raise a one-line user error — never a traceback, never
executing anything — and a command that fails inside its run folder leaves no partial write behind.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autosurgeon.errors import AutoSurgeonError
from runtime.errors import JalapenoError

USER_ERRORS = (AutoSurgeonError, JalapenoError)
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                          HealthCheck.function_scoped_fixture])

blobs = st.one_of(st.binary(max_size=300), st.text(max_size=200).map(str.encode),
                  st.sampled_from([b"", b"{}", b"[]", b"null", b"\xff\xfe", b"[" * 50_000,
                                   b'{"_type": "autosurgeon.SurgeryPolicy", "_version": 1, "_data": {}}']))


def _one_line(exc: BaseException) -> None:
    assert str(exc) and "\n" not in str(exc), f"not one line: {str(exc)!r}"


def _tmp() -> Path:
    return Path(tempfile.mkdtemp(prefix="prop-"))


@FAST
@given(meta=blobs, weights=blobs, zip_too=st.booleans())
def test_policy_folders(meta: bytes, weights: bytes, zip_too: bool) -> None:
    from agents.policy_io import load_policy

    folder = _tmp()
    try:
        (folder / "policy.json").write_bytes(meta)
        (folder / "policy.safetensors").write_bytes(weights)
        if zip_too:
            (folder / "policy.zip").write_bytes(weights)
        with pytest.raises(USER_ERRORS) as info:
            load_policy(folder)
        _one_line(info.value)
    finally:
        shutil.rmtree(folder)


@FAST
@given(state=blobs, tensors=blobs)
def test_training_checkpoints(state: bytes, tensors: bytes) -> None:
    from agents.train_state import latest_valid, read_checkpoint

    folder = _tmp()
    try:
        ckpt = folder / "checkpoints" / "step_64"
        ckpt.mkdir(parents=True)
        (ckpt / "state.json").write_bytes(state)
        (ckpt / "state.safetensors").write_bytes(tensors)
        with pytest.raises(USER_ERRORS) as info:
            read_checkpoint(ckpt)
        _one_line(info.value)
        assert latest_valid(folder) is None  # skipped with a warning, not raised
    finally:
        shutil.rmtree(folder)


def _valid_config() -> bytes:
    from experiments.sweep import SweepConfig

    return json.dumps(SweepConfig(model="tiny-llama-test", device="h100-80gb", evaluator="analytic").to_dict()).encode()


@FAST
@given(config=st.one_of(blobs, st.builds(_valid_config)), evals=st.one_of(blobs, st.lists(blobs).map(b"\n".join)),
       reference=st.one_of(blobs, st.just(b'{"metrics": {}}')), summary=st.one_of(st.none(), blobs))
def test_sweep_run_folders(config: bytes, evals: bytes, reference: bytes, summary: bytes) -> None:
    from experiments.sweep import load_run

    folder = _tmp()
    try:
        for name, data in (("config.json", config), ("evals.jsonl", evals), ("reference.json", reference),
                           ("summary.json", summary)):
            if data is not None:
                (folder / name).write_bytes(data)
        try:
            _, records, _, _ = load_run(folder)
        except USER_ERRORS as exc:
            _one_line(exc)
        else:
            assert all(isinstance(r, dict) and "x" in r for r in records)  # torn or foreign lines are skipped
    finally:
        shutil.rmtree(folder)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=st.one_of(blobs, st.dictionaries(st.sampled_from(["model_type", "hidden_size", "num_hidden_layers",
                                                                "architectures", "vocab_size"]),
                                               st.one_of(st.integers(-5, 10**12), st.text(max_size=6), st.none()),
                                               max_size=5).map(lambda d: json.dumps(d).encode())),
       weights=blobs)
def test_model_directories(config: bytes, weights: bytes) -> None:
    from autosurgeon.zoo import load_model

    folder = _tmp()
    try:
        (folder / "config.json").write_bytes(config)
        (folder / "model.safetensors").write_bytes(weights)
        for device in ("meta", "cpu"):
            try:
                load_model(str(folder), device=device)
            except USER_ERRORS as exc:
                _one_line(exc)
    finally:
        shutil.rmtree(folder)


@FAST
@given(names=st.lists(st.sampled_from(["config.json", "space.json", "evals.jsonl", "tb", "reference.json"]),
                      max_size=4, unique=True), fresh=st.booleans(), error=st.sampled_from([ValueError,
                                                                                            KeyboardInterrupt]))
def test_a_failed_command_leaves_no_partial_run_folder(names: list[str], fresh: bool, error: type) -> None:
    from autosurgeon.files.runfolder import run_folder

    root = _tmp()
    out = root / "run"
    if not fresh:
        out.mkdir()
    try:
        with pytest.raises(error):
            with run_folder(out, keep=lambda f: False):
                for name in names:
                    (out / name).write_text("partial")
                (out / f".summary.json.{__import__('os').getpid()}.tmp").write_text("half")
                raise error("boom")
        assert (not out.exists()) if fresh else list(out.iterdir()) == []
    finally:
        shutil.rmtree(root)
