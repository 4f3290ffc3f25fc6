"""``nsga2`` — pymoo NSGA-II over the SearchSpace's decision units.

The first population opens with the context's seeds (baselines, a warm start: already evaluated, so
free), the rest from ``space.random_vector``. Variation works on units, not loose genes
(``unit_operators``): crossover passes each layer whole (precision with its group size) from one parent,
uniformly or as one contiguous run of layers; mutation makes unit moves (a head to another valid choice, a
precision often to its neighbour in bits, followers re-drawn) and segment moves (a run of layers, or of
blocks, set to one choice); ``operators.UniformRepair`` then re-draws anything left invalid uniformly, not
toward the nearest choice. Offspring the archive has already evaluated count as duplicates, so every slot
of a generation is a new plan. Optionally (``extra["nsga2_local_share"]``, default 0) that share of each
generation after the first is replaced by one-move neighbours of the archive's front (``local``).
Seeded through pymoo's ``random_state`` (and ``[seed, 7]`` for the local moves). Stops when the archive's
budget is spent or after ``max_stall`` generations that proposed nothing new.

Measured on the tuning set (zoo + llama-7b-shape on paper devices, analytic evaluator, 200 evaluations,
seeds 0-2; never the unseen set): see ``experiments/benchmarks/results/sweeps_vs_baselines.md``.
"""
from __future__ import annotations

from typing import Any

from autosurgeon._logging import get_logger
from autosurgeon.errors import InvalidArgumentError
from experiments.sweep.registry import SearchContext, register

logger = get_logger(__name__)


@register("nsga2", description="pymoo NSGA-II seeded with the baselines (unit crossover, unit and segment moves, "
                               "uniform repair, no re-proposals)")
def run(archive: Any, context: SearchContext, *, max_stall: int = 20) -> int:
    """NSGA-II until the budget is spent; returns the generations run."""
    import numpy as np
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.termination import NoTermination

    from experiments.sweep.local import front_neighbours
    from experiments.sweep.operators import UniformRepair
    from experiments.sweep.problem import BudgetReached, SpaceSampling, SurgeryProblem
    from experiments.sweep.unit_operators import ArchiveDuplicates, UnitCrossover, UnitMutation

    local_share = float(context.extra.get("nsga2_local_share", 0.0))
    if not 0.0 <= local_share <= 1.0:
        raise InvalidArgumentError(f"`nsga2_local_share` must be in [0, 1], got {local_share}; it is the share of each "
                                   "generation drawn next to the front (0: none).")
    space = archive.space
    problem = SurgeryProblem(archive, algo=context.label or "nsga2")
    mutation = UnitMutation(space)
    algorithm = NSGA2(pop_size=context.pop_size, sampling=SpaceSampling(space, context.initial),
                      crossover=UnitCrossover(space), mutation=mutation, repair=UniformRepair(space),
                      eliminate_duplicates=ArchiveDuplicates(archive))
    algorithm.setup(problem, termination=NoTermination(), seed=context.seed, verbose=False)
    local_rng = np.random.default_rng([context.seed, 7])
    gen = stall = 0
    while not archive.exhausted:
        problem.generation = gen
        before, replayed = len(archive), archive.replayed
        pop = algorithm.ask()
        if pop is None or len(pop) == 0:
            # pymoo's mating found no offspring it had not already seen (a small space near exhaustion)
            logger.warning("nsga2: mating proposed no unseen plan; stopping at %d of %d evaluations", len(archive),
                           archive.budget)
            break
        if gen > 0 and local_share > 0:
            keys = {np.asarray(x, dtype=np.int64).tobytes() for x in pop.get("X")}
            near = front_neighbours(archive, mutation, local_rng, int(round(local_share * len(pop))), exclude=keys)
            for k, x in enumerate(near):
                pop[len(pop) - 1 - k].set("X", x)
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
