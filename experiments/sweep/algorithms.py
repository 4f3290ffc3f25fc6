"""The sweep's search algorithms and baselines, all evaluating through one ``Archive`` (same evaluator, same budget).

* ``nsga2`` — pymoo NSGA-II: initial population from ``space.random_vector`` (or a warm start's vectors),
  uniform crossover (``UX``: each integer gene from either parent, so no rounding is needed), random-reset
  mutation within the static masks, ``space.repair`` after both, duplicate elimination, seeded through
  pymoo's ``random_state``.
* ``random`` — ``space.random_vector`` draws (uniform per variable in variable order, conditional masks).
* ``optuna-nsga2`` / ``optuna-tpe`` — Optuna's ``NSGAIISampler`` / ``TPESampler`` (multi-objective), one
  ``IntDistribution(0, n-1)`` per variable via ask/tell; a suggestion is repaired before evaluation and
  the repaired vector is stored as the trial's ``x_repaired`` user attribute; the constraints (quality
  bound, power cap) go through the samplers' ``constraints_func``.
* Baselines (:func:`baseline_vectors`): uniform precision (every precision unit at one precision, resident),
  accelerate-style greedy fill (float32; blocks resident in model order while a memory budget lasts, the
  rest streamed), and the sensitivity knapsack (``autosurgeon.planners.knapsack``) at a few budgets.

Each driver stops when the archive's budget of distinct evaluations is spent, or after ``max_stall``
consecutive rounds that proposed nothing new (a converged population), which is logged. A round answered
from a resumed run's records (``Archive.replayed`` grew) is progress, not a stall: replaying a long run
must reach the point where it stopped, then go on to the (possibly extended) budget.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from autosurgeon._logging import get_logger
from autosurgeon.errors import InvalidArgumentError
from experiments.sweep.problem import (
    Archive,
    BudgetReached,
    ResetMutation,
    SpaceRepair,
    SpaceSampling,
    SurgeryProblem,
)

logger = get_logger(__name__)

OnGeneration = Callable[[int, Archive, int], None]  # (generation, archive, new records this generation)


def _noop(gen: int, archive: Archive, new: int) -> None:
    return None


def run_nsga2(archive: Archive, *, pop_size: int, seed: int, initial: Sequence[np.ndarray] = (),
              on_generation: OnGeneration = _noop, max_stall: int = 20, label: str | None = None) -> int:
    """pymoo NSGA-II until the budget is spent; returns the generations run.

    ``initial`` vectors open the first population (the rest random); ``label`` names the records' ``algo``
    (default ``nsga2``, or ``nsga2-warm`` with initial vectors).
    """
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.operators.crossover.ux import UX
    from pymoo.core.termination import NoTermination

    space = archive.space
    problem = SurgeryProblem(archive, algo=label or ("nsga2" if not initial else "nsga2-warm"))
    algorithm = NSGA2(pop_size=pop_size, sampling=SpaceSampling(space, initial), crossover=UX(),
                      mutation=ResetMutation(space), repair=SpaceRepair(space), eliminate_duplicates=True)
    algorithm.setup(problem, termination=NoTermination(), seed=seed, verbose=False)
    gen = stall = 0
    while not archive.exhausted:
        problem.generation = gen
        before, replayed = len(archive), archive.replayed
        pop = algorithm.ask()
        try:
            algorithm.evaluator.eval(problem, pop)
        except BudgetReached:
            on_generation(gen, archive, len(archive) - before)
            break
        algorithm.tell(infills=pop)
        new = len(archive) - before
        on_generation(gen, archive, new)
        # A generation answered from a resumed run's records is progress too (it replays the interrupted run).
        stall = 0 if new or archive.replayed > replayed else stall + 1
        gen += 1
        if stall >= max_stall:
            logger.warning("nsga2: %d generations proposed no new plan; stopping at %d of %d evaluations",
                           stall, len(archive), archive.budget)
            break
    return gen + 1


def run_random(archive: Archive, *, seed: int, batch: int, on_generation: OnGeneration = _noop,
               max_stall: int = 1000) -> int:
    """Uniform random valid plans until the budget is spent; every ``batch`` evaluations make one 'generation'."""
    from experiments.sweep.distributed import batched_draws

    rng = np.random.default_rng(seed)
    draws = batched_draws(archive, lambda: archive.space.random_vector(rng), batch)  # the serial draw sequence
    stall = n_new = 0
    while not archive.exhausted:
        before, replayed = len(archive), archive.replayed
        archive.evaluate(next(draws), algo="random", generation=before // batch)
        if archive.replayed > replayed:  # a resumed run's record, replayed: progress, not a repeat
            stall = 0
            continue
        if len(archive) == before:
            stall += 1
            if stall >= max_stall:
                logger.warning("random: %d draws in a row were seen before; stopping", stall)
                break
            continue
        stall, n_new = 0, n_new + 1
        if len(archive) % batch == 0:
            on_generation(len(archive) // batch - 1, archive, n_new)
            n_new = 0
    if n_new:
        on_generation(len(archive) // batch, archive, n_new)
    return -(-len(archive) // batch)


def run_optuna(archive: Archive, *, kind: str, pop_size: int, seed: int, storage: Any = None,
               study_name: str = "sweep", on_generation: OnGeneration = _noop, max_stall: int | None = None,
               load_if_exists: bool = False) -> int:
    """Optuna NSGAIISampler (``kind="nsga2"``) or TPESampler (``"tpe"``) by ask/tell; returns 'generations'.

    ``storage`` (a URL or an Optuna storage) with ``load_if_exists`` joins a study other processes share.
    Where the archive's evaluator measures batches (a Dask cluster), ``pop_size`` trials are asked at once
    (at most the budget left), measured together and told in order: the records then depend on the batch,
    not on the number of workers (a serial evaluator asks one trial at a time, as before)."""
    import optuna
    from optuna.distributions import IntDistribution

    from experiments.sweep.distributed import can_batch, prefetch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    constrained = archive.n_constraints > 0

    def constraints(trial: Any) -> list[float]:
        return [float(v) for v in trial.user_attrs.get("constraints", [0.0] * archive.n_constraints)]

    cfunc = constraints if constrained else None
    if kind == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(population_size=pop_size, seed=seed, constraints_func=cfunc)
    elif kind == "tpe":
        sampler = optuna.samplers.TPESampler(seed=seed, constraints_func=cfunc)
    else:
        raise InvalidArgumentError(f"optuna `kind` must be 'nsga2' or 'tpe', got {kind!r}.")
    study = optuna.create_study(directions=["minimize"] * len(archive.objectives), sampler=sampler,
                                storage=storage, study_name=study_name, load_if_exists=load_if_exists)
    dists = {f"x{i}": IntDistribution(0, int(n) - 1) for i, n in enumerate(archive.space.nvec)}
    algo = f"optuna-{kind}"
    max_stall = max_stall if max_stall is not None else 10 * pop_size
    gen, stall, n_new = 0, 0, 0
    batch = pop_size if can_batch(archive) else 1
    while not archive.exhausted:
        # At most the budget left: each trial adds at most one record, so none is left asked and untold.
        asked = [study.ask(dists) for _ in range(max(1, min(batch, archive.budget - len(archive))))]
        xs = [np.array([t.params[f"x{i}"] for i in range(len(dists))], dtype=np.int64) for t in asked]
        prefetch(archive, xs)
        for trial, x in zip(asked, xs):
            before, replayed = len(archive), archive.replayed
            try:
                record = archive.evaluate(x, algo=algo, generation=trial.number // pop_size)
            except BudgetReached:  # pragma: no cover - exhausted is checked first
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                continue
            trial.set_user_attr("x_repaired", record["x"])
            trial.set_user_attr("eval", record["eval"])
            if constrained:
                trial.set_user_attr("constraints", archive.constraints(record))
            study.tell(trial, [float(v) for v in archive.F(record)])
            grew = len(archive) > before
            n_new += grew
            stall = 0 if grew or archive.replayed > replayed else stall + 1
            if (trial.number + 1) % pop_size == 0:
                on_generation(gen, archive, n_new)
                gen, n_new = gen + 1, 0
        if stall >= max_stall:
            logger.warning("%s: %d trials in a row proposed plans seen before; stopping at %d of %d evaluations",
                           algo, stall, len(archive), archive.budget)
            break
    if n_new:
        on_generation(gen, archive, n_new)
    return gen + 1


# ---------------------------------------------------------------------------------------------- baselines
def uniform_vectors(space: Any) -> dict[str, np.ndarray]:
    """Every precision unit at one precision (where the unit allows it; repaired otherwise), all resident."""
    precision_vars = [i for i, v in enumerate(space.variables) if v.knob == "precision"]
    if not precision_vars:
        return {}
    names: list[str] = []
    for i in precision_vars:
        for c, ok in zip(space.variables[i].choices, space.variables[i].mask):
            if ok and c not in names:
                names.append(c)
    out: dict[str, np.ndarray] = {}
    seen: set[bytes] = set()
    for p in names:
        x = space.default_vector()
        for i in precision_vars:
            v = space.variables[i]
            if p in v.choices and v.mask[v.choices.index(p)]:
                x[i] = v.choices.index(p)
        x = space.repair(x)
        if x.tobytes() not in seen:
            seen.add(x.tobytes())
            out[f"uniform-{p}"] = x
    return out


def _stream_index(space: Any, i: int) -> int | None:
    """The placement choice that streams block ``i`` onto the default unit from the next tier, if any."""
    v = space.variables[i]
    exec_unit = space.default_placement.partition("<-")[0]
    for j, (c, ok) in enumerate(zip(v.choices, v.mask)):
        if ok and j > 0 and "<-" in c and c.partition("<-")[0] == exec_unit:
            return j
    return None


def greedy_fill_vectors(space: Any, shares: Sequence[float], *, lookahead: int = 2) -> dict[str, np.ndarray]:
    """accelerate-style: float32, blocks resident in model order while ``share`` x the unmodified memory lasts."""
    from autosurgeon.cost.footprint import plan_memory

    blocks = [(i, _stream_index(space, i)) for i, v in enumerate(space.variables) if v.knob == "placement"]
    blocks = [(i, j) for i, j in blocks if j is not None]
    if not blocks:
        return {}

    def memory(x: np.ndarray) -> int:
        tiers = plan_memory(space, x, lookahead=lookahead)
        return int(tiers.get("gpu", 0) + tiers.get("cpu", 0))

    full = memory(space.default_vector())
    out: dict[str, np.ndarray] = {}
    for share in shares:
        budget = share * full
        best = None
        for keep in range(len(blocks), -1, -1):  # most resident blocks first
            x = space.default_vector()
            for i, j in blocks[keep:]:
                x[i] = j
            x = space.repair(x)
            if memory(x) <= budget:
                best = x
                break
        if best is not None:
            out[f"greedy-fill-{int(round(share * 100))}%"] = best
    return out


def knapsack_vectors(evaluator: Any, budgets: Sequence[str], *, max_quality_loss: float | None = None
                     ) -> tuple[dict[str, np.ndarray], list[str]]:
    """The sensitivity knapsack's plans at ``budgets`` (needs the evaluator's sensitivity table); notes on skips."""
    from autosurgeon.errors import AutoSurgeonError
    from autosurgeon.planners.knapsack import plan_knapsack

    if evaluator.sensitivity is None:
        return {}, ["knapsack skipped: the evaluator has no sensitivity table"]
    out, notes = {}, []
    for b in budgets:
        try:
            result = plan_knapsack(evaluator.loaded, evaluator.profile, evaluator.sensitivity, budget=b,
                                   space=evaluator.space, max_quality_loss=max_quality_loss)
        except AutoSurgeonError as exc:
            notes.append(f"knapsack {b} skipped: {exc}")
            continue
        out[f"knapsack-{b}"] = evaluator.space.repair(result.vector)
    return out, notes


def baseline_vectors(evaluator: Any, *, knapsack_budgets: Sequence[str],
                     greedy_shares: Sequence[float] = (0.25, 0.5, 0.75),
                     max_quality_loss: float | None = None) -> tuple[dict[str, dict[str, np.ndarray]], list[str]]:
    """``{family: {label: vector}}`` for the deterministic baselines, and notes on what was skipped."""
    space = evaluator.space
    knap, notes = knapsack_vectors(evaluator, knapsack_budgets, max_quality_loss=max_quality_loss)
    families = {"uniform": uniform_vectors(space), "greedy-fill": greedy_fill_vectors(space, greedy_shares),
                "knapsack": knap}
    return {k: v for k, v in families.items() if v}, notes


__all__ = ["baseline_vectors", "greedy_fill_vectors", "knapsack_vectors", "run_nsga2", "run_optuna", "run_random",
           "uniform_vectors"]
