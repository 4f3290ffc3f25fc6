"""`autosurgeon demo` end to end on a tiny budget: the real sweep, pick, runtime check and generation."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from autosurgeon.cli import main
from experiments.demo_flow import DemoSettings, budget_bytes
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.plan import Plan


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, Path]:
    out = tmp_path_factory.mktemp("demo") / "run"
    capture = tmp_path_factory.mktemp("demo-out") / "stdout.txt"
    import contextlib
    import io

    import shutil

    # As on a fresh machine: no Markov model of the user's yet (a reused test cache may hold one).
    shutil.rmtree(Path(os.environ["AUTOSURGEON_CACHE"]) / "markov", ignore_errors=True)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["demo", "--model", "tiny-llama-test", "--evals", "8", "--pop-size", "4", "--tokens", "4",
                     "--quality-samples", "2", "--memory-budget", "40%", "--out", str(out)])
    capture.write_text(buf.getvalue())
    return code, buf.getvalue(), out


def test_demo_picks_a_plan_within_budget_and_reports_the_table(demo_run: tuple[int, str, Path]) -> None:
    code, text, out = demo_run
    assert code == 0, text
    for row in ("decode latency (ms/token)", "generate tokens/s (4 tokens, median of 3 interleaved)", "peak memory cpu",
                "memory GPU+CPU", "energy (mJ/token, estimated)", "quality loss (measured)"):
        assert row in text
    result = json.loads((out / "result.json").read_text())
    # The same-budget alternatives raced in the same run, each with speed, memory per tier, energy, quality.
    rows = {r["label"]: r for r in result["comparison"]["rows"]}
    assert {"unmodified", "accelerate offload", "uniform int8", "knapsack"} <= set(rows), sorted(rows)
    assert "uniform int4" in rows or any("uniform int4 not raced" in n for n in result["notes"])
    for r in rows.values():
        assert len(r["seconds_per_round"]) == 3 and r["tokens_per_s"] > 0
        assert r["energy_j_per_token"] > 0 and r["energy_label"].startswith(("measured", "estimated"))
        assert r["quality_loss"] is not None and r["quality_method"]
        assert r["tier_bytes"]
    assert not rows["unmodified"]["fits"]  # 40 % of its own memory: the reference does not fit
    chosen_row = next(r for r in rows.values() if r["label"] == result["chosen"]["label"])
    assert chosen_row["fits"] and chosen_row["kind"] == "plan"
    fitting = [r for r in rows.values() if r["fits"] and r["kind"] == "plan"]
    assert chosen_row["tokens_per_s"] == max(r["tokens_per_s"] for r in fitting)  # the pick rule, not a timing
    assert len(result["standings"]) == len(rows) - 1
    for label in rows:
        assert label in text
    assert "the chosen plan" in text and "vs accelerate offload:" in text
    chosen = result["chosen"]["metrics"]["_data"]
    memory = sum(chosen["peak_bytes"].get(t, 0) for t in ("gpu", "cpu"))
    assert memory <= result["budget_bytes"]
    assert chosen["quality_loss"] <= 0.01
    # The budget is 40% of the unmodified model's measured memory, so the plan must have compressed it.
    base = result["baseline"]["metrics"]["_data"]
    assert memory <= 0.4 * sum(base["peak_bytes"].get(t, 0) for t in ("gpu", "cpu")) + 1
    plan = Plan.load(out / "plan.json")
    assert plan.metadata["demo_source"] == result["chosen_source"]
    assert result["chosen"]["generated_tokens"] == 4
    # The sweep left its TensorBoard events, front and plot where the demo says.
    assert list((out / "sweep").rglob("events.out.tfevents.*"))
    assert (out / "sweep" / "front.csv").is_file()
    assert str(out / "sweep" / "front.csv") in text


def test_demo_warm_start_comes_from_the_shipped_model_then_the_users(demo_run: tuple[int, str, Path]) -> None:
    _, text, out = demo_run
    result = json.loads((out / "result.json").read_text())
    assert result["warm_start"].endswith(os.path.join("experiments", "warmstart", "markov-cpu.json"))
    user_model = Path(os.environ["AUTOSURGEON_CACHE"]) / "markov" / f"{result['device_class']}.json"
    assert user_model.is_file()
    assert "updated with this front" in text


def test_demo_rerun_resumes_the_sweep_without_new_evaluations(demo_run: tuple[int, str, Path]) -> None:
    import contextlib
    import io

    _, _, out = demo_run
    before = (out / "sweep" / "evals.jsonl").read_text().count("\n")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["demo", "--model", "tiny-llama-test", "--evals", "8", "--pop-size", "4", "--tokens", "4",
                     "--quality-samples", "2", "--memory-budget", "40%", "--out", str(out)])
    assert code == 0
    assert (out / "sweep" / "evals.jsonl").read_text().count("\n") == before


@pytest.mark.parametrize("budget", ["0%", "150%", "lots", "-3MiB"])
def test_bad_budget_is_refused_naming_the_flag(budget: str) -> None:
    with pytest.raises(InvalidArgumentError, match="--memory-budget"):
        budget_bytes(budget, 1000)


def test_budget_share_and_size() -> None:
    assert budget_bytes("25%", 1000) == 250
    assert budget_bytes("1KiB", 1000) == 1024


def test_bad_settings_fail_before_any_work(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(InvalidArgumentError, match="--evals"):
        DemoSettings(evals=0)
    assert main(["demo", "--budget", "lots"]) == 2
    assert "--memory-budget" in capsys.readouterr().err  # the flag was --budget before one MemoryBudget


def test_demo_uses_a_learned_policy_for_this_device_class(tmp_path: Path) -> None:
    from agents.ppo import PPOSettings, train
    from experiments.demo_flow import run_demo

    policy = tmp_path / "policy"
    train(device="local", models=["tiny-llama-test"], timesteps=64, out=policy, n_envs=1, seed=0,
          settings=PPOSettings(n_steps=64, batch_size=64, n_epochs=1), hv_every=64, hv_preferences=2)
    result = run_demo(DemoSettings(model="tiny-llama-test", evals=4, pop_size=4, tokens=2, quality_samples=2,
                                   budget="60%", policy=str(policy), out=str(tmp_path / "demo")))
    assert result.policy == str(policy)
    assert not [n for n in result.notes if "skipped" in n], result.notes
    assert result.chosen is not None
