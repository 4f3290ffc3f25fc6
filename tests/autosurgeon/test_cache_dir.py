"""``--cache-dir`` moves every cache a command writes, the local hardware profile included (issue 17)."""
from __future__ import annotations

import os

import pytest

from autosurgeon.cli import main
from autosurgeon.hardware import detect as hw_detect
from autosurgeon.hardware import resolve
from autosurgeon.hardware.measure import MeasureConfig

TINY = MeasureConfig(gemm_min_n=32, gemm_max_n=64, gemm_max_n_accel=128, gemm_max_op_s=0.05, memory_bytes=2**20,
                     memory_over_cache=0.0, accel_memory_bytes=2**20, transfer_bytes=2**20, disk_bytes=2**20,
                     warmup=1, repeats=2, disk_repeats=1)


@pytest.fixture()
def tiny_measuring(tmp_path, monkeypatch):
    """The real measuring path at tiny sizes, CPU only; records where each measurement's disk test ran."""
    monkeypatch.setenv("AUTOSURGEON_CACHE", str(tmp_path / "env-cache"))
    monkeypatch.setattr(hw_detect, "detect_gpus", lambda: ())
    monkeypatch.setattr(resolve, "detect_gpus", lambda: ())
    real, disk_dirs = resolve.measure_local, []

    def measure(**kwargs):
        disk_dirs.append(kwargs["disk_dir"])
        return real(config=TINY, include_gpus=False, disk_dir=kwargs["disk_dir"])

    monkeypatch.setattr(resolve, "measure_local", measure)
    # TINY's few-element GEMMs measure implausibly low rates under load, which the trust check rightly refuses
    # (a re-measure); these tests are about where caches go, so the cached profile is always trusted here.
    monkeypatch.setattr(resolve, "trust_problems", lambda profile: [])
    return disk_dirs


def _files(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_profile_cache_follows_cache_dir(tmp_path, tiny_measuring, capsys) -> None:
    moved = tmp_path / "moved"
    assert main(["profile", "--quick", "--cache-dir", str(moved)]) == 0
    fingerprint = resolve.local_fingerprint()
    assert _files(moved) == [f"profiles/{fingerprint}.json"]
    assert tiny_measuring == [moved.resolve()]  # the disk test's temp file went there too (and is gone)
    assert f"cached at {moved.resolve() / 'profiles' / fingerprint}.json" in capsys.readouterr().err
    assert _files(tmp_path / "env-cache") == []  # nothing under $AUTOSURGEON_CACHE
    assert os.environ["AUTOSURGEON_CACHE"] == str(tmp_path / "env-cache")  # restored after the command

    # A later command with the same --cache-dir reads that profile instead of measuring again.
    tiny_measuring.clear()
    assert main(["analyze", "tiny-llama", "--cache-dir", str(moved)]) == 0
    assert tiny_measuring == [] and _files(tmp_path / "env-cache") == []


def test_resolve_profile_takes_a_cache_dir(tmp_path, tiny_measuring) -> None:
    first = resolve.resolve_profile("local", cache_dir=tmp_path / "api")
    assert resolve.profile_cache_path(first.fingerprint, cache_dir=tmp_path / "api").is_file()
    assert resolve.resolve_profile("local", cache_dir=tmp_path / "api") == first and len(tiny_measuring) == 1
    assert _files(tmp_path / "env-cache") == []


def test_environment_variable_still_moves_it(tmp_path, tiny_measuring) -> None:
    profile = resolve.resolve_profile("local")
    assert resolve.profile_cache_path(profile.fingerprint).parent == tmp_path / "env-cache" / "profiles"
    assert _files(tmp_path / "env-cache") == [f"profiles/{profile.fingerprint}.json"]


@pytest.mark.parametrize("command", [["profile"], ["zoo"], ["sweep", "tiny-llama", "--out", "RUN"]])
def test_cache_dir_that_is_a_file_is_one_line(tmp_path, tiny_measuring, capsys, command) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    command = [str(tmp_path / "run") if c == "RUN" else c for c in command]
    assert main([*command, "--cache-dir", str(blocker)]) == 2
    assert not (tmp_path / "run").exists()  # refused before any work
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "`--cache-dir`" in err and "is a file" in err and "Traceback" not in err
    assert tiny_measuring == []


def test_every_command_takes_cache_dir() -> None:
    from autosurgeon.cli import COMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in COMMANDS:
        flags = {s for a in sub.choices[name]._actions for s in a.option_strings}
        assert "--cache-dir" in flags, name
