"""Batch evaluation for the sweep's algorithms: measure a batch of plans at once, record them one by one.

The archive records plans strictly in the order an algorithm proposes them, one at a time, on the
coordinator (``Archive.evaluate``). When the archive's evaluator can measure many plans at once
(``evaluate_many``: :class:`experiments.sweep.dask_eval.DaskEvaluator` spreads them over a Dask cluster),
:func:`prefetch` hands it the batch first — the plans the archive would measure next, in order, deduplicated
and cut at the budget exactly where the serial loop would stop — so the evaluator's cache holds their
metrics when the serial loop asks. Records, their order and their ``eval`` numbers are therefore those of a
serial sweep, whatever the number of workers. Without ``evaluate_many`` :func:`prefetch` does nothing.

:class:`PrefetchRunner` is pymoo's ``elementwise_runner`` for the sweep's problem: it prefetches the whole
population, then evaluates it element by element as pymoo's default runner does.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np


def pending(archive: Any, X: Iterable[Any]) -> list[np.ndarray]:
    """The repaired vectors among ``X`` the archive would measure next, in order: new, distinct, within budget."""
    out: list[np.ndarray] = []
    seen: set[bytes] = set()
    room = archive.budget - len(archive)
    for x in X:
        if len(out) >= room:
            break
        xr = archive.space.repair(x)
        key = xr.tobytes()
        if key in seen or archive.lookup(xr) is not None:
            continue
        seen.add(key)
        out.append(xr)
    return out


def prefetch(archive: Any, X: Iterable[Any]) -> int:
    """Measure ahead the plans of ``X`` the archive will record next (module docstring); returns how many."""
    many = getattr(archive.evaluator, "evaluate_many", None)
    if many is None:
        return 0
    todo = pending(archive, X)
    if todo:
        many(todo)
    return len(todo)


def can_batch(archive: Any) -> bool:
    """Whether the archive's evaluator measures batches (then algorithms that can propose in batches do)."""
    return callable(getattr(archive.evaluator, "evaluate_many", None))


class PrefetchRunner:
    """pymoo ``elementwise_runner``: prefetch the population, then evaluate each row in order (serial records)."""

    def __init__(self, archive: Any) -> None:
        self.archive = archive

    def __call__(self, f: Callable[[Any], dict[str, Any]], X: Any) -> list[dict[str, Any]]:
        prefetch(self.archive, X)
        return [f(x) for x in X]


def batched_draws(archive: Any, draw: Callable[[], np.ndarray], batch: int) -> Iterator[np.ndarray]:
    """Endless draws from ``draw``, ``batch`` at a time, each batch prefetched before its first is yielded.

    The draws are those of calling ``draw`` one by one, so a consumer sees the serial sequence."""
    size = max(1, int(batch)) if can_batch(archive) else 1
    while True:
        block = [draw() for _ in range(size)]
        prefetch(archive, block)
        yield from block


__all__ = ["PrefetchRunner", "batched_draws", "can_batch", "pending", "prefetch"]
