"""The evaluator-error benchmark's runtime reference: every plan's step timed in interleaved rounds, and ties.

Before session 6 each plan was timed in one block of repeats, one plan after another; on the shared 2-core machine
load drift between blocks moved plans by 15-20 % (p10-p90), more than most gaps between uniform plans, so the
"uniform order" check was decided by noise (and the unmodified plan, timed minutes after the profiled table's own
runtime step of the same plan, measured 1.3-2x it in session 5's quiet run). Here (MEASURING.md: interleaved
rounds in one process, median of rounds):

* every plan is applied once and kept open (``RuntimeEvaluator.open_step``: what ``evaluate`` times);
* ``rounds`` rounds; each runs every plan in a seeded shuffled order (a new order each round), ``warmup`` untimed
  steps then ``steps`` timed ones; the round's figure is the median of its steps;
* a plan's reference latency is the median of its round figures; its dispersion the rounds' (max - min) / median;
* **ties**: plan a is faster than plan b only when a's figure is below b's in EVERY round (paired per round, so a
  drift that moves both cancels; with 5 rounds chance alone does it with probability 2 x 1/32); otherwise the pair
  is a tie, and no evaluator can mis-order it. A pair the runtime resolves that an evaluator orders the other way
  is a mis-order and is listed, never hidden.
"""
from __future__ import annotations

import contextlib
import statistics
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autosurgeon.cost.workload import timed
from autosurgeon.errors import InvalidArgumentError


@dataclass
class Reference:
    """Per plan: each round's median step (seconds), in plan order."""

    rounds: list[list[float]]
    clock: str = "cpu"
    steps: int = 10
    warmup: int = 2
    orders: list[list[int]] = field(default_factory=list)

    @property
    def medians(self) -> list[float]:
        return [statistics.median(r) for r in self.rounds]

    def dispersion(self, i: int) -> float:
        """(max - min) / median of plan ``i``'s round figures."""
        r = self.rounds[i]
        m = statistics.median(r)
        return (max(r) - min(r)) / m if m > 0 else 0.0

    def order(self, i: int, j: int) -> int:
        """-1: plan i faster than plan j in every round; +1: slower in every round; 0: a tie."""
        a, b = self.rounds[i], self.rounds[j]
        if all(x < y for x, y in zip(a, b)):
            return -1
        if all(x > y for x, y in zip(a, b)):
            return 1
        return 0


def measure(runtime: Any, vectors: list[Any], *, rounds: int = 5, steps: int = 10, warmup: int = 2,
            seed: int = 0) -> Reference:
    """Time every plan of ``vectors`` on ``runtime`` (a ``RuntimeEvaluator``) in interleaved rounds."""
    if rounds < 2:
        raise InvalidArgumentError(f"`rounds` must be >= 2 (ties are decided round by round), got {rounds}.")
    if steps < 1:
        raise InvalidArgumentError(f"`steps` must be >= 1, got {steps}.")
    clock = runtime.timing.clock
    rng = np.random.default_rng(seed)
    out = Reference(rounds=[[] for _ in vectors], clock=clock, steps=steps, warmup=warmup)
    with contextlib.ExitStack() as stack:
        opened = [stack.enter_context(runtime.open_step(x)) for x in vectors]
        for _ in range(rounds):
            order = [int(i) for i in rng.permutation(len(vectors))]
            out.orders.append(order)
            for i in order:
                _, step, _, device = opened[i]
                out.rounds[i].append(timed(step, warmup=warmup, repeats=steps, device=device, clock=clock).median_s)
    return out


def order_check(ref: Reference, plans: list[int], estimates: list[float], names: list[str]) -> dict[str, Any]:
    """Pairs of ``plans`` (indices into ``ref``) the runtime resolves, and those the estimates order the other way.

    ``estimates`` and ``names`` are per entry of ``plans``. ``matches``: no resolved pair is mis-ordered.
    """
    resolved, misordered, ties = 0, [], 0
    for a in range(len(plans)):
        for b in range(a + 1, len(plans)):
            o = ref.order(plans[a], plans[b])
            if o == 0:
                ties += 1
                continue
            resolved += 1
            fast, slow = (a, b) if o < 0 else (b, a)
            if estimates[fast] > estimates[slow]:
                misordered.append(f"{names[fast]} < {names[slow]}")
    return {"pairs": len(plans) * (len(plans) - 1) // 2, "resolved": resolved, "ties": ties,
            "misordered": misordered, "matches": not misordered}


__all__ = ["Reference", "measure", "order_check"]
