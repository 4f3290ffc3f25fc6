"""The plans every sweep evaluates before its search: the unmodified model, the baselines, a warm start.

They go through the sweep's own :class:`~experiments.sweep.problem.Archive` (same evaluator, same budget),
so they are eligible for the front like any plan the search finds, and the search starts from them:
:func:`initial_vectors` orders them non-dominated first for NSGA-II's first population and Optuna's first
trials. Origins: ``baseline:unmodified``, ``baseline:<label>`` (families ``uniform``, ``greedy-fill``,
``knapsack``, ``least-memory``; see ``baselines``), ``markov`` (a warm start's samples).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from experiments.sweep.hypervolume import non_dominated
from experiments.sweep.problem import Archive, BudgetReached


@dataclass(frozen=True)
class Seed:
    """One plan to evaluate first: its origin (the record's ``algo``), family and label, and its vector."""

    origin: str
    family: str
    label: str
    x: np.ndarray


def baseline_seeds(evaluator: Any, *, knapsack_budgets: Any, max_quality_loss: float | None,
                   uniform_only: bool = False) -> tuple[list[Seed], list[str]]:
    """The unmodified model, then the baselines' plans (only the uniform ones with ``uniform_only``); notes on skips."""
    from experiments.sweep.baselines import baseline_vectors, uniform_vectors

    space = evaluator.space
    seeds = [Seed("baseline:unmodified", "unmodified", "unmodified", space.default_vector())]
    if uniform_only:
        families, notes = {"uniform": uniform_vectors(space)}, []
    else:
        families, notes = baseline_vectors(evaluator, knapsack_budgets=knapsack_budgets,
                                           max_quality_loss=max_quality_loss)
    for family, vectors in families.items():
        for label, x in vectors.items():
            seeds.append(Seed(f"baseline:{label}", family, label, np.asarray(x, dtype=np.int64)))
    return seeds, notes


def markov_seeds(vectors: list[np.ndarray]) -> list[Seed]:
    return [Seed("markov", "markov", f"markov-{k}", np.asarray(x, dtype=np.int64)) for k, x in enumerate(vectors)]


def evaluate_seeds(archive: Archive, seeds: list[Seed]) -> tuple[list[dict[str, Any]], list[str]]:
    """Evaluate ``seeds`` in order through ``archive``; ``(records, notes)`` (a note when the budget ran out).

    A seed whose plan an earlier seed already evaluated (two baselines that repair to the same plan) keeps
    the first record's origin; its own origin, family and label are listed in the record's ``also`` (memory
    only; recomputed on resume)."""
    from experiments.sweep.distributed import prefetch

    records: list[dict[str, Any]] = []
    notes: list[str] = []
    prefetch(archive, [s.x for s in seeds[:max(0, archive.budget - len(archive))]])  # a cluster measures them at once
    for k, seed in enumerate(seeds):
        before = len(archive)
        try:
            record = archive.evaluate(seed.x, algo=seed.origin, generation=-1,
                                      extra={"family": seed.family, "label": seed.label})
        except BudgetReached:
            left = [s.origin for s in seeds[k:]]
            notes.append(f"the evaluation budget ({archive.budget}) ran out before {len(left)} seed plan(s) "
                         f"({', '.join(left[:4])}{' …' if len(left) > 4 else ''}); raise --budget-evals.")
            break
        if len(archive) == before and record["algo"] != seed.origin:
            also = record.setdefault("also", [])
            entry = {"origin": seed.origin, "family": seed.family, "label": seed.label}
            if entry not in also:
                also.append(entry)
        records.append(record)
    return records, notes


def initial_vectors(archive: Archive, records: list[dict[str, Any]],
                    reference: Any = None) -> list[np.ndarray]:
    """The seeds' vectors, feasible non-dominated first (then feasible, then the rest), without duplicates.

    With ``reference`` (the hypervolume's reference point, normalised), a seed beyond it on some objective is left
    out while others remain: it adds no hypervolume, and as a parent it drew the search there (the least-memory
    plan of a 7B shape on an H100 streams every block, 28x the latency: NSGA-II's mean hypervolume fell 1.4 %
    when it joined the seeds). It stays in the archive and on the front."""
    unique: dict[bytes, dict[str, Any]] = {}
    for r in records:
        unique.setdefault(np.asarray(r["x"], dtype=np.int64).tobytes(), r)
    rows = list(unique.values())
    if reference is not None:
        ref = np.asarray(reference, dtype=np.float64)
        inside = [r for r in rows if np.all(archive.F(r)[:len(ref)] < ref)]
        rows = inside or rows
    feasible = [r for r in rows if r["feasible"]]
    front = {id(feasible[i]) for i in non_dominated([archive.F(r) for r in feasible])} if feasible else set()
    order = sorted(range(len(rows)), key=lambda i: (id(rows[i]) not in front, not rows[i]["feasible"], i))
    return [np.asarray(rows[i]["x"], dtype=np.int64) for i in order]


__all__ = ["Seed", "baseline_seeds", "evaluate_seeds", "initial_vectors", "markov_seeds"]
