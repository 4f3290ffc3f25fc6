"""`autosurgeon plan` and `autosurgeon evaluate` on a tiny random Llama saved as a Hugging Face directory.

Commands are run two ways: through their own ``register`` on a bare argparse parser (as a user's call
reaches ``run``), and through ``autosurgeon.cli.main`` with the two names added to its command list for
the test only, which is how bad input must surface: exit status 2, the message, no traceback.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from autosurgeon import cli
from autosurgeon.cli import evaluate as evaluate_cli
from autosurgeon.cli import plan as plan_cli
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.plan import Plan, model_fingerprint


# The tests plan with int8 and int4 (group 64) only: two measured precisions keep the sensitivity table fast.
FAST = ("--group-sizes", "64", "--precisions", "int8,int4")


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    plan_cli.register(sub)
    evaluate_cli.register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def _main(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    missing = tuple(name for name in ("plan", "evaluate") if name not in cli.COMMANDS)
    monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, *missing))
    return cli.main(argv)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama directory, a private cache, and one plan made by the CLI (shared by the tests)."""
    root = tmp_path_factory.mktemp("cli_plan")
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256)
    LlamaForCausalLM(config).eval().save_pretrained(root / "model")
    assert _run_cli(["plan", str(root / "model"), "--device", "local", "--memory-budget", "40%",
                     *FAST, "--cache-dir", str(root / "cache"), "--out", str(root / "plan.json")]) == 0
    return root


def _args(root: Path, *rest: str) -> list[str]:
    return [str(root / "model"), *rest, "--cache-dir", str(root / "cache")]



def test_plan_writes_a_loadable_plan_within_a_percent_budget(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = Plan.load(workdir / "plan.json")
    from autosurgeon.zoo import load_model

    loaded = load_model(str(workdir / "model"))
    assert plan.model_fingerprint == model_fingerprint(loaded.model)
    assert plan.metadata["proposer"] == "knapsack" and plan.metadata["objective"] == "quality"
    assert {d.get("precision") for d in plan.resolve(n for n, _ in loaded.model.named_modules()).values()} <= {
        "int8", "int4"}
    # --json reports the same plan: bytes within 40 % of the unmodified weights.
    assert _run_cli(["plan", *_args(workdir, "--device", "local", "--memory-budget", "40%", *FAST,
                                     "--out", str(workdir / "again.json"), "--json")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tier_bytes"]["cpu"] <= report["budget_bytes"] == int(report["reference_bytes"] * 0.40)
    assert report["budget_tier"] == "cpu" and report["dp_exact"] is True
    assert sum(report["precision_counts"].values()) == 16  # 14 block linears, lm_head, the (float-only) embedding
    assert Plan.load(workdir / "again.json").to_dict()["_data"]["rules"] == plan.to_dict()["_data"]["rules"]


def test_plan_summary_names_counts_bytes_and_predicted_loss(workdir: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_cli(["plan", *_args(workdir, "--device", "local", "--max-quality-loss", "0.005", *FAST,
                                     "--out", str(workdir / "memory.json"))]) == 0
    out = capsys.readouterr().out
    assert "(memory objective)" in out and re.search(r"^precisions .*int\d", out, re.M)
    assert re.search(r"^weights +[\d.]+ KiB \(\d+ B\) vs [\d.]+ KiB unmodified: [\d.]+x smaller", out, re.M)
    loss = float(re.search(r"predicted loss ([\d.]+)%", out).group(1))
    assert 0 < loss <= 0.5


def test_evaluate_prints_every_metric_with_its_label(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_cli(["evaluate", *_args(workdir, "--plan", str(workdir / "plan.json"))]) == 0
    out = capsys.readouterr().out
    for name in ("latency_s", "prefill_s", "tokens_per_s", "peak_bytes", "energy_j"):
        assert re.search(rf"^{name} +\S.* \[estimated\]$", out, re.M), name
    assert re.search(r"^quality_loss +not evaluated +\[-\]$", out, re.M)
    assert "analytic evaluator" in out and "method     analytic: roofline" in out
    assert _run_cli(["evaluate", *_args(workdir, "--plan", str(workdir / "plan.json"), "--json")]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["_type"] == "autosurgeon.Metrics" and record["_data"]["labels"]["latency_s"] == "estimated"


def _plan_file(root: Path, name: str, data: dict | str) -> str:
    path = root / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_bad_inputs_exit_2_with_the_message_and_no_traceback(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    good = json.loads((workdir / "plan.json").read_text())

    def fails(argv: list[str], pattern: str) -> None:
        assert _main(argv, monkeypatch) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and re.search(pattern, err, re.S), err

    # Another model: both fingerprints named.
    other = json.loads(json.dumps(good))
    other["_data"]["model_fingerprint"] = "0123456789abcdef"
    fails(["evaluate", *_args(workdir, "--plan", _plan_file(workdir, "other_model.json", other))],
          r"autosurgeon evaluate: error: .*made for model fingerprint 0123456789abcdef, but LlamaForCausalLM has "
          r"model fingerprint [0-9a-f]{16}.*--force")
    # Another device: both fingerprints named; --force evaluates it there (its precisions are valid on an H100).
    fails(["evaluate", *_args(workdir, "--plan", str(workdir / "plan.json"), "--device", "h100-80gb")],
          r"made for device fingerprint [0-9a-f]{16}, but device 'h100-80gb' has device fingerprint [0-9a-f]{16}")
    assert _main(["evaluate", *_args(workdir, "--plan", str(workdir / "plan.json"), "--device", "h100-80gb",
                                     "--force")], monkeypatch) == 0
    assert "h100-80gb (analytic evaluator)" in capsys.readouterr().out
    # Corrupt JSON, an unknown version, a malformed field.
    fails(["evaluate", *_args(workdir, "--plan", _plan_file(workdir, "corrupt.json", "{not json"))],
          r"corrupt\.json: not valid JSON")
    newer = {**good, "_version": 99}
    fails(["evaluate", *_args(workdir, "--plan", _plan_file(workdir, "newer.json", newer))],
          r"plan `_version` 99 is newer than this AutoSurgeon reads \(up to 1\)")
    broken = json.loads(json.dumps(good))
    broken["_data"]["rules"] = {"model.layers.0.mlp.up_proj": "int4"}
    fails(["evaluate", *_args(workdir, "--plan", _plan_file(workdir, "broken.json", broken))],
          r"`rules` must be a list, got dict")
    # A precision the device lacks: layer, knob and device named.
    fp8 = Plan.from_decisions({"model.layers.1.mlp.down_proj": {"precision": "fp8"}})
    fails(["evaluate", *_args(workdir, "--plan", str(fp8.save(workdir / "fp8.json")))],
          r"model\.layers\.1\.mlp\.down_proj `precision`='fp8': `precision` 'fp8' is not valid for "
          r"model\.layers\.1\.mlp\.down_proj on device 'local'")
    # A budget below the smallest plan: the smallest achievable stated.
    fails(["plan", *_args(workdir, "--device", "local", "--memory-budget", "1KB", *FAST,
                          "--out", str(workdir / "never.json"))],
          r"autosurgeon plan: error: `budget` 1000 B .* below the smallest footprint this model can reach on "
          r"'local': \d+ B .* raise the budget to at least that")
    assert not (workdir / "never.json").exists()


@pytest.mark.parametrize(("argv", "pattern"), [
    (["--memory-budget", "lots"], r"`--memory-budget` must be a byte size such as 3GiB"),
    (["--memory-budget=-5%"], r"`--memory-budget` share must be a positive percentage, got '-5%'"),
    (["--max-quality-loss", "-0.1"], r"`--max-quality-loss` must be >= 0"),
    ([], r"give `--memory-budget` .* `--max-quality-loss`"),
    (["--memory-budget", "40%", "--group-sizes", "48"], r"`--group-sizes` entries must be positive multiples of 32"),
    (["--memory-budget", "40%", "--precisions", "int3"], r"`--precisions` must be a comma list drawn from"),
])
def test_plan_refuses_bad_arguments(workdir: Path, argv: list[str], pattern: str) -> None:
    with pytest.raises(InvalidArgumentError, match=pattern):
        _run_cli(["plan", *_args(workdir, "--device", "local", *FAST, *argv, "--out", str(workdir / "x.json"))])
    assert not (workdir / "x.json").exists()


def test_plan_writes_session_flags_and_evaluate_scores_them(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = workdir / "session.json"
    assert _run_cli(["plan", *_args(workdir, "--device", "local", "--max-quality-loss", "0.05", *FAST,
                                     "--kv-precision", "int8", "--kv-budget", "50%", "--prefetch-depth", "1",
                                     "--out", str(out), "--json")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["session"] == {"kv_precision": "int8", "kv_budget": "50%", "prefetch_depth": 1}
    assert report["kv_bytes"]["peak_bytes"] > 0 and report["kv_bytes"]["context"] == 32
    assert Plan.load(out).session == report["session"]
    # `autosurgeon evaluate` builds its space with the plan's session knobs: the memory counts the KV cache
    assert _run_cli(["evaluate", *_args(workdir, "--plan", str(out), "--device", "local", "--json")]) == 0
    metrics = json.loads(capsys.readouterr().out)["_data"]
    assert metrics["extra"]["kv"]["precision"] == "int8" and metrics["extra"]["kv"]["peak_bytes"] > 0
    with pytest.raises(InvalidArgumentError, match=r"`--prefetch-depth`: `prefetch_depth` must be one of 0, 1, 2, 3, 4, "
                                                   "got 9"):
        _run_cli(["plan", *_args(workdir, "--device", "local", "--memory-budget", "40%", "--prefetch-depth", "9",
                                 "--out", str(workdir / "bad.json"))])


def test_the_plan_carries_its_budget_and_apply_plan_enforces_it(workdir: Path):
    from autosurgeon.plan_check import PlanCheckError
    from autosurgeon.transforms import apply_plan
    from autosurgeon.zoo import load_model

    plan = Plan.load(workdir / "plan.json")
    assert plan.budgets.to_json() == {"fastest": "40%"}
    loaded = load_model(str(workdir / "model"), device="cpu", cache_dir=str(workdir / "cache"))
    with apply_plan(loaded, plan, "local") as session:  # its own budget: the plan was made to fit it
        fastest = session.spec.budgets["cpu"]
        assert 0 < fastest < sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    tight = Plan.from_dict({**plan.to_dict(), "_data": {**plan.to_dict()["_data"], "budgets": {"cpu": "1KiB"}}})
    with pytest.raises(PlanCheckError, match="cpu"):
        apply_plan(loaded, tight, "local")
    with apply_plan(loaded, tight, "local", budgets={}) as session:  # the caller's budget wins
        assert session.spec.budgets.get("cpu") is None
