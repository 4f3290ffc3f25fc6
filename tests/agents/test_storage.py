"""Optuna storages: URL checks, redaction, and studies shared through a real PostgreSQL server (started from
its binaries in a temp dir; skipped with the reason where none can be had)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from agents.storage import check_storage_url, optuna_storage, redact
from autosurgeon.errors import AutoSurgeonError, InvalidArgumentError
from tests.agents._postgres import throwaway_postgres


@pytest.fixture(scope="module")
def pg_url():
    with throwaway_postgres() as url:
        yield url


def test_urls_are_checked_and_passwords_redacted():
    with pytest.raises(InvalidArgumentError, match="must be a database URL"):
        check_storage_url("study.db")
    with pytest.raises(InvalidArgumentError, match="knows no database 'nosuchdb'"):
        check_storage_url("nosuchdb://h/x")
    assert "s3cret" not in redact("postgresql://me:s3cret@db:5432/optuna")
    assert redact("postgresql://me:s3cret@db:5432/optuna").startswith("postgresql://me:***@db")
    with pytest.raises(AutoSurgeonError, match="did not answer"):
        optuna_storage("postgresql://me:s3cret@127.0.0.1:1/optuna?connect_timeout=2")


def test_sweeps_in_two_threads_share_one_postgres_study(pg_url, tmp_path):
    import optuna

    from tests.experiments.test_sweep import config, evaluator
    from tests.experiments.test_sweep import setup as setup_fixture
    from experiments.sweep import run_sweep

    torch.set_num_threads(1)
    setup = setup_fixture.__wrapped__()
    results: dict[str, object] = {}

    def one(name: str, seed: int) -> None:
        results[name] = run_sweep(config(algo="optuna-tpe", seed=seed, budget_evals=10), tmp_path / name,
                                  evaluator=evaluator(setup), outputs=False, tensorboard=False,
                                  optuna_storage=pg_url, study_name="shared")

    threads = [threading.Thread(target=one, args=(n, s)) for n, s in (("a", 0), ("b", 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(results) == {"a", "b"}
    study = optuna.load_study(study_name="shared", storage=pg_url)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 20 and {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
    assert sorted(t.number for t in trials) == list(range(20))
    assert len(optuna.get_all_study_names(pg_url)) == 1
    assert any("shared" in n for n in results["a"].summary["notes"])


@pytest.mark.slow
def test_two_sweep_processes_join_one_postgres_study(pg_url, tmp_path):
    """Two `autosurgeon sweep` processes, one study: every trial of both is in it, finished, once."""
    import optuna
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=256)).eval().save_pretrained(tmp_path / "model")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": str(tmp_path / "model"), "device": "h100-80gb", "evaluator": "analytic",
                               "algo": "optuna-tpe", "budget_evals": 15, "pop_size": 5, "quality": "none",
                               "baselines": False}))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [subprocess.Popen([sys.executable, "-c", "from autosurgeon.cli import main; raise SystemExit(main())",
                               "sweep", "--config", str(cfg), "--out", str(tmp_path / name), "--seed", str(seed),
                               "--storage", pg_url, "--study-name", "joined", "--json"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, seed in (("a", 0), ("b", 1))]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1].decode()[-2000:] for o in outs]
    study = optuna.load_study(study_name="joined", storage=pg_url)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 30 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(30))
    for name in ("a", "b"):  # each process recorded its own 15 evaluations, once
        lines = (tmp_path / name / "evals.jsonl").read_text().splitlines()
        assert len(lines) == 15 and len({json.dumps(json.loads(x)["x"]) for x in lines}) == 15
