"""`autosurgeon run`: budgets parsed with precise errors; a streamed run prints one JSON object."""
from __future__ import annotations

import argparse
import json

import pytest

from autosurgeon.cli.run import parse_budgets, register
from autosurgeon.errors import InvalidArgumentError


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["run", *argv])
    return args.func(args)


def test_parse_budgets() -> None:
    assert parse_budgets("gpu=3GiB, cpu=500MB") == {"gpu": 3 * 2**30, "cpu": 500 * 10**6}
    assert parse_budgets("") == {}


@pytest.mark.parametrize(("text", "match"), [
    ("gpu3GiB", "entries are TIER=SIZE"), ("ram=1GiB", "tier 'ram' is unknown"),
    ("cpu=1GiB,cpu=2GiB", "twice"), ("cpu=lots", "must be a byte size"), ("cpu=3 parsecs", "unknown unit"),
])
def test_parse_budgets_errors(text: str, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        parse_budgets(text)


def test_run_json_streams_from_disk_under_a_small_cpu_budget(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["tiny-llama-test", "--memory-budget", "cpu=300KiB", "--max-new-tokens", "6", "--prompt",
                 "def f(", "--json", "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["token_ids"]) == 6 and isinstance(out["text"], str)
    assert out["tokens_per_s"] > 0 and out["energy_source"] in {"nvml", "rapl", "estimate"}
    assert 0 < out["peak_bytes"]["cpu"] <= 300 * 1024 and out["peak_bytes"]["disk"] > 0
    assert out["placement"]["streamed_blocks"] > 0 and out["placement"]["streamed_from"] == ["disk"]
    assert "energy_j" in out


def test_run_errors() -> None:
    with pytest.raises(InvalidArgumentError, match="`--plan`"):
        _run(["tiny-llama-test", "--plan", "p.json"])
    with pytest.raises(InvalidArgumentError, match="`--max-new-tokens` must be >= 1, got 0"):
        _run(["tiny-llama-test", "--max-new-tokens", "0"])
    with pytest.raises(InvalidArgumentError, match="gpu budget but the device is cpu"):
        _run(["tiny-llama-test", "--memory-budget", "gpu=1GiB", "--device", "cpu"])
