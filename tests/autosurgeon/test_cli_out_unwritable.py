"""Every `--out` that cannot be written is refused before any work, in one line naming the flag (issue 17).

Two ways to be unwritable: a path under a regular file (unwritable for root too), and a read-only folder
(skipped as root, where permission bits do not stop writes)."""
from __future__ import annotations

import os

import pytest

from autosurgeon.cli import main

# Each command with an --out, with the least else it needs; OUT is replaced by the unwritable path.
COMMANDS = {
    "profile": ["profile", "--device", "a100-80gb", "--out", "OUT/p.json"],
    "plan": ["plan", "tiny-llama", "--device", "a100-80gb", "--out", "OUT/p.json"],
    "apply": ["apply", "--model", "tiny-llama", "--policy", "nowhere", "--device", "a100-80gb", "--out", "OUT/p.json"],
    "markov fit": ["markov", "fit", "nowhere", "--out", "OUT/m.json"],
    "markov predict": ["markov", "predict", "tiny-llama", "--device", "a100-80gb", "--model", "m.json",
                       "--out", "OUT/p.json"],
    "sweep": ["sweep", "tiny-llama", "--device", "a100-80gb", "--out", "OUT/run"],
    "front": ["front", "nowhere", "--out", "OUT/p.json"],
    "train": ["train", "--device", "a100-80gb", "--models", "tiny-llama", "--timesteps", "64", "--out", "OUT/pol"],
    "tune": ["tune", "--device", "a100-80gb", "--models", "tiny-llama", "--trials", "2", "--out", "OUT/t"],
    "demo": ["demo", "--out", "OUT/d"],
    "zoo train": ["zoo", "train", "tiny-llama-test", "--out", "OUT/z"],
    "report": ["report", "--quick", "--out", "OUT/r.md"],
}


def _check_refused(argv: list[str], capsys, tmp_path) -> str:
    before = sorted(p for p in tmp_path.rglob("*"))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "`--out`" in err, err
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing made, no temp file left
    return err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_out_under_a_file(name, tmp_path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    argv = [a.replace("OUT", str(blocker / "sub")) for a in COMMANDS[name]]
    assert "'a-file' is a file, not a folder" in _check_refused(argv, capsys, tmp_path).replace(str(tmp_path) + "/", "")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root writes into read-only folders; the under-a-file test covers root")
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_out_in_a_read_only_folder(name, tmp_path, capsys) -> None:
    locked = tmp_path / "read-only"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        argv = [a.replace("OUT", str(locked)) for a in COMMANDS[name]]
        assert "writable" in _check_refused(argv, capsys, tmp_path)
    finally:
        locked.chmod(0o700)
