"""``random`` — uniform random valid plans (``space.random_vector``: uniform per variable, conditional masks).

The seeds (baselines) are in the archive before it starts, so its front holds them; it draws nothing from
them. Every ``pop_size`` new evaluations make one 'generation' of the curves.
"""
from __future__ import annotations

from typing import Any

from autosurgeon._logging import get_logger
from experiments.sweep.registry import SearchContext, register

logger = get_logger(__name__)


@register("random", description="uniform random valid plans (conditional masks)")
def run(archive: Any, context: SearchContext, *, max_stall: int = 1000) -> int:
    """Random plans until the budget is spent; returns the 'generations' (batches of ``pop_size``)."""
    import numpy as np  # here, not at import: the registry loads every algorithm for `--help`

    from experiments.sweep.distributed import batched_draws

    rng = np.random.default_rng(context.seed)
    batch = context.pop_size
    draws = batched_draws(archive, lambda: archive.space.random_vector(rng), batch)  # the serial draw sequence
    label = context.label or "random"
    stall = n_new = 0
    while not archive.exhausted:
        before, replayed = len(archive), archive.replayed
        archive.evaluate(next(draws), algo=label, generation=before // batch)
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
            context.on_generation(len(archive) // batch - 1, archive, n_new)
            n_new = 0
    if n_new:
        context.on_generation(len(archive) // batch, archive, n_new)
    return -(-len(archive) // batch)
