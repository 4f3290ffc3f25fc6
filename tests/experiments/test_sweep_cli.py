"""`autosurgeon sweep` / `autosurgeon front` end to end on a tiny random Llama directory (analytic evaluator on
the h100-80gb preset, quality off), and bad inputs: exit status 2, the message, no traceback.

The commands are reached through ``autosurgeon.cli.main`` with ``sweep`` added to its command list for the
test only (the lead registers it).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from autosurgeon import cli
from autosurgeon.plan import Plan


def _main(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    if "sweep" not in cli.COMMANDS:
        monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, "sweep"))
    return cli.main(argv)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli_sweep")
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256)
    LlamaForCausalLM(config).eval().save_pretrained(root / "model")
    (root / "cfg.json").write_text(json.dumps({
        "model": str(root / "model"), "device": "h100-80gb", "evaluator": "analytic", "algo": "nsga2",
        "budget_evals": 12, "pop_size": 6, "quality": "none", "baselines": False,
        "reference_point": [3.0, 1.1, 3.5]}))
    return root


@pytest.fixture(scope="module")
def run_dir(workdir: Path) -> Path:
    mp = pytest.MonkeyPatch()
    try:
        out = workdir / "runs" / "a"
        assert _main(["sweep", "--config", str(workdir / "cfg.json"), "--out", str(out),
                      "--cache-dir", str(workdir / "cache"), "--json"], mp) == 0
    finally:
        mp.undo()
    return out


def test_sweep_writes_summary_and_resume_extends(run_dir: Path, workdir: Path, monkeypatch, capsys):
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["algorithm"] == "nsga2" and s["evaluations"] == 12 and s["status"] == "complete"
    assert s["hypervolume"] > 0 and s["reference_point"] == [3.0, 1.1, 3.5]
    assert s["device"] == "h100-80gb" and s["evaluator"] == "analytic" and s["seed"] == 0
    assert set(s["normaliser"]["scales"]) == {"latency", "memory", "energy"} and s["wall_s"] > 0
    assert len((run_dir / "evals.jsonl").read_text().splitlines()) == 12
    # The reporting outputs (experiments.reporting) and per-generation TensorBoard scalars.
    assert s["outputs"] and all(Path(p).exists() for p in s["outputs"].values())
    assert list(run_dir.glob("**/events.out.tfevents.*"))
    # Resume with a larger budget: the first 12 are replayed, 6 more measured.
    other = workdir / "runs" / "b"
    import shutil

    shutil.copytree(run_dir, other)
    capsys.readouterr()
    assert _main(["sweep", "--out", str(other), "--resume", "--budget-evals", "18", "--json",
                  "--cache-dir", str(workdir / "cache")], monkeypatch) == 0
    s2 = json.loads(capsys.readouterr().out)
    assert s2["evaluations"] == 18 and s2["replayed"] == 12 and s2["measured_this_attempt"] == 6


def test_front_table_and_pick(run_dir: Path, tmp_path: Path, monkeypatch, capsys):
    capsys.readouterr()
    assert _main(["front", str(run_dir)], monkeypatch) == 0
    out = capsys.readouterr().out
    assert "latency (ms)" in out and "front plans of 12 evaluations" in out
    assert _main(["front", str(run_dir), "--preference", "latency=0.5,memory=0.5", "--json",
                  "--out", str(tmp_path / "plan.json")], monkeypatch) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["chosen"] in {m["eval"] for m in data["front"]}
    plan = Plan.load(tmp_path / "plan.json")
    records = [json.loads(line) for line in (run_dir / "evals.jsonl").read_text().splitlines()]
    assert plan.to_dict()["_data"]["rules"] == records[data["chosen"]]["plan"]["_data"]["rules"]
    assert _main(["front", str(run_dir), "--budget-memory", "100%", "--json"], monkeypatch) == 0
    assert json.loads(capsys.readouterr().out)["chosen"] is not None


@pytest.mark.parametrize("argv, match", [
    (["sweep", "tiny-llama", "--budget-evals", "0", "--out", "{tmp}/x"], "`--budget-evals` must be >= 1, got 0"),
    (["sweep", "tiny-llama", "--pop-size", "1", "--out", "{tmp}/x"], "`--pop-size` must be >= 2"),
    (["sweep", "tiny-llama", "--max-quality-loss", "-0.1", "--out", "{tmp}/x"], "`--max-quality-loss` must be >= 0"),
    (["sweep", "--out", "{tmp}/x"], "give MODEL"),
    (["sweep", "--config", "{tmp}/missing.json", "--out", "{tmp}/x"], "is not a file"),
    (["sweep", "tiny-llama", "--out", "{run}"], "already holds a sweep; pass --resume"),
    (["sweep", "tiny-llama", "--out", "{tmp}/empty", "--resume"], "holds no sweep"),
    (["sweep", "--out", "{run}", "--resume", "--seed", "5"], r"settings \['seed'\] differ"),
    (["sweep", "tiny-llama", "--device", "h100-80gb", "--evaluator", "profiled", "--out", "{tmp}/p"],
     "profile on paper"),
    (["front", "{run}", "--preference", "latency=0.7,memory=0.7"], "must sum to 1, got 1.4"),
    (["front", "{run}", "--preference", "latency=1,power=0"], "unknown objective 'power'"),
    (["front", "{run}", "--preference", "latency=-1,memory=2"], "must be >= 0"),
    (["front", "{run}", "--budget-memory", "lots"], "budget-memory"),
    (["front", "{run}", "--budget-memory", "1B"], "no front member fits"),
    (["front", "{tmp}/nope"], "does not exist"),
])
def test_bad_inputs_exit_2_with_message(argv, match, run_dir: Path, tmp_path: Path, monkeypatch, capsys):
    import re

    argv = [a.replace("{tmp}", str(tmp_path)).replace("{run}", str(run_dir)) for a in argv]
    capsys.readouterr()
    assert _main(argv, monkeypatch) == 2
    err = capsys.readouterr().err
    assert re.search(match, err), err
    assert "Traceback" not in err
