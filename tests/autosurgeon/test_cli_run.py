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
    ("gpu3GiB", "must be a byte size such as 3GiB"), ("ram=1GiB", "tier 'ram' is unknown"),
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


# ---------------------------------------------------------------------------------------------- session flags
def test_run_plan_with_kv_flags_reports_sources_and_kv_bytes(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from autosurgeon.plan import Plan

    path = Plan(session={"kv_window": 8, "prefetch_depth": 1}).save(tmp_path / "plan.json")
    assert _run(["tiny-llama-test", "--plan", str(path), "--kv-precision", "int8", "--max-new-tokens", "12",
                 "--prompt", "def f(x):", "--device", "cpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["session"] == {"kv_window": 8, "prefetch_depth": 1, "kv_precision": "int8"}
    assert out["session_sources"] == {"kv_window": "plan", "prefetch_depth": "plan", "kv_precision": "flag"}
    kv = out["kv"]
    assert kv["precision"] == "int8" and kv["window"] == 8
    prompt = len("def f(x):")
    assert kv["tokens_seen"] == prompt + 12 - 1 and kv["tokens_kept"] == 4 + 8
    assert kv["evictions"] == kv["tokens_seen"] - kv["tokens_kept"] and kv["offloaded_pages"] == 0
    # stored bytes: int8 codes + a float16 scale per head and token; the peak is the cache's own (<= the store's)
    assert 0 < kv["bytes_used"] <= kv["peak_bytes"] <= out["peak_bytes"]["cpu"]
    assert out["prefetch_hit_rate"] is None  # dense: no expert prefetcher
    assert out["placement"]["streamed_blocks"] == 0 and len(out["token_ids"]) == 12


def test_run_prefetch_on_moe_reports_hit_rates(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["tiny-moe-test", "--prefetch", "markov", "--kv-budget", "50%", "--max-new-tokens", "4",
                 "--device", "cpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["session_sources"] == {"kv_budget": "flag", "prefetch": "flag"}
    assert 0.0 <= out["prefetch_hit_rate"] <= 1.0 and out["experts"]["prefetch"] == "markov"
    assert out["kv"]["bytes_budget"] > 0 and out["kv"]["bytes_used"] <= out["kv"]["bytes_budget"]


@pytest.mark.parametrize(("argv", "match"), [
    (["--kv-budget", "lots"], r"`--kv-budget`: `kv_budget` must be a byte size .*got 'lots'.*a share like \"50%\""),
    (["--kv-budget", "150%"], r"`--kv-budget`: `kv_budget` share must be in \(0%, 100%\], got '150%'"),
    (["--kv-window", "0"], r"`--kv-window`: `kv_window` must be an int >= 1 .*got 0"),
    (["--plan", "PLAN", "--lookahead", "7"], r"`--lookahead`: `prefetch_depth` must be one of 0, 1, 2, 3, 4, got 7 "
                                            r"\(with --plan, --lookahead sets the plan's prefetch_depth, 0..4\)"),
    (["--plan", "PLAN", "--prefetch", "markov"], r"`prefetch`='markov': LlamaForCausalLM has no mixture-of-experts"),
    (["--plan", "PLAN", "--adapt"], "`--plan` with --adapt is not supported"),
])
def test_run_session_flag_errors_exit_2_naming_flag_value_fix(tmp_path, capsys, argv, match) -> None:
    from autosurgeon.cli import main
    from autosurgeon.plan import Plan

    path = Plan().save(tmp_path / "plan.json")
    argv = [str(path) if a == "PLAN" else a for a in argv]
    with pytest.raises(Exception, match=match):
        _run(["tiny-llama-test", "--max-new-tokens", "2", "--device", "cpu", *argv])
    assert main(["run", "tiny-llama-test", "--max-new-tokens", "2", "--device", "cpu", *argv]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_run_kv_precision_choice_is_checked_by_argparse(capsys) -> None:
    from autosurgeon.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["run", "tiny-llama-test", "--kv-precision", "int4"])
    assert exc.value.code == 2 and "invalid choice: 'int4'" in capsys.readouterr().err


@pytest.mark.parametrize(("flag", "reason"), [([], "no CUDA device"), (["--no-graphs"], "graphs=False")])
def test_run_reports_the_decode_path_and_no_graphs_turns_graphs_off(capsys, flag, reason) -> None:
    assert _run(["tiny-llama-test", "--max-new-tokens", "3", "--json", "--device", "cpu", *flag]) == 0
    decode = json.loads(capsys.readouterr().out)["decode"]
    assert decode["path"] == "eager" and decode["reason"] == reason
