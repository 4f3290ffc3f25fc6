"""The demo's race: every contender measured by ONE harness in one process, interleaved (MEASURING.md).

Method: one short warm-up generation per contender (first calls pay for kernel selection and caches), which also
sizes the race: the token count is cut (to no fewer than ``MIN_TOKENS``) so that ``rounds`` rounds of every
contender fit ``budget_s`` by the warm-up's speed; then ``rounds`` rounds; in round ``r`` the contenders run in an
order rotated by ``r`` (so load from other jobs falls on all alike), each generating the same number of greedy
tokens from the same prompt. Per contender: the median seconds per generation and its min-max; speed ratios against
the chosen plan are taken per round, then their median (a ratio from one round has both sides under the same
load). Energy: a counter (NVML on a GPU, RAPL on a CPU where readable) summed over the timed generations, else
the power model's estimate (watts x seconds), labelled as such; never a bare 0. Bytes per tier: the contender's
own accounting (``demo_contenders``). Quality: the same ``QualityEvaluator`` on every contender's model.
"""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

METHOD = " ".join((__doc__ or "").split("Method: ")[-1].split())
COUNTER_MIN_S = 1.0
WARMUP_TOKENS = 4
MIN_TOKENS = 8  # below this much timed work, a counter reading is coarse (NVML ticks every ~100 ms or slower)


@dataclass
class Row:
    """One contender's measured figures."""

    label: str
    kind: str  # "plan" | "accelerate"
    source: str
    tokens: list[int]
    seconds: list[float]  # per round, same order as the rounds
    tier_bytes: dict[str, int]
    memory_method: str
    energy_j_per_token: float | None
    energy_label: str
    quality_loss: float | None
    quality_method: str | None
    fits: bool = True
    why_not: list[str] = field(default_factory=list)  # budget or quality bound it misses
    plan: Any = None

    @property
    def tokens_per_s(self) -> float:
        med = statistics.median(self.seconds)
        return len(self.tokens) / med if med > 0 else float("nan")

    @property
    def spread(self) -> float:
        """(max - min) / median of the per-round seconds."""
        med = statistics.median(self.seconds)
        return (max(self.seconds) - min(self.seconds)) / med if med > 0 else float("nan")

    def memory(self, tiers: Sequence[str]) -> int:
        return sum(int(self.tier_bytes.get(t, 0)) for t in tiers)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "kind": self.kind, "source": self.source, "generated_tokens": len(self.tokens),
                "seconds_per_round": self.seconds, "tokens_per_s": self.tokens_per_s, "spread": self.spread,
                "tier_bytes": self.tier_bytes, "memory_method": self.memory_method,
                "energy_j_per_token": self.energy_j_per_token, "energy_label": self.energy_label,
                "quality_loss": self.quality_loss, "quality_method": self.quality_method, "fits": self.fits,
                "why_not": self.why_not}


@dataclass
class Comparison:
    """The race's rows, its settings and the load it ran under."""

    rows: list[Row]
    rounds: int
    tokens: int
    load_before: float
    load_after: float
    method: str = ""

    def row(self, label: str) -> Row | None:
        return next((r for r in self.rows if r.label == label), None)

    def ratio(self, a: Row, b: Row) -> tuple[float, float, float]:
        """Speed of ``a`` over ``b`` (>1: a is faster): median and min-max of the per-round ratios."""
        ratios = [sb / sa for sa, sb in zip(a.seconds, b.seconds) if sa > 0]
        return statistics.median(ratios), min(ratios), max(ratios)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "rounds": self.rounds, "tokens": self.tokens,
                "load_1min_before": self.load_before, "load_1min_after": self.load_after,
                "rows": [r.to_dict() for r in self.rows]}


def _energy(joules: float, seconds: float, tokens: int, source: str | None, watts: float) -> tuple[float, str]:
    """Joules per token and its label; the estimate where the counter gave nothing usable."""
    if source in ("nvml", "rapl") and not math.isnan(joules) and joules > 0:
        label = f"measured ({source})" + (f", coarse: {seconds:.2f} s window" if seconds < COUNTER_MIN_S else "")
        return joules / tokens, label
    return watts * seconds / tokens, f"estimated ({watts:.0f} W power model x time; no readable counter)"


def energy_window(contender: Any, ids: torch.Tensor, tokens: int, watts: float) -> tuple[float, str]:
    """Joules per token over one window of whole ``generate`` calls, repeated until the window lasts at least
    ``COUNTER_MIN_S`` (an energy counter that ticks every ~100 ms cannot see a shorter one), and its label."""
    from runtime.telemetry import EnergyMeter

    generated = 0
    meter = EnergyMeter(device=contender.device, watts=watts, min_window_s=COUNTER_MIN_S)
    with meter:
        started = time.perf_counter()
        while generated == 0 or time.perf_counter() - started < COUNTER_MIN_S:
            generated += len(contender.generate(ids, tokens))
    joules = meter.joules if meter.joules is not None else math.nan
    per_token, label = _energy(joules, meter.seconds, generated, meter.source, watts)
    return per_token, f"{label}, {generated} tokens in one {meter.seconds:.2f} s window"


def race(contenders: Sequence[Any], ids: torch.Tensor, *, tokens: int, rounds: int, watts: float,
         quality: Any = None, budget_s: float | None = None, known_quality: dict[str, float] | None = None,
         progress: Callable[[str], None] | None = None) -> Comparison:
    """Measure every contender with the same harness (module docstring); ``quality``: a QualityEvaluator.

    ``known_quality``: losses this same evaluator already measured on a row's exact plan (the runtime
    evaluator's, on the unmodified model and the search's pick), reused rather than measured twice."""
    import os

    from runtime.telemetry import EnergyMeter

    say = progress or (lambda message: None)
    load_before = os.getloadavg()[0]
    warm = min(WARMUP_TOKENS, tokens)
    per_token = 0.0
    for c in contenders:  # warm-up: kernel selection, caches, first-call costs
        started = time.perf_counter()
        c.generate(ids, warm)
        per_token += (time.perf_counter() - started) / warm
    if budget_s is not None and per_token * tokens * rounds > budget_s:
        tokens = max(min(MIN_TOKENS, tokens), int(budget_s / (per_token * rounds)))
        say(f"{tokens} tokens per generation (the warm-up's speed x {rounds} rounds fits {budget_s:.0f} s)")
    outputs: dict[str, list[int]] = {}
    seconds: dict[str, list[float]] = {c.label: [] for c in contenders}
    joules = {c.label: 0.0 for c in contenders}
    sources: dict[str, str | None] = {}
    n = len(contenders)
    for r in range(rounds):
        order = [contenders[(i + r) % n] for i in range(n)]
        for c in order:
            meter = EnergyMeter(device=c.device, watts=watts, min_window_s=0.0)
            with meter:
                started = time.perf_counter()
                out = c.generate(ids, tokens)
                seconds[c.label].append(time.perf_counter() - started)
            outputs.setdefault(c.label, out)
            joules[c.label] += meter.joules if meter.joules is not None else math.nan
            sources[c.label] = meter.source
        say(f"round {r + 1}/{rounds}")
    rows = []
    for c in contenders:
        per_token, label = _energy(joules[c.label], sum(seconds[c.label]), len(outputs[c.label]) * rounds,
                                   sources.get(c.label), watts)
        if sources.get(c.label) in ("nvml", "rapl") and min(seconds[c.label]) < COUNTER_MIN_S:
            # a timed generation was shorter than the counter's resolution: one dedicated window of whole
            # generations, repeated until it is >= COUNTER_MIN_S long, gives the energy instead
            per_token, label = energy_window(c, ids, tokens, watts)
        q = qm = None
        if quality is not None:
            known = (known_quality or {}).get(c.label)
            q = float(known) if known is not None else float(quality.loss(c.model))
            reference = getattr(quality, "reference", None)
            qm = str(getattr(reference, "method", None) or quality.method)
        rows.append(Row(label=c.label, kind=c.kind, source=c.source, tokens=outputs[c.label],
                        seconds=seconds[c.label], tier_bytes=c.tier_bytes(), memory_method=c.memory_method,
                        energy_j_per_token=per_token, energy_label=label, quality_loss=q, quality_method=qm,
                        plan=getattr(c, "plan", None)))
    return Comparison(rows=rows, rounds=rounds, tokens=tokens, load_before=load_before,
                      load_after=os.getloadavg()[0], method=METHOD)


def judge(comparison: Comparison, *, budget: int, tiers: Sequence[str], max_quality_loss: float) -> None:
    """Mark each row's fit: its bytes on ``tiers`` within ``budget`` and its measured loss within the bound."""
    from runtime.sizes import format_bytes

    for row in comparison.rows:
        row.why_not = []
        used = row.memory(tiers)
        if used > budget:
            row.why_not.append(f"{format_bytes(used)} on {'+'.join(t.upper() for t in tiers)} is over the budget "
                               f"{format_bytes(budget)}")
        if row.quality_loss is not None and row.quality_loss > max_quality_loss:
            row.why_not.append(f"quality loss {row.quality_loss:.2%} is over the bound {max_quality_loss:.2%}")
        row.fits = not row.why_not


def pick(comparison: Comparison) -> Row | None:
    """The fastest plan row (median tokens/s) that fits; accelerate rows are compared, not chosen."""
    plans = [r for r in comparison.rows if r.kind == "plan" and r.fits]
    return max(plans, key=lambda r: r.tokens_per_s, default=None)


def standing(comparison: Comparison, chosen: Row, other: Row, tiers: Sequence[str] = ("gpu", "cpu")) -> str:
    """One line: how ``chosen`` stands against ``other`` (speed per-round median, bytes on ``tiers``, energy, quality)."""
    speed, lo, hi = comparison.ratio(chosen, other)
    parts = [f"{speed:.2f}x its speed ({lo:.2f}-{hi:.2f} over {comparison.rounds} rounds)"]
    mine, theirs = chosen.tier_bytes, other.tier_bytes
    where = "+".join(t.upper() for t in tiers)
    fast = sum(mine.get(t, 0) for t in tiers), sum(theirs.get(t, 0) for t in tiers)
    if fast[0] and fast[1]:
        parts.append(f"{fast[0] / fast[1]:.2f}x its {where} bytes")
    elif fast[0] and not fast[1]:
        parts.append(f"it holds 0 B on {where} (its weights sit on a slower tier, read back at every step)")
    if chosen.energy_j_per_token and other.energy_j_per_token:
        parts.append(f"{chosen.energy_j_per_token / other.energy_j_per_token:.2f}x its energy/token")
    if chosen.quality_loss is not None and other.quality_loss is not None:
        parts.append(f"quality loss {chosen.quality_loss:+.2%} vs {other.quality_loss:+.2%}")
    verdict = _verdict(chosen, other, speed, lo, hi)
    return f"vs {other.label}: " + ", ".join(parts) + f" -> {verdict}"


def _verdict(chosen: Row, other: Row, speed: float, lo: float, hi: float) -> str:
    if not other.fits:
        return "beats it on the combination asked for (it " + "; ".join(other.why_not) + ")"
    if speed > 1 and lo > 1:
        return "faster in every round, both within budget and bound"
    if speed >= 1:
        return "faster by the median, not in every round (noise), both within budget and bound"
    if other.kind == "accelerate":
        return ("NOT beaten: accelerate is faster here; the chosen plan is the fastest of AutoSurgeon's plans "
                "that fit (accelerate's rows are compared, not chosen)")
    return "NOT beaten on speed (measured slower in this run, though the estimates ranked it first)"


__all__ = ["Comparison", "Row", "judge", "pick", "race", "standing"]
