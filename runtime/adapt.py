"""Adaptive tuning: a Session watches its workload between forward steps and retunes within its spec's envelope.

Signals, read after every forward step: sequence length (tokens in the KV cache), batch, the measured step
time, memory pressure (each budgeted tier's bytes in use over its budget, from the store's accounting) and
the streaming counters (misses, expert prefetch hit rate). Knobs, each bounded by what the spec allowed:

* **residency** — under pressure on the execution tier a resident block is demoted to streamed from the
  slower tier (the last resident block first: earlier blocks run first in every step and gain most from
  staying put), one block per step until the tier is under ``pressure_high``.
* **lookahead** (layer streaming) — lowered under pressure (each step of lookahead holds one staging slot),
  raised back towards the spec's value when there is room and units still arrive late (misses).
* **expert lookahead** — lowered when few prefetched experts get used (wasted transfers), raised back when
  prefetches pay off and experts still miss.
* **KV window** — under pressure, and once the sequence outgrows ``long_sequence``, the KV cache's eviction
  window is halved (down to ``min_kv_window``); the KV precision for the *next* request drops to int8 (a
  cache's stored pages cannot change precision mid-sequence).

Every adjustment is an :class:`Adjustment` (step, knob, old, new, reason), logged and kept in order.
Adaptation never fails a request: an adjustment that cannot be made is logged as skipped, and the step goes on.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from runtime._log import get_logger
from runtime.errors import JalapenoError

if TYPE_CHECKING:
    from runtime.session import Session

logger = get_logger(__name__)


@dataclass(frozen=True)
class AdaptConfig:
    """Thresholds of the adaptive tuner.

    Attributes:
        pressure_high: a budgeted tier above this fraction of its budget sheds memory.
        pressure_low: below this fraction there is room to raise lookahead again.
        long_sequence: KV tokens beyond which, under pressure, the KV window is halved.
        min_kv_window: the KV window never goes below this.
        min_prefetch_hit_rate: expert prefetch hit rate below which expert lookahead is lowered.
        every: consider adjustments every this many steps (pressure is checked every step).
    """

    pressure_high: float = 0.95
    pressure_low: float = 0.7
    long_sequence: int = 512
    min_kv_window: int = 64
    min_prefetch_hit_rate: float = 0.3
    every: int = 4

    def __post_init__(self) -> None:
        if not 0 < self.pressure_low < self.pressure_high:
            raise JalapenoError(f"need 0 < `pressure_low` < `pressure_high`, got {self.pressure_low} and "
                                f"{self.pressure_high}.")
        if self.min_kv_window < 1 or self.every < 1 or self.long_sequence < 1:
            raise JalapenoError("`min_kv_window`, `long_sequence` and `every` must be >= 1.")


@dataclass(frozen=True)
class Adjustment:
    """One change the tuner made (or skipped), and why."""

    step: int
    knob: str
    old: Any
    new: Any
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Adapter:
    """The tuner a Session runs after each forward step (see the module docstring)."""

    def __init__(self, session: Session, config: AdaptConfig) -> None:
        self.session, self.config = session, config
        self.adjustments: list[Adjustment] = []
        self.step = 0
        self.step_times: list[float] = []
        self.max_lookahead = session.spec.lookahead  # the spec's envelope
        self.max_expert_lookahead = session.experts.lookahead if session.experts is not None else 0
        self._misses = 0
        self._expert = (0, 0)  # (prefetches, prefetch_used) at the last expert decision
        self.next_kv_precision: str | None = None
        self.workload: dict[str, Any] = {}

    def record(self, knob: str, old: Any, new: Any, reason: str) -> None:
        adj = Adjustment(self.step, knob, old, new, reason)
        self.adjustments.append(adj)
        logger.info("adapt step %d: %s %s -> %s (%s)", adj.step, knob, old, new, reason)

    # ------------------------------------------------------------------ entry point
    def after_step(self, *, seq_len: int, batch: int, step_s: float) -> None:
        self.step += 1
        self.step_times.append(step_s)
        self.workload = {"seq_len": seq_len, "batch": batch, "step_s": step_s,
                         "median_step_s": statistics.median(self.step_times[-32:])}
        try:
            pressure = self._pressure()
            tier = self.session.exec_tier
            if pressure.get(tier, 0.0) > self.config.pressure_high:
                self._shed(tier, pressure[tier], seq_len)
            elif self.step % self.config.every == 0:
                self._tune(pressure.get(tier, 0.0))
        except Exception as exc:  # noqa: BLE001 - adaptation must never fail the request
            self.record("none", None, None, f"skipped: {type(exc).__name__}: {exc}")

    def _pressure(self) -> dict[str, float]:
        store = self.session.store
        return {t: store.used(t) / b for t, b in store.budgets.items() if b}

    # ------------------------------------------------------------------ under pressure
    def _shed(self, tier: str, pressure: float, seq_len: int) -> None:
        c, s = self.config, self.session
        why = f"{tier} tier at {pressure:.0%} of its budget (> {c.pressure_high:.0%})"
        streamer = s.streamer
        if streamer.lookahead > 0 and any(u.streamed for u in streamer.units):
            old = streamer.lookahead
            streamer.set_lookahead(old - 1)
            self.record("lookahead", old, old - 1, why + ": one staging slot fewer")
            if self._pressure().get(tier, 0.0) <= c.pressure_high:
                return
        kv = s.kv_cache
        if kv is not None and seq_len > min(c.long_sequence, c.min_kv_window * 2):
            layers = kv.kv_layers
            before = layers[0].window
            old = before or seq_len
            new = max(c.min_kv_window, old // 2)
            if new < old:
                for layer in layers:
                    layer.window = new
                self.record("kv_window", before, new,
                            why + f": KV keeps the {new} latest tokens (+ sinks), sequence is {seq_len}")
            if s.kv_config is not None and s.kv_config.precision == "float" and self.next_kv_precision is None:
                self.next_kv_precision = "int8"
                self.record("kv_precision", "float", "int8", why + ": next request stores KV in int8")
            if new < old:
                return  # the window trims at the next step's append: look again then, before demoting blocks
        budget = s.store.budgets[tier]
        plan = s.plan_demotion(int(c.pressure_high * budget)) if budget else None
        if plan is None:
            self.record("none", None, None, why + ": nothing left to shed that would bring it under budget")
            return
        blocks, lookahead = plan
        home = s.slower_tier()
        old_la = streamer.lookahead
        freed = s.demote_blocks(blocks, home, lookahead=lookahead)
        self.record("residency", f"blocks {blocks} resident", f"blocks {blocks} streamed from {home}",
                    why + f": demoted (last resident first), {freed} B freed on {tier}")
        if streamer.lookahead != old_la:
            self.record("lookahead", old_la, streamer.lookahead, why + ": staging for the demoted blocks")

    # ------------------------------------------------------------------ with room
    def _tune(self, pressure: float) -> None:
        c, s = self.config, self.session
        streamer = s.streamer
        misses = streamer.stats.misses
        late = misses - self._misses
        self._misses = misses
        if (pressure < c.pressure_low and late > 0 and streamer.lookahead < self.max_lookahead
                and any(u.streamed for u in streamer.units)):
            old = streamer.lookahead
            try:
                streamer.set_lookahead(old + 1)
                self.record("lookahead", old, old + 1, f"{late} streamed units arrived late in the last "
                            f"{c.every} steps with the tier at {pressure:.0%}: fetch one more ahead")
            except JalapenoError as exc:
                self.record("lookahead", old, old, f"raise skipped: {exc}")
        ex = s.experts
        if ex is not None:
            st = ex.stats
            prefetches, used = st.prefetches - self._expert[0], st.prefetch_used - self._expert[1]
            if prefetches < 8:  # judge on at least 8 prefetches since the last judgement
                return
            self._expert = (st.prefetches, st.prefetch_used)
            if used / prefetches < c.min_prefetch_hit_rate and ex.lookahead > 1:
                old = ex.lookahead
                ex.lookahead = old - 1
                self.record("expert_lookahead", old, old - 1, f"only {used} of {prefetches} prefetched experts "
                            f"were used (< {c.min_prefetch_hit_rate:.0%}): fewer wasted transfers")
            elif used / prefetches >= 0.6 and ex.lookahead < self.max_expert_lookahead:
                old = ex.lookahead
                ex.lookahead = old + 1
                self.record("expert_lookahead", old, old + 1, f"{used} of {prefetches} prefetched experts were "
                            f"used: prefetch deeper")
