"""Sweep engine: the problem's encode/evaluate path, seeded determinism, resume without loss, hypervolume,
front picking, configs. Analytic evaluator on a tiny random Llama on a paper CPU profile (fast)."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from autosurgeon.errors import InvalidArgumentError
from autosurgeon.evaluate import AnalyticEvaluator
from autosurgeon.plan import Plan
from autosurgeon.hardware.profile import ComputeUnit, CpuInfo, HardwareProfile
from autosurgeon.space.search_space import SearchSpace
from autosurgeon.zoo import LoadedModel
from experiments.sweep import SweepConfig, load_config, load_run, run_sweep
from experiments.sweep.front import parse_preference, pick
from experiments.sweep.hypervolume import evals_to_reach, front_indices, hv_curve, hypervolume, non_dominated
from experiments.sweep.problem import Archive, BudgetReached, SurgeryProblem
from experiments.sweep.store import RunStore

KNOBS = ("precision", "group_size", "placement")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
    loaded = LoadedModel(name="tiny", model=LlamaForCausalLM(cfg).eval(), task="causal-lm", source="factory")
    profile = HardwareProfile(
        name="host", measured=False,
        cpu=CpuInfo(model="host", arch="x86_64", isa=("avx2",), physical_cores=2, logical_cores=2,
                    memory_bytes=2**34),
        units=(ComputeUnit(name="cpu", kind="cpu", memory_bytes=2**34, memory_bandwidth=1e10,
                           gemm_flops={"float32": 1e11}),),
        links={"disk_read": 1e9})
    space = SearchSpace.build(loaded, profile, knobs=KNOBS)
    # A stand-in sensitivity table: every quantized linear costs KL 0.004 at int4, 0.001 otherwise, so
    # the quality constraint (loss <= 1 %) is met by some plans and not by others.
    names = [v.name for v in space.variables if v.knob == "precision"]
    divergence = {(n, p): (0.004 if p == "int4" else 0.001) for n in names
                  for p in ("bfloat16", "float16", "int8", "int4", "int8-dynamic")}
    table = SimpleNamespace(params={n: 1 for n in names}, divergence=divergence, key="stub-table")
    return SimpleNamespace(loaded=loaded, profile=profile, space=space, table=table)


def evaluator(setup, *, quality: bool = False) -> AnalyticEvaluator:
    return AnalyticEvaluator(setup.loaded, setup.profile, space=setup.space,
                             sensitivity=setup.table if quality else None)


def config(**kw) -> SweepConfig:
    base = dict(model="tiny", device="host", evaluator="analytic", budget_evals=30, pop_size=8, quality="none",
                baselines=False, hv_at=(10, 30))
    base.update(kw)
    return SweepConfig(**base)


def sweep(setup, tmp_path, name, *, ev=None, quality=False, overwrite=False, **kw):
    ev = ev if ev is not None else evaluator(setup, quality=quality)
    return run_sweep(config(**kw), tmp_path / name, evaluator=ev, outputs=False, tensorboard=False,
                     overwrite=overwrite)


# ---------------------------------------------------------------------------------------------- problem
def test_archive_repairs_evaluates_records_and_persists(setup, tmp_path):
    ev = evaluator(setup, quality=True)
    space = setup.space
    store = RunStore(tmp_path / "run")
    store.open(resume=False)
    ref = ev.evaluate(space.default_vector())
    scales = [ref.objective(n) for n in ("latency", "memory", "energy")]
    arch = Archive(space, ev, objectives=("latency", "memory", "energy"), scales=scales, budget=2,
                   quality="constraint", max_quality_loss=0.01, store=store)
    problem = SurgeryProblem(arch)
    assert problem.n_var == len(space) and problem.n_ieq_constr == 1
    assert np.array_equal(problem.xu, space.nvec - 1) and np.all(problem.xl == 0)
    # An out-of-range, masked vector: the archive evaluates and records its repair.
    bad = space.nvec.copy()
    out: dict = {}
    problem._evaluate(bad, out)
    rec = arch.records[0]
    fixed = space.repair(bad)
    assert rec["x"] == fixed.tolist() and space.is_valid(fixed)
    m = ev.evaluate(fixed)
    assert rec["objectives"] == list(m.objectives(("latency", "memory", "energy")))
    np.testing.assert_allclose(out["F"], np.array(rec["objectives"]) / scales, rtol=1e-12)
    assert out["G"][0] == pytest.approx(m.quality_loss - 0.01, abs=1e-12)
    assert rec["feasible"] == (m.quality_loss <= 0.01)
    assert set(rec) >= {"eval", "algo", "generation", "x", "plan", "metrics", "objectives", "feasible"}
    assert space.encode(Plan.from_dict(rec["plan"])).tolist() == rec["x"]
    # Persisted as it arrived; a re-proposal is answered from memory, uncounted.
    assert [json.loads(line)["x"] for line in (tmp_path / "run" / "evals.jsonl").read_text().splitlines()] == [rec["x"]]
    assert arch.evaluate(fixed, algo="again") is rec and len(arch) == 1
    arch.evaluate(space.default_vector(), algo="x")
    with pytest.raises(BudgetReached):
        arch.evaluate(np.ones(len(space), dtype=np.int64), algo="x")
    # the all-int4 plan breaks the 1 % quality bound (33 units x KL 0.004 -> ~3 %): infeasible
    int4 = space.default_vector()
    for i, v in enumerate(space.variables):
        if v.knob == "precision" and "int4" in v.choices and v.mask[v.choices.index("int4")]:
            int4[i] = v.choices.index("int4")
    assert ev.evaluate(space.repair(int4)).quality_loss > 0.01


# ---------------------------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("algo", ["nsga2", "random", "optuna-nsga2"])
def test_same_seed_same_records(setup, tmp_path, algo):
    a = sweep(setup, tmp_path, "a", algo=algo, seed=3)
    b = sweep(setup, tmp_path, "b", algo=algo, seed=3)
    c = sweep(setup, tmp_path, "c", algo=algo, seed=4)
    assert len(a.records) == len(b.records) == 30
    assert [r["x"] for r in a.records] == [r["x"] for r in b.records]
    assert [r["objectives"] for r in a.records] == [r["objectives"] for r in b.records]
    assert [r["x"] for r in a.records] != [r["x"] for r in c.records]
    assert len({tuple(r["x"]) for r in a.records}) == 30  # distinct plans only
    assert a.summary["hypervolume"] == b.summary["hypervolume"] > 0


def test_nsga2_generations_and_quality_constraint(setup, tmp_path):
    res = run_sweep(config(algo="nsga2", quality="constraint", budget_evals=32), tmp_path / "q",
                    evaluator=evaluator(setup, quality=True), outputs=False, tensorboard=False)
    gens = [r["generation"] for r in res.records]
    assert gens[:8] == [0] * 8 and max(gens) >= 2 and gens == sorted(gens)
    assert all(r["feasible"] == (r["quality_loss"] <= 0.01) for r in res.records)
    assert all(res.records[i]["feasible"] for i in res.front)
    s = res.summary
    assert s["evaluations"] == 32 and s["status"] == "complete" and s["reference_point"] == [3.0, 1.1, 3.5]
    assert set(s["normaliser"]["scales"]) == {"latency", "memory", "energy"}


# ---------------------------------------------------------------------------------------------- resume
class Crash(RuntimeError):
    pass


def counting(ev, *, crash_after: int | None = None):
    """Wrap ev._evaluate: count measurements; raise Crash on measurement number crash_after + 1."""
    real = ev._evaluate
    ev.measured = []

    def wrapped(plan, x):
        if crash_after is not None and len(ev.measured) >= crash_after:
            raise Crash("simulated crash")
        ev.measured.append(tuple(int(v) for v in x))
        return real(plan, x)

    ev._evaluate = wrapped
    return ev


@pytest.mark.parametrize("algo", ["nsga2", "random", pytest.param("optuna-tpe", marks=pytest.mark.slow)])
def test_resume_after_crash_loses_nothing(setup, tmp_path, algo):
    kw = dict(algo=algo, seed=1, budget_evals=24)
    full = sweep(setup, tmp_path, "full", **kw)
    first = counting(evaluator(setup), crash_after=11)  # the reference + 10 sweep evaluations, then a crash
    with pytest.raises(Crash):
        sweep(setup, tmp_path, "run", ev=first, **kw)
    _, records, _, summary = load_run(tmp_path / "run")
    assert len(records) == 10 and summary["status"] == "interrupted"
    second = counting(evaluator(setup))  # a fresh process: nothing in memory
    res = run_sweep(config(**kw), tmp_path / "run", resume=True, evaluator=second, outputs=False, tensorboard=False)
    assert len(res.records) == 24 and res.summary["status"] == "complete"
    assert len(second.measured) == 14  # only the missing ones; the reference came from reference.json
    assert not set(first.measured[1:]) & set(second.measured)  # no plan measured twice
    assert [r["x"] for r in res.records] == [r["x"] for r in full.records]  # as if never interrupted
    assert res.summary["replayed"] == 10 and res.summary["attempts"] == 2
    assert res.summary["hypervolume"] == pytest.approx(full.summary["hypervolume"], rel=1e-12)
    # More budget on a second resume continues past the old one.
    more = run_sweep(config(**{**kw, "budget_evals": 30}), tmp_path / "run", resume=True,
                     evaluator=counting(evaluator(setup)), outputs=False, tensorboard=False)
    assert len(more.records) == 30 and [r["x"] for r in more.records[:24]] == [r["x"] for r in full.records]


@pytest.mark.parametrize("algo", ["nsga2", "random", "optuna-nsga2"])
def test_long_resume_and_extension_reach_the_budget_and_equal_one_run(setup, tmp_path, algo):
    # More replayed generations than max_stall (20): they count as progress, so the resumed run finishes.
    kw = dict(algo=algo, seed=2, pop_size=2)
    full = sweep(setup, tmp_path, "full", budget_evals=90, **kw)
    assert len(full.records) == 90
    first = counting(evaluator(setup), crash_after=1 + 70)
    with pytest.raises(Crash):
        sweep(setup, tmp_path, "run", ev=first, budget_evals=90, **kw)
    res = run_sweep(config(budget_evals=90, **kw), tmp_path / "run", resume=True, evaluator=evaluator(setup),
                    outputs=False, tensorboard=False)
    assert res.summary["status"] == "complete" and res.summary["replayed"] == 70
    assert [r["x"] for r in res.records] == [r["x"] for r in full.records]
    assert [r["eval"] for r in res.records] == list(range(90))  # none lost, none duplicated
    # A finished shorter run extended with a larger budget equals the longer run from the start.
    sweep(setup, tmp_path, "short", budget_evals=45, **kw)
    ext = run_sweep(config(budget_evals=90, **kw), tmp_path / "short", resume=True, evaluator=evaluator(setup),
                    outputs=False, tensorboard=False)
    assert len(ext.records) == 90 and [r["x"] for r in ext.records] == [r["x"] for r in full.records]


def test_a_second_sweep_on_a_locked_folder_is_refused_and_a_failed_setup_leaves_nothing(setup, tmp_path):
    from autosurgeon.files.runfolder import RunFolderBusyError, RunFolderLock

    with RunFolderLock(tmp_path / "busy"):
        with pytest.raises(RunFolderBusyError, match=r"`--out` .*busy' is in use by pid \d+ on host"):
            sweep(setup, tmp_path, "busy", algo="random", budget_evals=3)
    assert sweep(setup, tmp_path, "busy", algo="random", budget_evals=3).records  # the lock went with its holder
    with pytest.raises(InvalidArgumentError, match="`--storage` holds an Optuna study"):
        run_sweep(config(algo="random", budget_evals=3), tmp_path / "refused", evaluator=evaluator(setup),
                  outputs=False, tensorboard=False, optuna_storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert not (tmp_path / "refused").exists()  # refused after set-up: no half-made folder refused for ever
    assert sweep(setup, tmp_path, "busy", algo="random", budget_evals=3, overwrite=True).records


def test_resume_refuses_changed_settings_and_empty_run_refused(setup, tmp_path):
    sweep(setup, tmp_path, "run", algo="random", budget_evals=5)
    with pytest.raises(InvalidArgumentError, match="already holds a sweep; pass --resume to continue it, --overwrite"):
        sweep(setup, tmp_path, "run", algo="random", budget_evals=5)
    with pytest.raises(InvalidArgumentError, match=r"settings \['seed'\] differ"):
        run_sweep(config(algo="random", budget_evals=5, seed=9), tmp_path / "run", resume=True,
                  evaluator=evaluator(setup), outputs=False, tensorboard=False)
    with pytest.raises(InvalidArgumentError, match="holds no sweep"):
        run_sweep(config(), tmp_path / "nothing", resume=True, evaluator=evaluator(setup))


# ---------------------------------------------------------------------------------------------- hypervolume
def test_hypervolume_of_known_fronts():
    # Two points in 2-D against (2, 2): 0.5*1.5 + 1.5*0.5 - 0.5*0.5 = 1.25.
    assert hypervolume([[0.5, 1.5], [1.5, 0.5]], [2.0, 2.0]) == pytest.approx(1.25, abs=1e-12)
    # Same after normalisation by scales (raw values twice as large).
    assert hypervolume([[1.0, 3.0], [3.0, 1.0]], [2.0, 2.0], scales=[2.0, 2.0]) == pytest.approx(1.25, abs=1e-12)
    # A dominated point and a point beyond the reference point add nothing; an empty set has 0.
    assert hypervolume([[0.5, 1.5], [1.5, 0.5], [1.6, 1.6], [0.1, 2.5]], [2.0, 2.0]) == pytest.approx(1.25)
    assert hypervolume([], [2.0, 2.0]) == 0.0
    assert hypervolume([[1.0, 1.0, 1.0]], [2.0, 3.0, 4.0]) == pytest.approx(1 * 2 * 3)
    assert non_dominated([[1, 2], [2, 1], [2, 2], [1, 2]]) == [0, 1]


def test_hv_curve_and_evals_to_reach():
    recs = [{"objectives": o, "feasible": f} for o, f in
            (([1.5, 1.5], True), ([0.5, 0.5], False), ([0.5, 1.5], True), ([1.5, 0.5], True))]
    curve = hv_curve(recs, [2.0, 2.0], [1.0, 1.0], [1, 2, 3, 4])
    assert curve == pytest.approx({1: 0.25, 2: 0.25, 3: 0.75, 4: 1.25})
    assert evals_to_reach(recs, 0.75, [2.0, 2.0], [1.0, 1.0]) == 3
    assert evals_to_reach(recs, 2.0, [2.0, 2.0], [1.0, 1.0]) is None
    assert front_indices(recs) == [2, 3]


# ---------------------------------------------------------------------------------------------- front picking
def _front_records():
    # latency (s), memory (bytes), energy (J)
    objs = [[1.0, 100.0, 1.0], [2.0, 50.0, 2.0], [4.0, 20.0, 3.0], [5.0, 200.0, 5.0]]
    return [{"eval": i, "objectives": o, "feasible": True} for i, o in enumerate(objs)]


def test_pick_by_budget_and_preference():
    recs = _front_records()
    front = front_indices(recs)
    assert front == [0, 1, 2]
    names, scales = ["latency", "memory", "energy"], [1.0, 100.0, 1.0]
    assert pick(recs, front, names, scales, budget_memory=60) == 1  # fastest within 60 B
    assert pick(recs, front, names, scales, budget_memory=1000) == 0
    assert pick(recs, front, names, scales, preference={"memory": 1.0}) == 2
    # normalised scores: 0.2*1 + 0.8*1 = 1.0, 0.2*2 + 0.8*0.5 = 0.8, 0.2*4 + 0.8*0.2 = 0.96
    assert pick(recs, front, names, scales, preference={"latency": 0.2, "memory": 0.8}) == 1
    assert pick(recs, front, names, scales, budget_memory=60, preference={"energy": 1.0}) == 1
    with pytest.raises(InvalidArgumentError, match="smallest needs 20 B"):
        pick(recs, front, names, scales, budget_memory=10)
    with pytest.raises(InvalidArgumentError, match="no feasible evaluation"):
        pick(recs, [], names, scales, budget_memory=10)


@pytest.mark.parametrize("text, match", [
    ("latency=0.6,memory=0.3", "must sum to 1, got 0.9"),
    ("latency=-0.5,memory=1.5", "must be >= 0"),
    ("latency=0.5,speed=0.5", "unknown objective 'speed'"),
    ("latency", "look like latency=0.6"),
    ("latency=abc", "must be a number"),
    ("", "is empty"),
])
def test_parse_preference_errors(text, match):
    with pytest.raises(InvalidArgumentError, match=match):
        parse_preference(text, ["latency", "memory", "energy"])


def test_parse_preference_ok():
    assert parse_preference("latency=0.6, memory=0.3,energy=0.1", ["latency", "memory", "energy"]) == \
        {"latency": 0.6, "memory": 0.3, "energy": 0.1}


# ---------------------------------------------------------------------------------------------- configs
def test_shipped_configs_load_and_validate(tmp_path):
    from pathlib import Path

    paths = sorted(Path(__file__).resolve().parents[2].joinpath("experiments", "configs").glob("*.json"))
    assert len(paths) >= 4
    names = {load_config(p).name for p in paths}
    assert {"tiny-llama-cpu", "tiny-llama-h100", "tiny-llama-jetson-orin", "digits-cnn-cpu"} <= names
    for p in paths:
        c = load_config(p)
        assert c.budget_evals > 0 and len(c.reference_point) == len(c.objective_names)
    toml = tmp_path / "x.toml"
    toml.write_text('model = "tiny-llama"\nalgo = "random"\nreference_point = [2.0, 1.0, 2.0]\n')
    c = load_config(toml)
    assert (c.name, c.algo, c.reference_point) == ("x", "random", (2.0, 1.0, 2.0))
    assert SweepConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("kw, match", [
    (dict(algo="cmaes"), "`algo` must be one of"),
    (dict(budget_evals=0), "`budget_evals`"),
    (dict(reference_point=[1.0, 2.0]), "must hold 3 positive numbers"),
    (dict(quality="objective"), "must hold 4 positive numbers"),
    (dict(max_quality_loss=-1), "`max_quality_loss`"),
    (dict(pop_size=1), "`pop_size`"),
])
def test_config_errors(kw, match):
    with pytest.raises(InvalidArgumentError, match=match):
        SweepConfig(model="tiny-llama", **kw)


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": "tiny-llama", "budget": 3}')
    with pytest.raises(InvalidArgumentError, match=r"unknown key\(s\) \['budget'\]"):
        load_config(bad)
    bad.write_text("{not json")
    with pytest.raises(InvalidArgumentError, match="not valid JSON"):
        load_config(bad)
    with pytest.raises(InvalidArgumentError, match="is not a file"):
        load_config(tmp_path / "missing.json")


# ---------------------------------------------------------------------------------------------- baselines, warm start
def test_uniform_and_greedy_fill_baselines(setup):
    from autosurgeon.cost.footprint import plan_memory
    from experiments.sweep.algorithms import greedy_fill_vectors, uniform_vectors

    space = setup.space
    uni = uniform_vectors(space)
    assert {"uniform-float32", "uniform-int8", "uniform-int4"} <= set(uni)
    assert np.array_equal(uni["uniform-float32"], space.default_vector())
    for x in uni.values():
        assert space.is_valid(x)
        assert not any("<-" in str(space.variables[i].choices[v]) for i, v in enumerate(x))  # all resident
    full = sum(plan_memory(space, space.default_vector()).get(t, 0) for t in ("gpu", "cpu"))
    greedy = greedy_fill_vectors(space, (0.6, 0.9))
    for label, x in greedy.items():
        share = int(label.rsplit("-", 1)[1][:-1]) / 100
        assert space.is_valid(x)
        assert sum(plan_memory(space, x).get(t, 0) for t in ("gpu", "cpu")) <= share * full
        streamed = [("<-" in space.variables[i].choices[v]) for i, v in enumerate(x)
                    if space.variables[i].knob == "placement"]
        assert streamed == sorted(streamed)  # resident blocks first, in model order (accelerate-style)


@pytest.mark.slow
def test_baselines_and_quality_objective(setup, tmp_path):
    from autosurgeon.quality.sensitivity import measure_sensitivity

    # The knapsack needs a real table (its options come from the table's measured precisions).
    table = measure_sensitivity(setup.loaded, precisions=("int8", "int4"), hessian_samples=0, use_cache=False)
    ev = AnalyticEvaluator(setup.loaded, setup.profile, space=setup.space, sensitivity=table)
    res = run_sweep(config(algo="random", budget_evals=30, baselines=True, quality="objective",
                           reference_point=[3.0, 1.1, 3.5, 2.0]),
                    tmp_path / "b", evaluator=ev, outputs=False, tensorboard=False)
    fams = res.baselines
    assert "uniform" in fams and "greedy-fill" in fams and "knapsack" in fams
    labels = {r["label"] for r in fams["uniform"]}
    assert {"uniform-float32", "uniform-int8", "uniform-int4"} <= labels
    for recs in fams.values():
        for r in recs:
            assert setup.space.is_valid(r["x"]) and len(r["objectives"]) == 4
    greedy = fams["greedy-fill"][0]
    assert any("<-" in str(setup.space.variables[i].choices[v]) for i, v in enumerate(greedy["x"]))
    assert len(res.records) == 30  # baselines are inside the search's budget, evaluated first
    n_base = sum(r["algo"].startswith("baseline:") for r in res.records)
    assert n_base >= 5 and all(r["algo"].startswith("baseline:") for r in res.records[:n_base])
    assert res.records[0]["algo"] == "baseline:unmodified"
    assert res.summary["hypervolume"] >= res.summary["hypervolume_baselines"] > 0
    assert res.summary["objectives"] == ["latency", "memory", "energy", "quality"]


def test_warm_start_seeds_the_first_generation(setup, tmp_path):
    markov = pytest.importorskip("agents.markov")
    space = setup.space
    rng = np.random.default_rng(0)
    model = markov.MarkovPlacementModel().fit([(space, space.random_vector(rng)) for _ in range(5)])
    path = model.save(tmp_path / "m.json")
    res = sweep(setup, tmp_path, "w", algo="nsga2", warm_start=str(path), budget_evals=16)
    origins = [r["algo"] for r in res.records]
    n = origins.count("markov")
    assert n >= 1 and origins[:n] == ["markov"] * n and set(origins[n:]) == {"nsga2"}
    # Every algorithm starts from the seeds: random search too.
    res = sweep(setup, tmp_path, "w2", algo="random", warm_start=str(path), budget_evals=n + 2)
    assert [r["algo"] for r in res.records] == ["markov"] * n + ["random"] * 2


def test_uniform_init_population_opens_with_the_uniform_plans(setup, tmp_path):
    from experiments.sweep.algorithms import uniform_vectors

    res = sweep(setup, tmp_path, "u", algo="nsga2", init_population="uniform", budget_evals=12)
    seeds = [setup.space.default_vector().tolist()]
    for x in uniform_vectors(setup.space).values():
        if x.tolist() not in seeds:
            seeds.append(x.tolist())
    assert [r["x"] for r in res.records[:len(seeds)]] == seeds
    assert {r["algo"] for r in res.records[:len(seeds)]} <= {"baseline:unmodified"} | {
        f"baseline:{k}" for k in uniform_vectors(setup.space)}
    assert {r["algo"] for r in res.records[len(seeds):]} == {"nsga2"}
    with pytest.raises(InvalidArgumentError, match="`init_population` must be one of"):
        config(init_population="best")
