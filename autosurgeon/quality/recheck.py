"""A validated quality proxy: its error measured against real quality, and a re-check of plans near the bound.

The cheap evaluators bound quality with the sensitivity proxy (per-unit divergences added up). That sum is an
estimate; on held-out models it was seen to say 0.45 % where the runtime measured 2.6 %. So:

* :func:`calibrate` measures the proxy against quality measured on the plans themselves (``n`` seeded random
  plans of the space, each applied and scored with the same ``QualitySettings`` every command uses) and states
  the proxy's error: ``scale`` (median measured / estimated) and ``error`` (the 90th percentile of
  ``|measured - scale x estimate|``, an absolute loss);
* :func:`recheck` takes a plan admitted at ``estimate <= bound`` and, when the estimate is within the error of
  the bound (``estimate x scale + error > bound``), measures it before it is handed to the user: admitted only if
  the MEASURED loss is ``<= bound``. Plans far below the bound pass on the estimate (saying so).

Search, plan, front and apply code call ``recheck(...)`` (or :meth:`ProxyCalibration.needs_recheck` to decide
alone); nothing here tunes the proxy itself.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from autosurgeon.cost.profiled import TimingSettings
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.evaluate import RuntimeEvaluator

if TYPE_CHECKING:  # annotations only
    from autosurgeon.plan import Plan
    from autosurgeon.space.search_space import SearchSpace
    from autosurgeon.zoo import LoadedModel


@dataclass(frozen=True)
class ProxyCalibration:
    """The proxy's measured error. ``pairs`` are ``(estimated, measured)`` losses of the calibration plans."""

    scale: float
    error: float
    pairs: tuple[tuple[float, float], ...] = field(default_factory=tuple)
    method: str = ""

    @classmethod
    def from_pairs(cls, pairs: Sequence[tuple[float, float]], *, method: str = "") -> ProxyCalibration:
        """Fit ``scale`` and ``error`` (module docstring) on ``(estimated, measured)`` pairs (at least 3)."""
        pairs = tuple((float(e), float(m)) for e, m in pairs)
        if len(pairs) < 3:
            raise InvalidArgumentError(f"`pairs` must hold >= 3 (estimated, measured) losses, got {len(pairs)}.")
        ratios = [m / e for e, m in pairs if e > 1e-12]
        scale = statistics.median(ratios) if ratios else 1.0
        scale = max(scale, 1e-6)
        residuals = [abs(m - scale * e) for e, m in pairs]
        return cls(scale=scale, error=float(np.percentile(residuals, 90)), pairs=pairs, method=method)

    def corrected(self, estimate: float) -> float:
        return self.scale * estimate

    def needs_recheck(self, estimate: float, bound: float) -> bool:
        """Whether a plan admitted by ``estimate <= bound`` could measure above ``bound`` (within the error)."""
        return self.corrected(estimate) + self.error > bound

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "error": self.error, "n": len(self.pairs), "method": self.method}


@dataclass(frozen=True)
class RecheckResult:
    """Whether a plan stays admitted, and on what evidence."""

    admitted: bool
    estimate: float
    bound: float
    measured: float | None = None
    interval: tuple[float, float] | None = None
    reason: str = ""


def measure_loss_with(loaded: LoadedModel, profile: Any = "local", *, settings: Any = None,
                      space: SearchSpace | None = None) -> Callable[[Any], tuple[float, tuple[float, float] | None]]:
    """A measurer: plan -> (measured loss, its 95 % interval), applying the plan on the runtime (RuntimeEvaluator
    without timing repeats or energy) with ``settings`` (``QualitySettings``; default: the commands' default)."""

    ev = RuntimeEvaluator(loaded, profile, space=space, energy=False, quality_settings=settings,
                          timing=TimingSettings(step_warmup=0, step_repeats=1, repeats=1))

    def measure(plan: Plan) -> tuple[float, tuple[float, float] | None]:
        m = ev.evaluate(plan)
        report = m.extra.get("quality") or {}
        interval = report.get("loss_interval")
        return float(m.quality_loss), (tuple(interval) if interval else None)

    return measure


def calibrate(space: SearchSpace, estimate: Callable[[Any], float], measure: Callable[[Any], tuple[float, Any]], *,
              n: int = 8, seed: int = 0) -> ProxyCalibration:
    """The proxy's error on ``n`` seeded random plans of ``space`` (``estimate``/``measure``: plan vector -> loss)."""
    if n < 3:
        raise InvalidArgumentError(f"`n` must be >= 3 calibration plans, got {n}.")
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        x = space.random_vector(rng)
        pairs.append((estimate(x), measure(x)[0]))
    return ProxyCalibration.from_pairs(pairs, method=f"{n} random plans (seed {seed}), measured vs proxy")


def recheck(plan: Plan, *, estimate: float, bound: float, calibration: ProxyCalibration | None,
            measure: Callable[[Any], tuple[float, Any]], unscored: int = 0) -> RecheckResult:
    """Keep a plan admitted at ``estimate <= bound`` only if it holds: measured when near the bound (docstring).

    ``calibration=None`` (no stated error yet, e.g. one plan from ``autosurgeon plan``): always measured.
    ``unscored``: decisions the proxy has no figure for (Metrics ``extra["quality_unscored"]``, e.g. an
    embedding's precision): the estimate says nothing about them, so the plan is measured (on unseen-gemma a
    bfloat16 embedding measured +108 % where the proxy said 0.000 %)."""
    if bound < 0:
        raise InvalidArgumentError(f"`bound` (--max-quality-loss) must be >= 0, got {bound}.")
    if estimate > bound:
        return RecheckResult(False, estimate, bound, reason=f"estimate {estimate:.4%} is above the bound")
    if unscored == 0 and calibration is not None and not calibration.needs_recheck(estimate, bound):
        return RecheckResult(True, estimate, bound, reason=(
            f"estimate {estimate:.4%} x {calibration.scale:.3g} + proxy error {calibration.error:.4%} is below the "
            "bound: admitted on the estimate"))
    measured, interval = measure(plan)
    ok = measured <= bound
    why = (f"{unscored} decision(s) the proxy cannot score" if unscored else
           "within the proxy's error of the bound" if calibration is not None else "the proxy's error is unknown")
    return RecheckResult(ok, estimate, bound, measured=measured, interval=interval, reason=(
        f"{why}: measured {measured:.4%} {'<=' if ok else '>'} {bound:.4%}"))
