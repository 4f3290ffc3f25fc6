"""Run-folder locks, --out checks, atomic writes and stale temp files (autosurgeon.files.runfolder / atomic)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autosurgeon.files.atomic import check_out_file, write_text_atomic
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.files.runfolder import LOCK, RunFolderBusyError, RunFolderLock, run_folder


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_names_its_live_holder_and_a_dead_holders_lock_is_taken_over(tmp_path: Path) -> None:
    held = tmp_path / "run"
    code = ("import sys, time; sys.path.insert(0, sys.argv[2]); from autosurgeon.files.runfolder import RunFolderLock; "
            "RunFolderLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(held), str(Path(__file__).parents[2])],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderBusyError, match=rf"`--out` .* is in use by pid {proc.pid} on host .*wait for it"):
            RunFolderLock(held).acquire()
    finally:
        proc.kill()  # kill -9: the kernel drops its flock; its lock file stays behind, stale
        proc.wait()
    assert json.loads((held / LOCK).read_text())["pid"] == proc.pid
    with RunFolderLock(held):
        assert json.loads((held / LOCK).read_text())["pid"] == os.getpid()
    assert not (held / LOCK).exists()


def test_run_folder_refuses_existing_work_unless_resume_or_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "records").write_text("old")
    with pytest.raises(InvalidArgumentError, match=r"already holds a run; pass --resume .* --overwrite"):
        with run_folder(out):
            pass
    with run_folder(out, resume=True):
        assert (out / "records").read_text() == "old"
    with pytest.raises(InvalidArgumentError, match="contradict"):
        with run_folder(out, resume=True, overwrite=True):
            pass
    (out / f".x.{_dead_pid()}.tmp").write_text("torn")  # a killed writer's temp file
    with run_folder(out, overwrite=True):
        assert not any(out.iterdir()) or [p.name for p in out.iterdir()] == [LOCK]
    for bad, match in [("", "must name a folder"), (str(tmp_path / "f"), "is a file")]:
        (tmp_path / "f").write_text("x")
        with pytest.raises(InvalidArgumentError, match=match):
            with run_folder(bad):
                pass


def test_out_files_are_checked_and_written_whole(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    for bad, match in [("", "must name a file"), (str(tmp_path), "is a folder"),
                       (str(tmp_path / "file" / "p.json"), "is a file, not a folder")]:
        with pytest.raises(InvalidArgumentError, match=match):
            check_out_file(bad, argument="--out")
    path = write_text_atomic(tmp_path / "sub" / "p.json", "{}")
    assert path.read_text() == "{}" and [p.name for p in path.parent.iterdir()] == ["p.json"]
    with pytest.raises(IsADirectoryError):
        write_text_atomic(tmp_path, "{}")
    assert not list(tmp_path.glob(".*.tmp"))  # the temp file went with the failure


def test_stale_disk_probe_and_torn_cache_entries(tmp_path: Path) -> None:
    from autosurgeon.hardware.measure import _remove_dead_probes
    from autosurgeon.models.cache import cache_root, safetensors_whole

    dead = tmp_path / f".disk-probe-{_dead_pid()}.tmp"
    live = tmp_path / f".disk-probe-{os.getpid()}.tmp"
    dead.write_bytes(b"x" * 10)
    live.write_bytes(b"x")
    _remove_dead_probes(tmp_path)
    assert not dead.exists() and live.exists()
    import torch
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(64)}, str(tmp_path / "m.safetensors"))
    data = (tmp_path / "m.safetensors").read_bytes()
    assert safetensors_whole(tmp_path / "m.safetensors")
    (tmp_path / "m.safetensors").write_bytes(data[:-10])
    assert not safetensors_whole(tmp_path / "m.safetensors")
    with pytest.raises(InvalidArgumentError, match="`--cache-dir` .* is a file"):
        cache_root(tmp_path / "m.safetensors")
