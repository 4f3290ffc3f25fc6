"""Per-objective reward scales: how much each objective can improve on this model and device.

The reward (``envs.reward``) divides each objective's improvement ``1 - m_k / m_k_base`` by the most that a few
reference plans reach on that objective, so that for every model and device a score of 1 means "as good as the
best reference on this objective". Without it, objectives live on incomparable scales: on a paper H100 a 7B
shape's resident plans move latency by at most 22 % while streaming one block costs 16-129x (a ``1 - ratio`` of
-15 to -128), and small models' latency does not move at all, so latency swamped the preference weights and a
policy learned one plan for every preference (``experiments/benchmarks/results/policy_transfer.md``, session 5).
Opt-in (``RewardConfig(scale="reachable")``): it fixed the swamping but, in 18-minute trainings, not the single
plan (``experiments/benchmarks/results/policy_transfer_s6.md``).

Reference plans (cheap, deterministic, any model): the unmodified model, every *uniform precision* plan (each
precision unit at one precision where its mask allows it, resident), the *smallest footprint* plan
(``envs.smallest``: the least GPU + CPU memory found, which the memory objective counts) and that plan with every
block homed on disk where its placement allows it (usually the same plan, then deduplicated). They are priced by the context's estimator (the
evaluator itself when it is cheap, else the analytic one on the same space): a normaliser, not a measurement.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from envs.reward import normalised


def reference_vectors(space: Any, smallest: np.ndarray) -> list[np.ndarray]:
    """The unmodified plan, each uniform precision plan (repaired: units that cannot take it keep theirs) and
    ``smallest`` (the smallest-footprint vector), deduplicated, in that order."""
    out = [space.default_vector(), np.asarray(smallest), space.repair(_on_disk(space, np.asarray(smallest)))]
    precision_vars = [i for i, v in enumerate(space.variables) if v.knob == "precision"]
    choices: list[str] = []
    for i in precision_vars:
        for c, ok in zip(space.variables[i].choices, space.variables[i].mask):
            if ok and c not in choices:
                choices.append(c)
    for p in choices:
        x = space.default_vector()
        for i in precision_vars:
            v = space.variables[i]
            if p in v.choices and v.mask[v.choices.index(p)]:
                x[i] = v.choices.index(p)
        out.append(space.repair(x))
    seen: set[bytes] = set()
    unique = []
    for x in out:
        if x.tobytes() not in seen:
            seen.add(x.tobytes())
            unique.append(x)
    return unique


def _on_disk(space: Any, x: np.ndarray) -> np.ndarray:
    """``x`` with every placement variable at its first allowed choice streamed from disk (``…<-disk``), if any."""
    y = x.copy()
    for i, v in enumerate(space.variables):
        if v.knob != "placement":
            continue
        mask, _ = space.allowed(i, y)
        disk = [j for j, c in enumerate(v.choices) if mask[j] and str(c).endswith("<-disk")]
        if disk:
            y[i] = disk[0]
    return y


def reachable_gains(estimator: Any, space: Any, base: Any, smallest: np.ndarray,
                    objectives: Sequence[str]) -> np.ndarray:
    """Per objective, the largest ``1 - m_k / m_k_base`` among the reference plans (>= 0: the unmodified plan is
    one of them); ``base`` is the unmodified model's metrics from the reward's evaluator."""
    ratios = np.array([normalised(estimator.evaluate(x), base, objectives)
                       for x in reference_vectors(space, smallest)], dtype=np.float64)
    return np.maximum(1.0 - ratios.min(axis=0), 0.0)


__all__ = ["reachable_gains", "reference_vectors"]
