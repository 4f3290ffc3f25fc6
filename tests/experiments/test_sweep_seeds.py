"""Baselines inside every search: seeded, eligible for the front, labelled; ids; outcome notes; budgets; registry."""
from __future__ import annotations

import json

import numpy as np
import pytest

from autosurgeon.errors import InvalidArgumentError
from experiments.sweep import registry, run_sweep
from experiments.sweep.hypervolume import front_indices, hypervolume
from experiments.sweep.ids import find_by_id, plan_id
from experiments.sweep.outcome import front_outcome
from experiments.sweep.runner import default_budget
from tests.experiments.test_sweep import config, evaluator, one_thread, setup  # noqa: F401  (fixtures)


@pytest.mark.parametrize("algo", ["nsga2", "random", "optuna-tpe"])
def test_every_algorithm_starts_from_the_baselines_and_keeps_them_eligible(setup, tmp_path, algo):
    res = run_sweep(config(algo=algo, budget_evals=24, baselines=True), tmp_path / algo,
                    evaluator=evaluator(setup), outputs=False, tensorboard=False)
    origins = [r["algo"] for r in res.records]
    n_base = sum(o.startswith("baseline:") for o in origins)
    assert origins[0] == "baseline:unmodified" and n_base >= 3
    assert all(o.startswith("baseline:") for o in origins[:n_base]) and set(origins[n_base:]) == {algo}
    s = res.summary
    # The front is everything's non-dominated set, so it never falls below the baselines'.
    assert res.front == front_indices(res.records)
    assert s["hypervolume"] >= s["hypervolume_baselines"] - 1e-12 > 0
    assert s["origins"][algo] == 24 - n_base and sum(s["front_origins"].values()) == len(res.front)
    assert [m["id"] for m in s["front"]] == [res.records[i]["id"] for i in res.front]
    on_disk = json.loads((tmp_path / algo / "baselines.json").read_text())["families"]
    assert "uniform" in on_disk and "unmodified" in on_disk


def test_nsga2_first_population_is_the_seeds(setup, tmp_path):
    """Generation 0 of NSGA-II re-proposes the seeds (free) instead of drawing as many random plans."""
    from experiments.sweep.seeds import baseline_seeds

    ev = evaluator(setup)
    seeds, _ = baseline_seeds(ev, knapsack_budgets=(), max_quality_loss=None)
    res = run_sweep(config(algo="nsga2", budget_evals=20, baselines=True, pop_size=8), tmp_path / "n",
                    evaluator=ev, outputs=False, tensorboard=False)
    n_unique = len({setup.space.repair(s.x).tobytes() for s in seeds})
    gen0 = [r for r in res.records if r["generation"] == 0]
    assert len(gen0) == max(0, 8 - n_unique)  # the rest of the first population only


def test_plan_ids_are_stable_hashes_and_find_by_prefix(setup, tmp_path):
    res = run_sweep(config(algo="random", budget_evals=10, baselines=True), tmp_path / "r",
                    evaluator=evaluator(setup), outputs=False, tensorboard=False)
    for r in res.records:
        assert r["id"] == plan_id(r["plan"]) == plan_id(setup.space.decode(np.asarray(r["x"])))
    assert len({r["id"] for r in res.records}) == len(res.records)
    target = res.records[5]
    assert find_by_id(res.records, target["id"][:7]) == 5
    with pytest.raises(InvalidArgumentError, match="matches no plan"):
        find_by_id(res.records, "not-an-id")


def _rec(algo: str, obj: list[float], feasible: bool = True) -> dict:
    return {"algo": algo, "objectives": obj, "feasible": feasible, "id": f"{abs(hash((algo, *obj))):08x}"[:8],
            "eval": 0, "quality_loss": None, "family": algo.split(":")[-1].split("-")[0]}


def test_outcome_says_when_every_search_member_is_dominated():
    records = [_rec("baseline:unmodified", [1.0, 1.0]), _rec("baseline:uniform-int8", [0.5, 0.4]),
               _rec("nsga2", [0.6, 0.5]), _rec("nsga2", [0.9, 0.45])]
    front = front_indices(records)
    out, notes = front_outcome(records, front, reference_point=[2.0, 2.0], scales=[1.0, 1.0])
    assert out["search_dominated"] is True and out["search_on_front"] == 0
    assert notes and "dominated" in notes[0] and "added nothing" in notes[0]
    assert out["hypervolume_baselines"] == pytest.approx(hypervolume([[0.5, 0.4]], [2.0, 2.0]))
    records.append(_rec("nsga2", [0.3, 0.9]))  # a trade-off no baseline has
    out, notes = front_outcome(records, front_indices(records), reference_point=[2.0, 2.0], scales=[1.0, 1.0])
    assert out["search_dominated"] is False and out["search_on_front"] == 1 and not notes
    assert out["front_origins"] == {"baseline:uniform-int8": 1, "nsga2": 1}


def test_default_budget_scales_with_the_evaluators_speed(setup, tmp_path):
    assert default_budget(1000.0) == 400 and default_budget(0.05) == 40 and default_budget(float("nan")) == 40
    assert default_budget(1.0, seconds=120) == 120 and default_budget(1.0, floor=150) == 150
    res = run_sweep(config(algo="random", budget_evals=None, baselines=True), tmp_path / "auto",
                    evaluator=evaluator(setup), outputs=False, tensorboard=False)
    saved = json.loads((tmp_path / "auto" / "config.json").read_text())["budget_evals"]
    assert isinstance(saved, int) and 40 <= saved <= 400 and res.summary["budget_evals"] == saved
    assert any("from the evaluator's speed" in n for n in res.summary["notes"])


def test_registry_lists_algorithms_and_refuses_unknown_ones():
    assert {"nsga2", "random", "optuna-nsga2", "optuna-tpe"} <= set(registry.names())
    with pytest.raises(InvalidArgumentError, match="`algo` must be one of .*nsga2.*experiments/sweep/algos"):
        registry.get("simulated-annealing")
    with pytest.raises(InvalidArgumentError, match="'baseline'"):
        registry.register("baseline-x")
    with pytest.raises(InvalidArgumentError, match="`algo` must be one of"):
        config(algo="simulated-annealing")


def test_uniform_repair_keeps_valid_vectors_and_redraws_invalid_entries_without_bias(setup):
    from experiments.sweep.operators import repair_uniform

    space = setup.space
    rng = np.random.default_rng(0)
    x = space.random_vector(rng)
    assert np.array_equal(repair_uniform(space, x, rng), x)  # valid: unchanged
    # A group-size variable whose precision is not int4 admits only its canonical choice; make its precision int4
    # and an out-of-mask group choice: the re-draws spread over every valid choice, not only the nearest.
    # A precision variable whose exec unit masks some choices, or any variable with a masked choice.
    gs = next((i for i in range(len(space.variables)) if not space.allowed(i, x)[0].all()
               and space.allowed(i, x)[0].sum() > 1), None)
    if gs is None:
        pytest.skip("no variable with both masked and several valid choices in this space")
    mask = space.allowed(gs, x)[0]
    valid, invalid = np.nonzero(mask)[0], np.nonzero(~mask)[0]
    seen = set()
    for _ in range(60):
        y = x.copy()
        y[gs] = invalid[0]
        z = repair_uniform(space, y, rng)
        assert space.is_valid(z)
        seen.add(int(z[gs]))
    assert seen <= set(valid.tolist()) and len(seen) > 1  # spread, where the nearest rule always picks one


def test_least_memory_baseline_holds_the_fronts_memory_end(setup, tmp_path):
    """The env's floor (GPU + CPU bytes, envs.smallest) is a baseline: no other baseline and no plan the search
    evaluates has less memory, and it is labelled by its origin."""
    from envs.smallest import smallest_budgeted
    from experiments.sweep.baselines import least_memory_vectors

    ev = evaluator(setup)
    least = least_memory_vectors(setup.space, setup.profile)
    floor, x = smallest_budgeted(setup.space, execution_tier="cpu")
    assert list(least) == ["least-memory"] and np.array_equal(least["least-memory"], setup.space.repair(x))
    res = run_sweep(config(algo="random", budget_evals=30, baselines=True), tmp_path / "lm", evaluator=ev,
                    outputs=False, tensorboard=False)
    rec = next(r for r in res.records if r["algo"] == "baseline:least-memory")
    assert rec["family"] == "least-memory" and rec["objectives"][1] == floor  # the evaluator's bytes = the floor's
    mem = [r["objectives"][1] for r in res.records]
    assert rec["objectives"][1] == min(mem) < res.records[0]["objectives"][1]
    assert any(m["origin"] == "baseline:least-memory" for m in res.summary["front"])


def test_seeds_beyond_the_reference_point_do_not_parent_the_first_population():
    """A seed outside the hypervolume's reference box adds nothing and stays out of NSGA-II's first population
    (it stays in the archive); if every seed is outside, all are kept."""
    from types import SimpleNamespace

    from experiments.sweep.seeds import initial_vectors

    archive = SimpleNamespace(F=lambda r: np.asarray(r["objectives"], dtype=np.float64))

    def rec(x, obj):
        return {"x": [x], "objectives": obj, "feasible": True}

    records = [rec(0, [1.0, 1.0, 1.0]), rec(1, [0.9, 0.3, 0.9]), rec(2, [28.0, 0.06, 9.0])]
    assert [v.tolist() for v in initial_vectors(archive, records)] == [[1], [2], [0]]  # non-dominated first
    assert [v.tolist() for v in initial_vectors(archive, records, [3.0, 1.1, 3.5])] == [[1], [0]]
    outside = [rec(3, [5.0, 0.5, 5.0]), rec(4, [4.0, 0.6, 4.0])]
    assert len(initial_vectors(archive, outside, [3.0, 1.1, 3.5])) == 2
