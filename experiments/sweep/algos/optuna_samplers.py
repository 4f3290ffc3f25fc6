"""``optuna-nsga2`` / ``optuna-tpe`` — Optuna's ``NSGAIISampler`` / ``TPESampler`` (multi-objective) by ask/tell.

One ``IntDistribution(0, n-1)`` per variable; the context's seeds (baselines, already evaluated) enter the
study first as finished trials (``study.add_trial``), so the samplers start from them; a suggestion is
repaired before evaluation and the repaired vector is stored as the trial's ``x_repaired`` user attribute;
the constraints (quality bound, power cap) go through the samplers' ``constraints_func``.
"""
from __future__ import annotations

from typing import Any

from autosurgeon._logging import get_logger
from autosurgeon.errors import InvalidArgumentError
from experiments.sweep.registry import SearchContext, register

logger = get_logger(__name__)


def run_optuna(archive: Any, context: SearchContext, *, kind: str, max_stall: int | None = None) -> int:
    """Optuna NSGAIISampler (``kind="nsga2"``) or TPESampler (``"tpe"``); returns 'generations'."""
    import optuna
    from optuna.distributions import IntDistribution

    from experiments.sweep.distributed import can_batch, prefetch
    from experiments.sweep.problem import BudgetReached

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    constrained = archive.n_constraints > 0
    pop_size = context.pop_size

    def constraints(trial: Any) -> list[float]:
        return [float(v) for v in trial.user_attrs.get("constraints", [0.0] * archive.n_constraints)]

    cfunc = constraints if constrained else None
    if kind == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(population_size=pop_size, seed=context.seed, constraints_func=cfunc)
    elif kind == "tpe":
        sampler = optuna.samplers.TPESampler(seed=context.seed, constraints_func=cfunc)
    else:
        raise InvalidArgumentError(f"optuna `kind` must be 'nsga2' or 'tpe', got {kind!r}.")
    study = optuna.create_study(directions=["minimize"] * len(archive.objectives), sampler=sampler,
                                storage=context.storage, study_name=context.study_name,
                                load_if_exists=context.load_if_exists)
    dists = {f"x{i}": IntDistribution(0, int(n) - 1) for i, n in enumerate(archive.space.nvec)}
    for x in context.initial:  # the seeds, as finished trials the samplers learn from
        record = archive.lookup(archive.space.repair(x))
        if record is None:
            continue
        attrs = {"x_repaired": record["x"], "eval": record["eval"], "origin": record["algo"]}
        if constrained:
            attrs["constraints"] = archive.constraints(record)
        study.add_trial(optuna.trial.create_trial(
            params={f"x{i}": int(v) for i, v in enumerate(record["x"])}, distributions=dists,
            values=[float(v) for v in archive.F(record)], user_attrs=attrs))
    algo = context.label or f"optuna-{kind}"
    max_stall = max_stall if max_stall is not None else 10 * pop_size
    gen, stall, n_new = 0, 0, 0
    # Where the evaluator measures batches (a Dask cluster), pop_size trials are asked at once (at most the
    # budget left), measured together and told in order: the records depend on the batch, not on the workers.
    batch = pop_size if can_batch(archive) else 1
    while not archive.exhausted:
        asked = [study.ask(dists) for _ in range(max(1, min(batch, archive.budget - len(archive))))]
        xs = [[t.params[f"x{i}"] for i in range(len(dists))] for t in asked]
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
                context.on_generation(gen, archive, n_new)
                gen, n_new = gen + 1, 0
        if stall >= max_stall:
            logger.warning("%s: %d trials in a row proposed plans seen before; stopping at %d of %d evaluations",
                           algo, stall, len(archive), archive.budget)
            break
    if n_new:
        context.on_generation(gen, archive, n_new)
    return gen + 1


@register("optuna-nsga2", description="Optuna NSGAIISampler, seeded with the baselines as finished trials")
def run_nsga2(archive: Any, context: SearchContext) -> int:
    return run_optuna(archive, context, kind="nsga2")


@register("optuna-tpe", description="Optuna multi-objective TPESampler, seeded with the baselines")
def run_tpe(archive: Any, context: SearchContext) -> int:
    return run_optuna(archive, context, kind="tpe")
