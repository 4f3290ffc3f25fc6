"""Local improvement around the archive's front: new plans one move away from plans already on it.

NSGA-II breeds from its population, which a small ``pop_size`` truncates by crowding; the archive keeps every
non-dominated plan evaluated so far, the baselines included (their neighbourhoods are where fronts grow: a
uniform plan with a few layers at another precision or a block streamed). :func:`front_neighbours` draws
``n`` distinct plans the archive has not seen, each a front member (drawn uniformly) after one move of
``UnitMutation`` (a unit move or a segment move, then the unbiased repair); every draw from ``rng``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from experiments.sweep.hypervolume import front_indices


def front_neighbours(archive: Any, mutation: Any, rng: np.random.Generator, n: int, *,
                     exclude: set[bytes] | None = None, tries: int = 20) -> list[np.ndarray]:
    """Up to ``n`` new vectors, each one move from a feasible non-dominated record (module docstring)."""
    records = archive.current_records()  # on a resume, what the first attempt had seen at this point
    front = front_indices(records)
    if not front or n <= 0:
        return []
    seen = set(exclude or ())
    out: list[np.ndarray] = []
    for _ in range(n * tries):
        if len(out) >= n:
            break
        base = np.asarray(records[front[int(rng.integers(len(front)))]]["x"], dtype=np.int64)
        x = mutation.mutate(base, rng, moves=1)
        key = x.tobytes()
        if key in seen or archive.proposed_before(x):
            continue
        seen.add(key)
        out.append(x)
    return out


__all__ = ["front_neighbours"]
