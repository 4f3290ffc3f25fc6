"""NSGA-II's unit-aware variation: units travel whole, moves stay valid, the archive's plans are duplicates,
local moves start from the front; and shape models sweep on the meta device."""
from __future__ import annotations

import numpy as np
import pytest

from autosurgeon.errors import InvalidArgumentError
from experiments.sweep import SweepConfig
from experiments.sweep.local import front_neighbours
from experiments.sweep.problem import Archive
from experiments.sweep.unit_operators import ArchiveDuplicates, UnitCrossover, UnitMutation
from experiments.sweep.units import UnitStructure
from tests.experiments.test_sweep import evaluator, one_thread, setup  # noqa: F401  (fixtures)


def test_structure_groups_each_layer_with_its_group_size(setup):
    space = setup.space
    s = UnitStructure.of(space)
    knobs = [space.variables[i].knob for i in s.heads]
    assert "group_size" not in knobs and {"precision", "placement"} <= set(knobs)
    for head, followers in s.followers.items():
        assert space.variables[head].knob == "precision"
        assert all(space.variables[f].parent == head for f in followers)
    assert sorted(i for g in s.genes for i in g) == list(range(len(space)))  # every variable in exactly one unit


def test_mutation_changes_something_and_always_yields_valid_plans(setup):
    space = setup.space
    mut = UnitMutation(space, segment_prob=0.5)
    rng = np.random.default_rng(0)
    x = space.default_vector()
    changed = 0
    for _ in range(200):
        y = mut.mutate(x, rng)
        assert space.is_valid(y)
        changed += int(not np.array_equal(x, y))
        x = y
    assert changed >= 150  # a move is a change, unless a repair undoes it


def test_mutation_reaches_int4_group_sizes(setup):
    """Group sizes are reachable through their layer (followers are re-drawn), not lost to repair."""
    space = setup.space
    mut = UnitMutation(space)
    rng = np.random.default_rng(1)
    gs = [i for i, v in enumerate(space.variables) if v.knob == "group_size"]
    seen = set()
    x = space.default_vector()
    for _ in range(400):
        x = mut.mutate(x, rng)
        seen |= {int(x[i]) for i in gs}
    assert len(seen) >= 3


def test_crossover_keeps_each_unit_from_one_parent(setup):
    space = setup.space
    rng = np.random.default_rng(2)
    a, b = space.random_vector(rng), space.random_vector(rng)
    X = np.stack([np.stack([a] * 16), np.stack([b] * 16)])
    kids = UnitCrossover(space)._do(None, X, random_state=rng)
    structure = UnitStructure.of(space)
    for child in kids.reshape(-1, len(space)):
        for gene in structure.genes:
            g = list(gene)
            assert np.array_equal(child[g], a[g]) or np.array_equal(child[g], b[g])
    assert any(not np.array_equal(c, a) and not np.array_equal(c, b) for c in kids.reshape(-1, len(space)))


def _archive(setup, budget=50):
    ev = evaluator(setup)
    ref = ev.evaluate(setup.space.default_vector())
    return Archive(setup.space, ev, objectives=("latency", "memory", "energy"),
                   scales=[ref.objective(k) for k in ("latency", "memory", "energy")], budget=budget, quality="none")


def test_archive_plans_count_as_duplicates_against_a_population(setup):
    from pymoo.core.population import Population

    archive = _archive(setup)
    rng = np.random.default_rng(3)
    seen, new = setup.space.default_vector(), setup.space.random_vector(rng)
    archive.evaluate(seen, algo="t")
    off = Population.new(X=np.stack([seen, new, new]))
    pop = Population.new(X=np.stack([setup.space.random_vector(rng)]))
    kept = ArchiveDuplicates(archive).do(off, pop)
    assert [list(x) for x in kept.get("X")] == [list(new)]
    # The first population's seeds are in the archive on purpose: against itself only, they stay.
    assert len(ArchiveDuplicates(archive).do(Population.new(X=np.stack([seen, new])))) == 2


def test_front_neighbours_are_new_valid_and_one_move_from_the_front(setup):
    archive = _archive(setup)
    rng = np.random.default_rng(4)
    for _ in range(6):
        archive.evaluate(setup.space.random_vector(rng), algo="t")
    mut = UnitMutation(setup.space)
    out = front_neighbours(archive, mut, np.random.default_rng(5), 5)
    assert len(out) == 5 and len({x.tobytes() for x in out}) == 5
    assert all(archive.lookup(x) is None and setup.space.is_valid(x) for x in out)
    assert front_neighbours(_archive(setup), mut, rng, 3) == []  # an empty archive has no front


def test_a_shape_model_sweeps_on_the_meta_device_and_refuses_a_quality_constraint():
    from experiments.sweep import build_evaluator

    ev = build_evaluator(SweepConfig(model="llama-7b-16l-shape", device="rtx-4090", evaluator="analytic",
                                     quality="none", knobs=("precision", "placement")))
    x = ev.space.default_vector()
    assert ev.evaluate(x).latency_s > 0
    with pytest.raises(InvalidArgumentError, match="quality = 'none'"):
        build_evaluator(SweepConfig(model="llama-7b-16l-shape", device="rtx-4090", evaluator="analytic",
                                    quality="constraint"))


def test_nsga2_with_local_moves_resumes_as_if_never_interrupted(setup, tmp_path):
    """The front the local moves start from, and the duplicates, are what the first attempt saw at that point."""
    from experiments.sweep import load_run, run_sweep
    from tests.experiments.test_sweep import Crash, config, counting

    kw = dict(algo="nsga2", seed=1, budget_evals=40, extra={"nsga2_local_share": 0.5})
    full = run_sweep(config(**kw), tmp_path / "full", evaluator=evaluator(setup), outputs=False, tensorboard=False)
    assert len({tuple(r["x"]) for r in full.records}) == 40
    with pytest.raises(Crash):
        run_sweep(config(**kw), tmp_path / "run", evaluator=counting(evaluator(setup), crash_after=25),
                  outputs=False, tensorboard=False)
    assert len(load_run(tmp_path / "run")[1]) == 24
    res = run_sweep(config(**kw), tmp_path / "run", resume=True, evaluator=evaluator(setup), outputs=False,
                    tensorboard=False)
    assert [r["x"] for r in res.records] == [r["x"] for r in full.records]


def test_nsga2_stops_cleanly_when_mating_proposes_nothing(setup, tmp_path, monkeypatch, caplog):
    """pymoo's ask() returns None once mating finds no unseen offspring (seen on digits-cnn at 2000 evaluations):
    the sweep ends with what it has and says why, instead of failing on the missing population."""
    from pymoo.algorithms.moo.nsga2 import NSGA2

    from experiments.sweep import run_sweep
    from tests.experiments.test_sweep import config

    real_ask, calls = NSGA2.ask, []

    def ask_then_nothing(self):  # noqa: ANN001, ANN202  (pymoo's signature)
        calls.append(1)
        return real_ask(self) if len(calls) == 1 else None

    monkeypatch.setattr(NSGA2, "ask", ask_then_nothing)
    res = run_sweep(config(algo="nsga2", seed=1, budget_evals=40, extra={"nsga2_local_share": 0.5}), tmp_path / "x",
                    evaluator=evaluator(setup), outputs=False, tensorboard=False)
    assert 0 < len(res.records) < 40
    assert "mating proposed no unseen plan" in caplog.text


def test_local_share_out_of_range_is_refused(setup, tmp_path):
    from experiments.sweep import run_sweep
    from tests.experiments.test_sweep import config

    with pytest.raises(InvalidArgumentError, match="nsga2_local_share"):
        run_sweep(config(algo="nsga2", extra={"nsga2_local_share": 1.5}), tmp_path / "x", evaluator=evaluator(setup),
                  outputs=False, tensorboard=False)
