"""`autosurgeon run --plan FILE`: the plan is read first, checked on this machine's profile and applied."""
from __future__ import annotations

import argparse
import json

import pytest

from autosurgeon.cli.run import register
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.plan import Plan, Rule


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["run", *argv])
    return args.func(args)


def test_run_with_a_plan_quantizes_fuses_and_streams(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    path = Plan(default={"precision": "int8"}, rules=(
        Rule("model.embed_tokens", {"precision": "float32"}), Rule("re:.*self_attn", {"fusion": "fuse"}),
        Rule("model.layers.1", {"placement": "cpu<-disk"}))).save(tmp_path / "plan.json")
    assert _run(["tiny-llama-test", "--plan", str(path), "--json", "--max-new-tokens", "4", "--device", "cpu",
                 "--offload-dir", str(tmp_path / "offload")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["token_ids"]) == 4 and out["weight_format"] == "per plan"
    assert out["placement"]["streamed_blocks"] == 1 and out["placement"]["streamed_from"] == ["disk"]
    assert out["peak_bytes"]["disk"] > 0


def test_run_plan_errors_name_the_option(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InvalidArgumentError, match=r"`--plan`: .*bad.json: not valid JSON"):
        _run(["tiny-llama-test", "--plan", str(bad)])
    with pytest.raises(InvalidArgumentError, match="`--plan` and `--weight-format` both set precisions"):
        _run(["tiny-llama-test", "--plan", str(bad), "--weight-format", "int8"])
