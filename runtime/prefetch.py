"""Prefetchers: which streamed blocks to fetch next, given the block the executor just entered.

The executor calls ``observe(block)`` when a block starts to run and ``predict(k)`` for the (at most) ``k``
blocks it should have in flight next, most urgent first. Blocks are the executor's integer unit ids; only
ids the prefetcher was built with are ever predicted. The interface is the same for the sequential
prefetcher here and for a learned one (a Markov prefetcher observing block/expert transitions predicts the
likeliest successors with the same two calls), so the executor never knows which one it talks to.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from runtime.errors import JalapenoError


class Prefetcher(ABC):
    """Base class: ``observe`` validates and counts, subclasses implement ``_observe`` and ``_predict``."""

    def __init__(self, blocks: Sequence[int]) -> None:
        self.blocks: tuple[int, ...] = tuple(blocks)
        if len(set(self.blocks)) != len(self.blocks):
            raise JalapenoError(f"`blocks` must not repeat ids, got {list(self.blocks)}.")
        self._known = frozenset(self.blocks)
        self.observations = 0

    def observe(self, block: int) -> None:
        """Record that ``block`` has just started to run (ids outside ``blocks`` are ignored)."""
        if block in self._known:
            self.observations += 1
            self._observe(block)

    def predict(self, k: int) -> list[int]:
        """Up to ``k`` distinct blocks to have in flight next, most urgent first."""
        if k < 0:
            raise JalapenoError(f"`k` must be >= 0, got {k}.")
        return self._predict(k) if k and self.blocks else []

    @abstractmethod
    def _observe(self, block: int) -> None: ...

    @abstractmethod
    def _predict(self, k: int) -> list[int]: ...


class SequentialPrefetcher(Prefetcher):
    """Predicts the blocks that follow the last one observed, in execution order, wrapping around.

    Wrapping is what a decoder wants: after the last streamed block of one token, the first ones of the
    next token are fetched while the head and the resident blocks compute. The order starts as ``blocks``
    and, with ``learn_order``, becomes the order observed in the first full cycle (the first time a block
    repeats): module registration order is not always execution order (a Llama layer registers its norms
    after attention and MLP but runs them before each).

    Args:
        blocks: the streamed block ids in execution order.
        lookahead: default ``k`` for :meth:`predict` when the caller passes none (kept for symmetry with
            learned prefetchers that size their candidate lists from it).
    """

    def __init__(self, blocks: Sequence[int], *, lookahead: int = 1, learn_order: bool = True) -> None:
        super().__init__(blocks)
        if lookahead < 0:
            raise JalapenoError(f"`lookahead` must be >= 0, got {lookahead}.")
        self.lookahead = lookahead
        self.order: tuple[int, ...] = self.blocks
        self._position = {b: i for i, b in enumerate(self.order)}
        self._trace: list[int] | None = [] if learn_order else None  # first cycle, until learned
        self._last = -1  # index into order; -1: nothing seen, predict from the start

    def _observe(self, block: int) -> None:
        if self._trace is not None:
            if block in self._trace:  # one full cycle seen: adopt its order (unseen blocks go last)
                seen = set(self._trace)
                self.order = (*self._trace, *(b for b in self.blocks if b not in seen))
                self._position = {b: i for i, b in enumerate(self.order)}
                self._trace = None
            else:
                self._trace.append(block)
        self._last = self._position[block]

    def _predict(self, k: int) -> list[int]:
        n = len(self.order)
        return [self.order[(self._last + i) % n] for i in range(1, min(k, n) + 1)]
