"""One measured claim: its target, the figure, the baseline from the same run, and the verdict with its gap.

A claim's target is a range from the issue ("2–4× faster", "30–50% less energy per token", "< 1% quality
loss"). The verdict reads only the side of the range that is a promise: at least the low end for speed,
memory and energy, at most the bound for quality loss. A figure above the range is met, and says so; a
figure short of it is *missed*, with the gap in the claim's own unit. Records that could not be measured
(no GPU and no saved GPU figures) or that rest on an estimate rather than a counter are labelled as such and
never counted as met.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

STATUSES = ("met", "missed", "not measured", "estimate")


@dataclass(frozen=True)
class Target:
    """A claim's target range.

    Attributes:
        kind: ``"ratio"`` (× of a baseline, higher is better), ``"reduction"`` (fraction less than a
            baseline, higher is better) or ``"max_loss"`` (a fraction that must stay below ``high``).
        low: the promised minimum (``ratio``/``reduction``); unused for ``max_loss``.
        high: the top of the stated range (``ratio``/``reduction``), or the bound (``max_loss``).
    """

    kind: str
    low: float
    high: float

    def __post_init__(self) -> None:
        if self.kind not in ("ratio", "reduction", "max_loss"):
            raise ValueError(f"`kind` must be ratio, reduction or max_loss, got {self.kind!r}.")

    @property
    def text(self) -> str:
        if self.kind == "ratio":
            return f"{self.low:g}–{self.high:g}×"
        if self.kind == "reduction":
            return f"{self.low * 100:g}–{self.high * 100:g}% lower"
        return f"< {self.high * 100:g}% loss"

    def format(self, figure: float) -> str:
        """``figure`` in the target's unit."""
        if self.kind == "ratio":
            return f"{figure:.2f}×"
        if self.kind == "reduction":
            return f"{figure * 100:.1f}% lower" if figure >= 0 else f"{-figure * 100:.1f}% higher"
        return f"{figure * 100:+.3f}%"


SPEED = Target("ratio", 2.0, 4.0)
MEMORY = Target("ratio", 4.0, 8.0)
ENERGY = Target("reduction", 0.30, 0.50)
QUALITY = Target("max_loss", 0.0, 0.01)
TARGETS = {"speed": SPEED, "memory": MEMORY, "energy": ENERGY, "quality": QUALITY}


def judge(target: Target, figure: float | None) -> tuple[str, str]:
    """``(status, gap)`` of ``figure`` against ``target``: "met" or "missed", and how far from the promise."""
    if figure is None or not math.isfinite(figure):
        return "not measured", "no figure"
    if target.kind == "max_loss":
        if figure < target.high:
            return "met", f"{(target.high - figure) * 100:.2f} points under the {target.high * 100:g}% bound"
        return "missed", f"{(figure - target.high) * 100:.2f} points over the {target.high * 100:g}% bound"
    if target.kind == "ratio":
        if figure >= target.low:
            above = f"; above the stated range (top {target.high:g}×)" if figure > target.high else ""
            return "met", f"{figure / target.low:.2f}× the {target.low:g}× minimum{above}"
        share = f"{figure / target.low:.0%} of the minimum"
        return "missed", f"{target.low - figure:.2f}× short of {target.low:g}× ({share})"
    if figure >= target.low:
        above = f"; above the stated range (top {target.high * 100:g}%)" if figure > target.high else ""
        return "met", f"{(figure - target.low) * 100:.1f} points past the {target.low * 100:g}% minimum{above}"
    return "missed", f"{(target.low - figure) * 100:.1f} points short of {target.low * 100:g}% lower"


@dataclass(frozen=True)
class ClaimRecord:
    """One row of the report.

    Attributes:
        claim: ``"speed"``, ``"memory"``, ``"energy"`` or ``"quality"``.
        title: what is compared, e.g. "placement vs accelerate disk offload (same RAM cap)".
        target: the claim's target range.
        figure: the measured figure in the target's unit (a ratio, a fraction lower, a loss fraction), or None.
        ours: what we measured, with units (e.g. "3.10 tok/s").
        baseline: what it is compared with, measured in the same run, with units.
        method: how it was measured (model, setting, timing, counter), one paragraph.
        device: the machine (CPU model or GPU card).
        source: where the figure comes from ("measured in this run, <UTC time>", or the saved GPU file's card
            and date).
        settings: the knobs of the measurement.
        status: "met", "missed", "not measured" or "estimate" (see the module docstring).
        gap: how far past or short of the target.
    """

    claim: str
    title: str
    target: Target
    figure: float | None
    ours: str
    baseline: str
    method: str
    device: str
    source: str
    settings: dict[str, Any] = field(default_factory=dict)
    status: str = ""
    gap: str = ""

    def __post_init__(self) -> None:
        if self.claim not in TARGETS:
            raise ValueError(f"`claim` must be one of {', '.join(TARGETS)}, got {self.claim!r}.")
        if not self.status:
            status, gap = judge(self.target, self.figure)
            object.__setattr__(self, "status", status)
            object.__setattr__(self, "gap", self.gap or gap)
        if self.status not in STATUSES:
            raise ValueError(f"`status` must be one of {', '.join(STATUSES)}, got {self.status!r}.")

    @property
    def measured(self) -> str:
        return "—" if self.figure is None or not math.isfinite(self.figure) else self.target.format(self.figure)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["target"] = asdict(self.target)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClaimRecord:
        data = dict(data)
        data["target"] = Target(**data["target"])
        return cls(**data)


def not_measured(claim: str, title: str, *, why: str, device: str = "—", method: str = "") -> ClaimRecord:
    """A row for a claim that has no figure (never invented): status "not measured", ``why`` as the gap."""
    return ClaimRecord(claim=claim, title=title, target=TARGETS[claim], figure=None, ours="—", baseline="—",
                       method=method or why, device=device, source=why, status="not measured", gap=why)


def ratio_record(claim: str, title: str, *, ours: float, base: float, unit: str, higher_is_better: bool = True,
                 **kwargs: Any) -> ClaimRecord:
    """A ``ratio`` record from two measured values (``ours / base``, or ``base / ours`` when lower is better)."""
    figure = (ours / base if higher_is_better else base / ours) if ours > 0 and base > 0 else None
    return ClaimRecord(claim=claim, title=title, target=TARGETS[claim], figure=figure,
                       ours=kwargs.pop("ours_text", f"{ours:.3g} {unit}"),
                       baseline=kwargs.pop("baseline_text", f"{base:.3g} {unit}"), **kwargs)


def reduction_record(title: str, *, ours: float, base: float, unit: str, **kwargs: Any) -> ClaimRecord:
    """An energy ``reduction`` record: ``1 - ours / base``."""
    figure = 1.0 - ours / base if base > 0 and math.isfinite(ours) and math.isfinite(base) else None
    return ClaimRecord(claim="energy", title=title, target=ENERGY, figure=figure,
                       ours=kwargs.pop("ours_text", f"{ours:.3g} {unit}"),
                       baseline=kwargs.pop("baseline_text", f"{base:.3g} {unit}"), **kwargs)
