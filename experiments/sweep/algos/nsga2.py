"""``nsga2`` — pymoo NSGA-II over the SearchSpace encoding.

The first population opens with the context's seeds (baselines, a warm start: already evaluated, so
free), the rest from ``space.random_vector``; uniform crossover (``UX``: each integer gene from either
parent, so no rounding is needed), per-variable random-reset mutation within the static masks, then
``operators.UniformRepair`` (an entry a conditional rule invalidates is re-drawn uniformly among the valid
choices, not moved to the nearest one), duplicate elimination, seeded through pymoo's ``random_state``.
Stops when the archive's budget is spent or after ``max_stall`` generations that proposed nothing new.
"""
from __future__ import annotations

from typing import Any

from autosurgeon._logging import get_logger
from experiments.sweep.registry import SearchContext, register

logger = get_logger(__name__)


@register("nsga2", description="pymoo NSGA-II seeded with the baselines (uniform crossover, masked reset mutation, "
                               "uniform repair)")
def run(archive: Any, context: SearchContext, *, max_stall: int = 20) -> int:
    """NSGA-II until the budget is spent; returns the generations run."""
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.termination import NoTermination
    from pymoo.operators.crossover.ux import UX

    from experiments.sweep.operators import UniformRepair
    from experiments.sweep.problem import BudgetReached, ResetMutation, SpaceSampling, SurgeryProblem

    space = archive.space
    problem = SurgeryProblem(archive, algo=context.label or "nsga2")
    algorithm = NSGA2(pop_size=context.pop_size, sampling=SpaceSampling(space, context.initial), crossover=UX(),
                      mutation=ResetMutation(space), repair=UniformRepair(space), eliminate_duplicates=True)
    algorithm.setup(problem, termination=NoTermination(), seed=context.seed, verbose=False)
    gen = stall = 0
    while not archive.exhausted:
        problem.generation = gen
        before, replayed = len(archive), archive.replayed
        pop = algorithm.ask()
        try:
            algorithm.evaluator.eval(problem, pop)
        except BudgetReached:
            context.on_generation(gen, archive, len(archive) - before)
            break
        algorithm.tell(infills=pop)
        new = len(archive) - before
        context.on_generation(gen, archive, new)
        # A generation answered from a resumed run's records is progress too (it replays the interrupted run).
        stall = 0 if new or archive.replayed > replayed else stall + 1
        gen += 1
        if stall >= max_stall:
            logger.warning("nsga2: %d generations proposed no new plan; stopping at %d of %d evaluations",
                           stall, len(archive), archive.budget)
            break
    return gen + 1
