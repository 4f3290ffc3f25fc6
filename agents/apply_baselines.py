"""A policy's plans next to the baselines: never hand over a plan a baseline dominates without saying so.

``apply`` evaluates the baselines it is given (the CLI passes the uniform plans of each format the space
allows, ``experiments.sweep.baselines.uniform_vectors``, plus the unmodified model) with the same evaluator
as the policy's plan. A baseline *dominates* the plan when it is no worse on latency, memory and energy,
better on one, and fits the memory budget where one is given; the first such baseline (the one with the
lowest preference-weighted normalised cost) is offered in the result, and a note says so.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.observation import OBJECTIVES
from envs.reward import normalised


@dataclass
class BaselinePlan:
    """One baseline evaluated next to the policy: label, vector, metrics and normalised objectives."""

    label: str
    vector: np.ndarray
    metrics: Any
    normalised: np.ndarray


def evaluate_baselines(vectors: Mapping[str, np.ndarray], evaluator: Any, base: Any) -> list[BaselinePlan]:
    """Each baseline vector evaluated with ``evaluator`` and normalised by the unmodified model's metrics."""
    out = []
    for label, x in vectors.items():
        m = evaluator.evaluate(np.asarray(x, dtype=np.int64))
        out.append(BaselinePlan(label, np.asarray(x, dtype=np.int64), m, np.asarray(normalised(m, base, OBJECTIVES))))
    return out


def dominates(a: Sequence[float], b: Sequence[float], *, tol: float = 1e-12) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return bool(np.all(a <= b + tol) and np.any(a < b - tol))


def dominating_baseline(plan_norm: Sequence[float], baselines: Sequence[BaselinePlan], *,
                        preference: Sequence[float], memory_budget: float | None = None) -> BaselinePlan | None:
    """The baseline that dominates ``plan_norm`` with the lowest preference-weighted cost (None: none does)."""
    w = np.asarray(preference, dtype=np.float64)
    hits = [b for b in baselines if dominates(b.normalised, plan_norm)
            and (memory_budget is None or b.metrics.memory_bytes <= memory_budget)]
    if not hits:
        return None
    return min(hits, key=lambda b: float(np.dot(w, b.normalised)))


__all__ = ["BaselinePlan", "dominates", "dominating_baseline", "evaluate_baselines"]
