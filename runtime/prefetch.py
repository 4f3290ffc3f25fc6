"""Prefetchers: which streamed blocks to fetch next, given the block the executor just entered.

The executor calls ``observe(block)`` when a block starts to run and ``predict(k)`` for the (at most) ``k``
blocks it should have in flight next, most urgent first. Blocks are the executor's integer unit ids; only
ids the prefetcher was built with are ever predicted. The interface is the same for the sequential
prefetcher here and for a learned one (a Markov prefetcher observing block/expert transitions predicts the
likeliest successors with the same two calls), so the executor never knows which one it talks to.

Mixture-of-experts prefetchers (:class:`ExpertPrefetcher`) speak the same interface over global expert ids
(``layer * num_experts + expert``) and add ``observe_routing(layer, rows, hidden=...)``: the Markov
prefetcher (learned order-k transitions between the experts of consecutive layers, with backoff), the
LRU-only baseline (predicts nothing) and the gate-speculative baseline (next layer's router on the current
hidden state). :mod:`runtime.experts` is their executor.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

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


# ---------------------------------------------------------------------------------------------------- experts
# Mixture-of-experts prefetchers. Ids are global expert ids ``layer * num_experts + expert`` over the MoE
# layers in execution order, so the same observe/predict pair serves them; ``observe_routing`` is the
# richer call an expert executor makes (one routing row per token, plus the router's input for the
# gate-speculative baseline). ``observe(id)`` alone still works: consecutive ids of one layer form that
# layer's routing row, as if one token had been routed.


class ExpertPrefetcher(Prefetcher):
    """Base of the expert prefetchers: global expert ids, routing rows per token, a lookahead in layers.

    Args:
        num_layers: MoE layers, in execution order.
        num_experts: experts per layer.
        depth: how many layers ahead to predict (the prefetch depth; adaptable at run time).
    """

    def __init__(self, num_layers: int, num_experts: int, *, depth: int = 1) -> None:
        if num_layers < 1 or num_experts < 1:
            raise JalapenoError(f"`num_layers` and `num_experts` must be >= 1, got {num_layers} and {num_experts}.")
        if depth < 0:
            raise JalapenoError(f"`depth` must be >= 0, got {depth}.")
        super().__init__(range(num_layers * num_experts))
        self.num_layers, self.num_experts, self.depth = num_layers, num_experts, depth
        self.layer: int | None = None  # last layer observed
        self._open: list[int] = []  # observe(id) path: experts of the current layer so far

    def expert_id(self, layer: int, expert: int) -> int:
        return layer * self.num_experts + expert

    def split(self, uid: int) -> tuple[int, int]:
        """``(layer, expert)`` of a global id."""
        return divmod(uid, self.num_experts)

    def observe_routing(self, layer: int, rows: Sequence[Sequence[int]], *, hidden: Any = None) -> None:
        """Record that ``layer`` just routed its tokens: ``rows[t]`` are token ``t``'s experts (local ids).

        ``hidden`` is the router's input (tokens, hidden), used by the gate-speculative prefetcher only.
        """
        if not 0 <= layer < self.num_layers:
            raise JalapenoError(f"`layer` must be in [0, {self.num_layers}), got {layer}.")
        self._open = []
        self.observations += 1
        self._observe_rows(layer, [tuple(sorted(int(e) for e in r)) for r in rows], hidden)
        self.layer = layer

    def _observe(self, block: int) -> None:
        layer, expert = self.split(block)
        if layer != self.layer or expert in self._open:  # a new layer (or a new token at the same layer)
            self._open = []
        self._open.append(expert)
        self._observe_rows(layer, [tuple(sorted(self._open))], None, replace=len(self._open) > 1)
        self.layer = layer

    @abstractmethod
    def _observe_rows(self, layer: int, rows: list[tuple[int, ...]], hidden: Any, *, replace: bool = False) -> None:
        """Learn from one layer's routing; ``replace``: the rows update the previous call's (same layer)."""

    def next_layer(self, layer: int) -> int:
        """The layer expected after ``layer`` (execution order, wrapping into the next token)."""
        return (layer + 1) % self.num_layers


class LRUOnlyPrefetcher(ExpertPrefetcher):
    """The baseline without prefetch: predicts nothing, so experts arrive on a miss and an LRU cache keeps them."""

    def _observe_rows(self, layer: int, rows: list[tuple[int, ...]], hidden: Any, *, replace: bool = False) -> None:
        return None

    def _predict(self, k: int) -> list[int]:
        return []


class MarkovPrefetcher(ExpertPrefetcher):
    """Learns online P(expert e is used at the next layer | the experts of the last ``order`` layers).

    Every routed token contributes one transition per observed layer pair: its experts at the last
    ``j`` layers (``j = 1 .. order``; the context) followed by its experts at the layer that ran next. The
    next layer itself is learned too (``successors``), so a model that skips blocks or exits early has
    its real block-to-block transitions predicted, not the nominal ``layer + 1``. Prediction for the next
    ``depth`` layers uses, per token, the longest context seen at least ``min_count`` times and backs off
    to shorter ones for experts the long context never followed (order 0 is the layer's marginal expert
    frequency). Deeper layers chain on the predicted routing of the layer before.

    With ``temporal`` a second chain runs beside it: P(expert at layer l | the token before's experts at
    layer l), learned the same way; its probabilities add to the order-1 level's. (Off by default: on
    tiny-moe's held-out routing it did not raise top-k recall — 0.766 vs 0.770 at k=2 — since the expert
    cache already keeps recently used experts.)

    Tokens of two consecutive calls are aligned from the end (a prefill's last token precedes the first
    decoded one); at most ``max_tokens`` trailing tokens of a call are learned from.

    Args:
        order: context length in layers (``k``).
        min_count: observations a context needs before it is trusted over a shorter one.
    """

    def __init__(self, num_layers: int, num_experts: int, *, order: int = 1, depth: int = 1, min_count: int = 1,
                 max_tokens: int = 256, temporal: bool = False) -> None:
        super().__init__(num_layers, num_experts, depth=depth)
        if order < 1:
            raise JalapenoError(f"`order` must be >= 1, got {order}.")
        if min_count < 1:
            raise JalapenoError(f"`min_count` must be >= 1, got {min_count}.")
        self.order, self.min_count, self.max_tokens = order, min_count, max_tokens
        # counts[j][context] -> [{next layer: n}, {(next layer, expert): count}]; context = ((layer, row), ...)
        # oldest first. Probabilities are conditional on the next layer (a context may precede several).
        self.counts: list[dict[tuple, list]] = [{} for _ in range(order + 1)]
        self.successors: dict[int, dict[int, int]] = {}
        self._history: list[tuple[int, list[tuple[int, ...]]]] = []  # last `order` (layer, rows)
        self.temporal = temporal
        self.temporal_counts: dict[tuple, list] = {}  # (layer, row of the token before) -> like counts[j]
        self._last: dict[int, list[tuple[int, ...]]] = {}  # layer -> its last rows
        self._last_before: list[tuple[int, ...]] | None = None

    # ------------------------------------------------------------ learning
    def _observe_rows(self, layer: int, rows: list[tuple[int, ...]], hidden: Any, *, replace: bool = False) -> None:
        rows = rows[-self.max_tokens:]
        if replace and self._history and self._history[-1][0] == layer:
            # observe(id) grew the current row: count it once, complete
            if self._last_before is None:
                self._last.pop(layer, None)
            else:
                self._last[layer] = self._last_before
            self._unlearn(*self._history.pop())
        self._last_before = self._last.get(layer)
        self._learn(layer, rows, +1)
        self._last[layer] = rows
        self._history.append((layer, rows))
        del self._history[:-self.order]

    def _unlearn(self, layer: int, rows: list[tuple[int, ...]]) -> None:
        self._learn(layer, rows, -1)

    def _learn(self, layer: int, rows: list[tuple[int, ...]], sign: int) -> None:
        hist = self._history
        if hist:
            prev = hist[-1][0]
            succ = self.successors.setdefault(prev, {})
            succ[layer] = succ.get(layer, 0) + sign
        for t in range(1, len(rows) + 1):
            row = rows[-t]
            self._bump(0, (layer,), layer, row, sign)  # order 0: the layer's marginal
            for j in range(1, min(self.order, len(hist)) + 1):
                ctx = self._context(hist[-j:], t)
                if ctx is None:
                    break
                self._bump(j, ctx, layer, row, sign)
            before = self._last.get(layer) if self.temporal else None
            if before:
                self._bump_into(self.temporal_counts, (layer, before[-t] if t <= len(before) else before[-1]), layer,
                                row, sign)

    @staticmethod
    def _context(entries: Sequence[tuple[int, list[tuple[int, ...]]]], t: int) -> tuple | None:
        """The context of the ``t``-th token from the end: its (layer, row) at each entry (None if missing)."""
        ctx = []
        for layer, rows in entries:
            row = rows[-t] if t <= len(rows) else rows[-1] if len(rows) else None
            if row is None:
                return None
            ctx.append((layer, row))
        return tuple(ctx)

    def _bump(self, j: int, ctx: tuple, layer: int, row: tuple[int, ...], sign: int) -> None:
        self._bump_into(self.counts[j], ctx, layer, row, sign)

    @staticmethod
    def _bump_into(table: dict, ctx: tuple, layer: int, row: tuple[int, ...], sign: int) -> None:
        slot = table.setdefault(ctx, [{}, {}])
        slot[0][layer] = slot[0].get(layer, 0) + sign
        nxt = slot[1]
        for e in row:
            key = (layer, e)
            nxt[key] = nxt.get(key, 0) + sign

    # ------------------------------------------------------------ prediction
    def next_layer(self, layer: int) -> int:
        succ = {k: v for k, v in self.successors.get(layer, {}).items() if v > 0}
        return max(succ, key=lambda k: (succ[k], -k)) if succ else super().next_layer(layer)

    def probabilities(self, layer: int | None = None, *, order: int | None = None) -> dict[int, float]:
        """P(expert is used at ``layer``) for the last observed token, from the longest trusted context up to
        ``order`` (default ``self.order``; 0 = marginal). Keys are local expert ids; layer defaults to the
        predicted next layer. Exposed for tests and for inspection."""
        if self.layer is None:
            return {}
        target = self.next_layer(self.layer) if layer is None else layer
        dist, _ = self._distribution(self._history, 1, target, self.order if order is None else order)
        return dist

    def _distribution(self, hist: Sequence, t: int, target: int, max_order: int) -> tuple[dict[int, float], int]:
        for j in range(min(max_order, len(hist)), -1, -1):
            ctx = (target,) if j == 0 else self._context(hist[-j:], t)
            if ctx is None:
                continue
            slot = self.counts[j].get(ctx)
            n = slot[0].get(target, 0) if slot is not None else 0
            if n < (self.min_count if j else 1):
                continue
            dist = {e: c / n for (lay, e), c in slot[1].items() if lay == target and c > 0}
            if dist:
                return dist, j
        return {}, -1

    def _scores(self, hist: Sequence, target: int) -> dict[int, float]:
        """Expected number of tokens using each expert at ``target``; longer contexts rank first."""
        n_tokens = len(hist[-1][1]) if hist else 1
        scores: dict[int, float] = {}
        for t in range(1, n_tokens + 1):
            for j in range(min(self.order, len(hist)), -1, -1):  # backoff: each order adds below the longer ones
                ctx = (target,) if j == 0 else self._context(hist[-j:], t)
                slot = self.counts[j].get(ctx) if ctx is not None else None
                n = slot[0].get(target, 0) if slot is not None else 0
                if n < (self.min_count if j else 1):
                    continue
                weight = 1e3 ** j  # lexicographic in practice: a seen longer context outranks shorter ones
                for (lay, e), c in slot[1].items():
                    if lay == target and c > 0:
                        scores[e] = scores.get(e, 0.0) + weight * c / n
            before = self._last.get(target) if self.temporal else None
            if before:
                slot = self.temporal_counts.get((target, before[-t] if t <= len(before) else before[-1]))
                n = slot[0].get(target, 0) if slot is not None else 0
                if n >= self.min_count:
                    for (_, e), c in slot[1].items():
                        if c > 0:
                            scores[e] = scores.get(e, 0.0) + 1e3 * c / n
        return scores

    def _predict(self, k: int) -> list[int]:
        if self.layer is None:
            return []
        hist = list(self._history)
        layer = self.layer
        per_layer: list[list[int]] = []
        for _ in range(max(1, self.depth)):
            target = self.next_layer(layer)
            scores = self._scores(hist, target)
            ranked = sorted(scores, key=lambda e: (-scores[e], e))
            per_layer.append([self.expert_id(target, e) for e in ranked])
            width = max((len(r) for r in hist[-1][1]), default=1) if hist else 1
            hist = [*hist, (target, [tuple(sorted(ranked[:width]))])][-self.order:]  # chain on the likeliest row
            layer = target
        return _interleave(per_layer, k, width=_row_width(self._history))


class GatePrefetcher(ExpertPrefetcher):
    """Speculative prefetch (Mixtral-offloading's trick): apply the *next* layer's router to the hidden
    state that entered the current layer's router, and fetch the experts it would pick.

    Works within a token only (the next token's first layer depends on a token not yet produced), so the
    first MoE layer of each token relies on the cache alone. ``depth > 1`` applies the router of each
    later layer to the same hidden state.

    Args:
        routers: per MoE layer, the router weight ``(num_experts, hidden)`` (on the execution device).
        top_k: experts per token the routers pick.
    """

    def __init__(self, routers: Sequence[Any], *, top_k: int, depth: int = 1) -> None:
        routers = list(routers)
        if not routers:
            raise JalapenoError("`routers` must list one router weight per MoE layer, got none.")
        super().__init__(len(routers), int(routers[0].shape[0]), depth=depth)
        self.routers, self.top_k = routers, top_k
        self._hidden: Any = None

    def _observe_rows(self, layer: int, rows: list[tuple[int, ...]], hidden: Any, *, replace: bool = False) -> None:
        self._hidden = None if hidden is None else hidden.reshape(-1, hidden.shape[-1])[-64:]

    def _predict(self, k: int) -> list[int]:
        import torch

        if self.layer is None or self._hidden is None:
            return []
        per_layer = []
        for target in range(self.layer + 1, min(self.num_layers, self.layer + 1 + max(1, self.depth))):
            weight = self.routers[target]
            with torch.no_grad():
                probs = torch.softmax((self._hidden.to(weight.dtype) @ weight.T).float(), dim=-1)  # (T, E)
                top = torch.topk(probs, min(self.top_k, self.num_experts), dim=-1)
                score = torch.zeros(self.num_experts, device=probs.device).scatter_add_(
                    0, top.indices.reshape(-1), top.values.reshape(-1))
                rest = probs.sum(0) * 1e-3  # unpicked experts rank after the picked ones, by probability
                ranked = torch.argsort(score + rest, descending=True).tolist()
            per_layer.append([self.expert_id(target, e) for e in ranked])
        return _interleave(per_layer, k, width=self.top_k)


def _row_width(history: Sequence[tuple[int, list[tuple[int, ...]]]]) -> int:
    if not history or not history[-1][1]:
        return 1
    return max(len(r) for r in history[-1][1])


def _interleave(per_layer: list[list[int]], k: int, *, width: int) -> list[int]:
    """Up to ``k`` ids: the top ``width`` of each layer in layer order, then the next ``width`` of each…"""
    out: list[int] = []
    width = max(1, width)
    rounds = max((len(r) for r in per_layer), default=0)
    for start in range(0, rounds, width):
        for ranked in per_layer:
            for uid in ranked[start:start + width]:
                if len(out) == k:
                    return out
                out.append(uid)
    return out


EXPERT_PREFETCHERS: tuple[str, ...] = ("markov", "lru", "gate", "hybrid")  # hybrid: runtime.prefetch_hybrid
