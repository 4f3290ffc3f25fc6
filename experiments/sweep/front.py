"""Pick one plan from a run's Pareto front: under a memory budget, by a preference over objectives, or both.

Budget: front members whose ``memory`` objective (bytes on GPU + CPU) is within the budget; among them the
lowest latency (or, with a preference, the best preference score). Preference: weights over the run's
objectives (``latency=0.6,memory=0.3,energy=0.1``; >= 0, summing to 1) applied to the *normalised*
objectives (divided by the unmodified model's, as for the hypervolume): the member minimising the weighted
sum wins. Ties go to the earlier evaluation.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from autosurgeon.errors import InvalidArgumentError


def parse_preference(text: str, objectives: Sequence[str]) -> dict[str, float]:
    """``"latency=0.6,memory=0.4"`` -> weights; every name an objective of the run, weights >= 0 summing to 1."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep:
            raise InvalidArgumentError(f"`--preference` entries look like latency=0.6, got {part!r}.")
        if name not in objectives:
            raise InvalidArgumentError(f"`--preference` names unknown objective {name!r}; this run's objectives are "
                                       f"{', '.join(objectives)}.")
        if name in weights:
            raise InvalidArgumentError(f"`--preference` gives {name!r} twice.")
        try:
            w = float(value)
        except ValueError:
            raise InvalidArgumentError(f"`--preference` weight of {name!r} must be a number, got {value!r}.") from None
        if not (w >= 0 and math.isfinite(w)):
            raise InvalidArgumentError(f"`--preference` weight of {name!r} must be >= 0, got {value.strip()}.")
        weights[name] = w
    if not weights:
        raise InvalidArgumentError("`--preference` is empty; give weights such as latency=0.6,memory=0.3,energy=0.1.")
    total = sum(weights.values())
    if abs(total - 1.0) > 1e-6:
        raise InvalidArgumentError(f"`--preference` weights must sum to 1, got {total:g} "
                                   f"({', '.join(f'{k}={v:g}' for k, v in weights.items())}).")
    return weights


def pick(records: Sequence[Mapping[str, Any]], front: Sequence[int], objectives: Sequence[str],
         scales: Sequence[float], *, budget_memory: int | None = None,
         preference: Mapping[str, float] | None = None) -> int:
    """Position (in ``records``) of the chosen front member (module docstring: rule)."""
    if not front:
        raise InvalidArgumentError("the run has no feasible evaluation, so no front to pick from; loosen "
                                   "--max-quality-loss or evaluate more plans.")
    if budget_memory is None and preference is None:
        raise InvalidArgumentError("give `--budget-memory` (e.g. 4MiB or 40%) or `--preference` "
                                   "(e.g. latency=0.6,memory=0.4) to pick a plan.")
    names = list(objectives)
    candidates = list(front)
    if budget_memory is not None:
        if "memory" not in names:
            raise InvalidArgumentError("`--budget-memory` needs the run to have the 'memory' objective.")
        k = names.index("memory")
        candidates = [i for i in candidates if records[i]["objectives"][k] <= budget_memory]
        if not candidates:
            smallest = min(records[i]["objectives"][k] for i in front)
            raise InvalidArgumentError(f"no front member fits `--budget-memory` {budget_memory} B; the smallest "
                                       f"needs {int(smallest)} B. Raise the budget.")
    if preference:
        w = np.array([preference.get(n, 0.0) for n in names])
        scale = np.asarray(scales, dtype=np.float64)
        score = [float(np.dot(w, np.asarray(records[i]["objectives"]) / scale)) for i in candidates]
    else:
        key = names.index("latency") if "latency" in names else 0
        score = [records[i]["objectives"][key] for i in candidates]
    return candidates[int(np.argmin(score))]


__all__ = ["parse_preference", "pick"]
