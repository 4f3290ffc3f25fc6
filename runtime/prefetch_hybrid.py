"""Hybrid expert prefetcher: the Markov chain's transition probabilities as a prior, the next layer's gate on
the current hidden state as a likelihood.

The two baselines fail in different places. The Markov prefetcher (:class:`~runtime.prefetch.MarkovPrefetcher`)
knows which experts tend to follow which but not what this token's hidden state says; the gate-speculative
one (:class:`~runtime.prefetch.GatePrefetcher`) reads the hidden state but applies the next router to an input
one attention block stale, and cannot see past the token's last layer. Here, per token and per predicted
layer, the two are combined log-linearly::

    log q(e) = gate_weight * log p_gate(e) + log p_markov(e)      (then normalised over the layer's experts)

``p_markov`` is the longest trusted context's distribution mixed with the layer's marginal (``prior_floor``
of it, so an expert the context never led to is unlikely, not impossible); ``p_gate`` is the softmax of the
target layer's router on the hidden state that entered the current layer's router. Where the gate cannot
speak (the next token's layers, an ``observe(id)`` call without a hidden state) the Markov prior is used
alone, so the hybrid never knows less than the Markov prefetcher. An expert's score is its expected number of
tokens using it; deeper layers chain on each token's predicted row, as the Markov prefetcher does.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from runtime.errors import JalapenoError
from runtime.prefetch import MarkovPrefetcher, _interleave, _row_width

MIN_USE = 1e-3  # expected tokens using an expert below which it is not predicted


class HybridPrefetcher(MarkovPrefetcher):
    """Markov prior x next-layer gate likelihood (log-linear), per token, for the next ``depth`` layers.

    Args:
        routers: per MoE layer, the router weight ``(num_experts, hidden)`` (on the execution device).
        top_k: experts per token the routers pick.
        order: Markov context length in layers.
        depth: MoE layers ahead to predict.
        gate_weight: exponent of the gate's probabilities (0: Markov alone; large: the gate decides where it
            can speak, the prior breaks its ties and covers the next token).
        prior_floor: share of the layer's marginal mixed into the Markov distribution, in (0, 1].
        max_hidden: trailing tokens of a call the gate is applied to (a prefill's tail predicts best).
    """

    def __init__(self, routers: Sequence[Any], *, top_k: int, order: int = 1, depth: int = 1,
                 gate_weight: float = 1.0, prior_floor: float = 0.1, max_hidden: int = 64, min_count: int = 1) -> None:
        routers = list(routers)
        if not routers:
            raise JalapenoError("`routers` must list one router weight per MoE layer, got none.")
        if gate_weight < 0:
            raise JalapenoError(f"`gate_weight` must be >= 0, got {gate_weight}.")
        if not 0 < prior_floor <= 1:
            raise JalapenoError(f"`prior_floor` must be in (0, 1], got {prior_floor}.")
        if top_k < 1:
            raise JalapenoError(f"`top_k` must be >= 1, got {top_k}.")
        super().__init__(len(routers), int(routers[0].shape[0]), order=order, depth=depth, min_count=min_count)
        self.routers, self.top_k = routers, top_k
        self.gate_weight, self.prior_floor, self.max_hidden = gate_weight, prior_floor, max_hidden
        self._hidden: Any = None  # (tokens, hidden) that entered the last observed layer's router
        self._stacked: Any = None  # all routers as one (layers * experts, hidden) matrix, built on first use
        self._gate: list[list[float]] | None = None  # per token, every layer's gate probabilities (one matmul)
        self.gate_predictions = 0  # predicted layers the gate took part in (inspection, tests)

    # ------------------------------------------------------------ learning
    def _observe_rows(self, layer: int, rows: list[tuple[int, ...]], hidden: Any, *, replace: bool = False) -> None:
        super()._observe_rows(layer, rows, hidden, replace=replace)
        if hidden is not None:
            hidden = hidden.reshape(-1, hidden.shape[-1])
            if hidden.shape[0] > self.max_hidden:
                hidden = hidden[-self.max_hidden:]
        self._hidden = hidden
        self._gate = None

    # ------------------------------------------------------------ prediction
    def prior(self, hist: Sequence, t: int, target: int, *, marginal: dict[int, float] | None = None
              ) -> list[float] | None:
        """P(expert used at ``target``) for the ``t``-th token from the end: the longest trusted context's
        distribution, ``prior_floor`` of the layer's marginal mixed in; None before the layer was seen.
        ``marginal``: the layer's marginal if the caller has it (it does not depend on the token)."""
        if marginal is None:
            marginal, _ = self._distribution((), t, target, 0)
        if not marginal:
            return None
        dist, _ = self._distribution(hist, t, target, self.order)
        f, g = self.prior_floor, 1 - self.prior_floor
        # a tiny uniform term keeps an expert never seen at this layer above zero (finite log)
        return [g * dist.get(e, 0.0) + f * marginal.get(e, 0.0) + 1e-6 for e in range(self.num_experts)]

    def gate_logits(self, target: int) -> list[list[float]] | None:
        """``target``'s router logits on the last hidden state, one row per token (None: no hidden state).

        Every layer's router is applied in one matmul per observed call and no softmax is taken: its
        normaliser cancels in the log-linear mix (host work per predicted layer was a visible share of a
        small model's decode step)."""
        if self._hidden is None:
            return None
        if self._gate is None:
            import torch

            if self._stacked is None:
                self._stacked = torch.cat([r.detach() for r in self.routers]).t()  # (H, L * E)
            w = self._stacked
            with torch.no_grad():
                self._gate = torch.mm(self._hidden.to(w.dtype), w).tolist()  # [token][layer * E + expert]
        e_count = self.num_experts
        return [row[target * e_count:(target + 1) * e_count] for row in self._gate]

    def gate_probs(self, target: int) -> list[list[float]] | None:
        """Softmax of :meth:`gate_logits` (what the router would give; for inspection and tests)."""
        logits = self.gate_logits(target)
        if logits is None:
            return None
        out = []
        for row in logits:
            top = max(row)
            ex = [math.exp(v - top) for v in row]
            out.append([v / sum(ex) for v in ex])
        return out

    def _combine(self, prior: list[float] | None, logits: list[float] | None) -> list[float]:
        """Expected use of each expert by one token: the normalised log-linear mix of the prior and the gate's
        softmax (given as logits), scaled to ``top_k`` uses (all zero when neither source knows anything; a
        uniform prior under the gate before learning)."""
        if prior is None:
            if logits is None or self.gate_weight == 0:
                return [0.0] * self.num_experts
            prior = [1.0] * self.num_experts
        if logits is None or self.gate_weight == 0:
            q = prior
        else:
            w = self.gate_weight
            logs = [w * g + math.log(p) for g, p in zip(logits, prior)]
            top = max(logs)
            q = [math.exp(v - top) for v in logs]
        scale = self.top_k / sum(q)
        return [v * scale if v * scale < 1.0 else 1.0 for v in q]

    def _predict(self, k: int) -> list[int]:
        if self.layer is None:
            return []
        hist = list(self._history)
        layer = self.layer
        n_tokens = len(hist[-1][1]) if hist else 1
        width = _row_width(self._history)
        per_layer: list[list[int]] = []
        experts = range(self.num_experts)
        in_token = True  # the gate speaks for the current token's later layers only
        for _ in range(max(1, self.depth)):
            target = self.next_layer(layer)
            in_token = in_token and target > layer
            gate = self.gate_logits(target) if in_token else None
            self.gate_predictions += gate is not None
            scores = [0.0] * self.num_experts
            rows: list[tuple[int, ...]] = []
            marginal, _ = self._distribution((), 1, target, 0)
            for t in range(n_tokens, 0, -1):  # oldest token first: rows keep the history's order
                g = gate[-t] if gate is not None and t <= len(gate) else None
                q = self._combine(self.prior(hist, t, target, marginal=marginal), g)
                for e, v in enumerate(q):
                    scores[e] += v
                rows.append(tuple(sorted(sorted(experts, key=q.__getitem__, reverse=True)[:width])))
            # experts expected by less than MIN_USE tokens are not predicted: they would only be fetched
            # and protected from eviction in place of ones that are (Markov predicts only what it has seen)
            # (a stable sort in reverse keeps ties in expert order, as Markov's (-score, expert) key does)
            ranked = sorted([e for e in experts if scores[e] >= MIN_USE], key=scores.__getitem__, reverse=True)
            per_layer.append([self.expert_id(target, e) for e in ranked])
            hist = [*hist, (target, rows)][-self.order:]  # chain on each token's likeliest row
            layer = target
        return _interleave(per_layer, k, width=width)
