"""Sweeps on a Dask cluster: the same records as a serial sweep whatever the worker count, one evaluator per
worker, coordinator-only records, resume, clear refusals. In-process clusters (``processes=False``) of 1-2
workers with the analytic evaluator on a tiny random Llama (fast); worker processes, a CLI run and a killed
worker are ``slow``."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("distributed", reason="dask[distributed] is not installed (pip install -e '.[dev]')")

from autosurgeon.errors import InvalidArgumentError  # noqa: E402
from autosurgeon.evaluate import AnalyticEvaluator  # noqa: E402
from autosurgeon.space.search_space import SearchSpace  # noqa: E402
from experiments.sweep import run_sweep  # noqa: E402
from experiments.sweep.cluster import check_cluster_args, dask_client, sweep_cluster  # noqa: E402
from experiments.sweep.dask_eval import DaskEvaluator, SweepCluster  # noqa: E402
from experiments.sweep.distributed import pending  # noqa: E402

from tests.experiments.test_sweep import KNOBS, config, evaluator, one_thread, setup  # noqa: E402,F401  (fixtures)


@pytest.fixture(scope="module")
def client():
    with dask_client(workers=2, processes=False) as c:
        yield c


def _run(setup, tmp_path, name, *, cluster=None, ev=None, **kw):
    ev = ev if ev is not None else evaluator(setup)
    return run_sweep(config(**kw), tmp_path / name, evaluator=ev, outputs=False, tensorboard=False, cluster=cluster)


def _cluster(client, setup):
    return SweepCluster(client, factory=lambda: evaluator(setup))


@pytest.mark.parametrize("algo", ["nsga2", "random"])
def test_cluster_records_equal_serial_records(setup, tmp_path, client, algo):
    serial = _run(setup, tmp_path, "serial", algo=algo, seed=5)
    on_two = _run(setup, tmp_path, "two", cluster=_cluster(client, setup), algo=algo, seed=5)
    assert [r["x"] for r in on_two.records] == [r["x"] for r in serial.records]
    assert [r["metrics"] for r in on_two.records] == [r["metrics"] for r in serial.records]
    assert [r["eval"] for r in on_two.records] == list(range(30))
    c = on_two.summary["cluster"]
    # Every plan measured once, on the cluster: the 30 records and the unmodified reference.
    assert c["evaluated"] == 31 and sum(c["by_worker"].values()) == 31 and len(c["by_worker"]) == 2
    lines = (tmp_path / "two" / "evals.jsonl").read_text().splitlines()
    assert len(lines) == 30 and len({json.dumps(json.loads(line)["x"]) for line in lines}) == 30


def test_optuna_batches_do_not_depend_on_worker_count(setup, tmp_path, client):
    with dask_client(workers=1, processes=False) as one:
        a = _run(setup, tmp_path, "one", cluster=_cluster(one, setup), algo="optuna-tpe", seed=2, budget_evals=20)
    b = _run(setup, tmp_path, "two", cluster=_cluster(client, setup), algo="optuna-tpe", seed=2, budget_evals=20)
    assert [r["x"] for r in a.records] == [r["x"] for r in b.records] and len(b.records) == 20


def test_resume_on_a_cluster_replays_and_extends(setup, tmp_path, client):
    serial = _run(setup, tmp_path, "serial", algo="nsga2", seed=1)
    _run(setup, tmp_path, "run", cluster=_cluster(client, setup), algo="nsga2", seed=1, budget_evals=13)
    resumed = run_sweep(config(algo="nsga2", seed=1), tmp_path / "run", evaluator=evaluator(setup), resume=True,
                        outputs=False, tensorboard=False, cluster=_cluster(client, setup))
    assert [r["x"] for r in resumed.records] == [r["x"] for r in serial.records]
    assert resumed.summary["replayed"] == 13 and resumed.summary["cluster"]["evaluated"] == 17


def test_pending_cuts_at_the_budget_and_skips_known_plans(setup, client):
    from experiments.sweep.problem import Archive

    ev = DaskEvaluator(evaluator(setup), client, factory=lambda: evaluator(setup))
    arch = Archive(setup.space, ev, objectives=("latency",), scales=[1.0], budget=3, quality="none")
    rng = __import__("numpy").random.default_rng(0)
    xs = [setup.space.random_vector(rng) for _ in range(6)]
    arch.evaluate(xs[0], algo="t")
    todo = pending(arch, [xs[0], xs[1], xs[1], *xs[2:]])
    assert [t.tolist() for t in todo] == [setup.space.repair(x).tolist() for x in xs[1:3]]
    metrics = ev.evaluate_many(todo)
    assert ev.evaluated == 3 and [m.to_dict() for m in metrics] == [evaluator(setup).evaluate(t).to_dict()
                                                                      for t in todo]
    ev.evaluate_many(todo)  # answered from the coordinator's cache
    assert ev.evaluated == 3 and ev.hits == 2


def test_worker_with_another_space_refuses(setup, client):
    other = SearchSpace.build(setup.loaded, setup.profile, knobs=("precision",))

    def wrong():
        return AnalyticEvaluator(setup.loaded, setup.profile, space=other)

    ev = DaskEvaluator(evaluator(setup), client, factory=wrong)
    with pytest.raises(InvalidArgumentError, match="not the coordinator's"):
        ev.evaluate(setup.space.default_vector())


def test_cluster_arguments_are_checked():
    with pytest.raises(InvalidArgumentError, match="not both"):
        check_cluster_args(2, "tcp://h:8786")
    with pytest.raises(InvalidArgumentError, match="`--workers` must be an integer >= 1"):
        check_cluster_args(0, None)
    with pytest.raises(InvalidArgumentError, match="tcp://10.0.0.5:8786"):
        check_cluster_args(None, "localhost")
    with pytest.raises(InvalidArgumentError, match="give `--workers N` too"):
        with sweep_cluster(gpus="0,1"):
            pass
    with sweep_cluster() as none:
        assert none is None


def test_cluster_without_device_resource_is_refused():
    from distributed import Client, LocalCluster

    from experiments.sweep.cluster import check_resources

    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster, Client(cluster) as c:
        with pytest.raises(InvalidArgumentError, match="--resources device=1"):
            check_resources(c)


def test_storage_needs_an_optuna_algorithm(setup, tmp_path):
    with pytest.raises(InvalidArgumentError, match="--algo optuna-nsga2"):
        run_sweep(config(algo="nsga2"), tmp_path / "x", evaluator=evaluator(setup), outputs=False,
                  tensorboard=False, optuna_storage="sqlite:///x.db")


# ---------------------------------------------------------------------------------------------- processes
@pytest.fixture(scope="module")
def model_config(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("dask_cli")
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=256)
    LlamaForCausalLM(cfg).eval().save_pretrained(root / "model")
    (root / "cfg.json").write_text(json.dumps({
        "model": str(root / "model"), "device": "h100-80gb", "evaluator": "analytic", "algo": "nsga2",
        "budget_evals": 24, "pop_size": 6, "quality": "none", "baselines": False}))
    return root / "cfg.json"


@pytest.mark.slow
def test_cli_sweep_on_worker_processes_equals_serial(model_config, tmp_path, capsys):
    from autosurgeon import cli

    assert cli.main(["sweep", "--config", str(model_config), "--out", str(tmp_path / "serial"), "--json"]) == 0
    assert cli.main(["sweep", "--config", str(model_config), "--out", str(tmp_path / "two"), "--json",
                     "--workers", "2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    two = json.loads(out[-1])
    assert len(two["cluster"]["by_worker"]) == 2 and two["cluster"]["evaluated"] == 25

    def xs(name):
        return [json.loads(line)["x"] for line in (tmp_path / name / "evals.jsonl").read_text().splitlines()]

    assert xs("two") == xs("serial") and len(xs("two")) == 24


@pytest.mark.slow
def test_killed_worker_loses_and_duplicates_nothing(model_config, tmp_path):
    from experiments.benchmarks.scaleout_chaos import WorkerKiller
    from experiments.sweep import load_config

    cfg = load_config(model_config).replace(budget_evals=60)
    serial = run_sweep(cfg, tmp_path / "serial", outputs=False, tensorboard=False)
    with sweep_cluster(workers=2) as cluster:
        killer = WorkerKiller(cluster.client, kills=1, seed=0, delay_s=(0.0, 0.2))
        killer.start()
        try:
            run = run_sweep(cfg, tmp_path / "killed", outputs=False, tensorboard=False, cluster=cluster)
        finally:
            killer.stop.set()
            killer.join()
        cluster.client.wait_for_workers(2, timeout=300)  # the nanny's replacement joined, not given up
    assert len(killer.killed) == 1 and killer.killed[0][1]  # a worker died holding an evaluation
    assert [r["x"] for r in run.records] == [r["x"] for r in serial.records]
    assert [r["metrics"] for r in run.records] == [r["metrics"] for r in serial.records]
    lines = (tmp_path / "killed" / "evals.jsonl").read_text().splitlines()
    assert len(lines) == 60 and len({json.dumps(json.loads(line)["x"]) for line in lines}) == 60
