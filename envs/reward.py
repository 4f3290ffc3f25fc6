"""SurgeryEnv's reward: preference-weighted improvement over the unmodified model, minus violations.

At the end of an episode the plan is evaluated and

    r_k    = m_k / m_k_base                                                  (k: latency, memory, energy)
    s_k    = min((1 - r_k) / max(g_k, gain_floor), gain_cap)     if r_k <= 1  (a gain)
           = -min(log2(r_k), loss_cap)                          if r_k > 1   (a loss)
    reward = sum_k w_k * s_k            (scalarisation "weighted-sum"; the default "chebyshev": improvement_of)
             - memory_penalty  * [mem > budget]  * (1 + mem / budget - 1)
             - quality_penalty * [q > bound]     * (1 + (q - bound) / bound)
             - power_penalty   * [P > cap]       * (1 + (P - cap) / cap)

``m_k_base`` is the unmodified model's metric from the same evaluator (so the improvement term is 0 for
the unmodified model); ``w`` is the episode's preference (on the simplex). ``g_k`` is objective k's *reachable
gain* on this model and device (``envs.reward_scale``: the most a few reference plans improve it), so a score of
1 means "as good as the best reference on this objective", whatever the model or device; ``gain_floor`` keeps an
objective nothing improves (latency of a small launch-bound model on a big GPU) from dividing by ~0. A loss is
counted in doublings: a plan 2x slower scores -1 on latency, 64x slower -6 (at most ``loss_cap``), where the raw
``1 - r`` gave -63 and swamped every preference weight (streaming a 7B shape's blocks on a paper H100 costs
16-129x; ``envs.reward_scale`` and ``experiments/benchmarks/results/policy_transfer_s6.md`` for the evidence).
The loss keeps a slope everywhere: a hard cap at -1 (tried first) made every further streamed block free once the
first had reached it, and a policy trained on it streamed everything for every preference. ``gains=None`` (or
``RewardConfig(scale="raw")``) gives the uncapped ``1 - m_k / m_k_base`` of version 0. The penalties
have a fixed part (any violation costs at least what any improvement can earn: scores are at most
``gain_cap`` = 1 by default) plus a part growing with the
excess, so the agent learns the boundary's direction. Quality is only penalised when the evaluator reports
a quality loss (a SensitivityTable for the cheap evaluators, held-out data for the runtime one). The power
term applies only with a power cap: ``P`` is the plan's mean power (energy / latency); on a paper profile
evaluated in the mode the cap selects it never fires (the mode's envelope bounds ``P``), on a measured
profile it is the cap's constraint, treated like the memory budget's penalty.
Intermediate steps are rewarded 0 unless the env shapes them (``SurgeryEnv(reward_shaping=True)``, what training
uses: potential-based, the episode's shaped return telescopes to this reward).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autosurgeon.errors import InvalidArgumentError
from autosurgeon.hardware.power_cap import mean_power_w


@dataclass(frozen=True)
class RewardConfig:
    """Penalty weights and the quality bound (relative loss, 0.05 = 5 %)."""

    memory_penalty: float = 1.0
    quality_penalty: float = 1.0
    quality_bound: float = 0.05
    power_penalty: float = 1.0
    # "raw" (default, version 0): 1 - m/m_base, weighted sum. "reachable": scores over reachable gains, losses in
    # doublings, scalarised by `scalarisation` -- opt-in: in 18-minute trainings it gave no more distinct plans on a
    # paper H100 and fewer on a Jetson (experiments/benchmarks/results/policy_transfer_s6*.md).
    scale: str = "raw"
    scalarisation: str = "chebyshev"  # how the preference weighs the scores: "chebyshev" or "weighted-sum"
    rho: float = 0.05  # the augmented Chebyshev's small weighted-sum term (breaks ties towards non-dominated plans)
    gain_floor: float = 0.1
    loss_cap: float = 8.0  # doublings: a plan 256x worse on one objective counts as 256x
    gain_cap: float = 1.0

    def __post_init__(self) -> None:
        for name in ("memory_penalty", "quality_penalty", "quality_bound", "power_penalty"):
            value = getattr(self, name)
            if not value >= 0:
                raise InvalidArgumentError(f"`{name}` must be >= 0, got {value!r}.")
        if self.scale not in SCALES:
            raise InvalidArgumentError(f"`scale` must be one of {', '.join(SCALES)}, got {self.scale!r}.")
        if self.scalarisation not in SCALARISATIONS:
            raise InvalidArgumentError(f"`scalarisation` must be one of {', '.join(SCALARISATIONS)}, got "
                                       f"{self.scalarisation!r}.")
        if not (np.isfinite(self.rho) and self.rho >= 0):
            raise InvalidArgumentError(f"`rho` must be a finite number >= 0, got {self.rho!r}.")
        for name in ("gain_floor", "loss_cap", "gain_cap"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise InvalidArgumentError(f"`{name}` must be a finite number > 0, got {value!r}.")


SCALES: tuple[str, ...] = ("reachable", "raw")
SCALARISATIONS: tuple[str, ...] = ("chebyshev", "weighted-sum")


def normalised(metrics: Any, base: Any, objectives: Sequence[str]) -> np.ndarray:
    """``m_k / m_k_base`` per objective; an objective the evaluator left out (energy None) counts as 1."""
    out = []
    for k in objectives:
        try:
            value, ref = metrics.objective(k), base.objective(k)
        except InvalidArgumentError:
            value, ref = 1.0, 1.0
        out.append(value / ref if ref > 0 else 1.0)
    return np.asarray(out, dtype=np.float64)


def objective_scores(ratios: np.ndarray, gains: np.ndarray | None, config: RewardConfig) -> np.ndarray:
    """Per objective ``s_k`` (module docstring); ``1 - ratio`` uncapped when ``gains`` is None or the config's
    scale is "raw"."""
    raw = 1.0 - np.asarray(ratios, dtype=np.float64)
    if gains is None or config.scale == "raw":
        return raw
    ratios = np.asarray(ratios, dtype=np.float64)
    scale = np.maximum(np.asarray(gains, dtype=np.float64), config.gain_floor)
    gain = np.minimum(raw / scale, config.gain_cap)
    loss = -np.minimum(np.log2(np.maximum(ratios, 1.0)), config.loss_cap)
    return np.where(ratios <= 1.0, gain, loss)


def deviations(ratios: np.ndarray, gains: np.ndarray, config: RewardConfig) -> np.ndarray:
    """Per objective, how far a plan is from the best reachable ratio ``1 - g_k``, in the scores' units: 0 there,
    1 at the unmodified model's ratio where ``g_k >= gain_floor``, plus one per doubling beyond it."""
    ratios = np.asarray(ratios, dtype=np.float64)
    gains = np.asarray(gains, dtype=np.float64)
    scale = np.maximum(gains, config.gain_floor)
    near = np.maximum(ratios - (1.0 - gains), 0.0) / scale
    far = gains / scale + np.minimum(np.log2(np.maximum(ratios, 1.0)), config.loss_cap)
    return np.where(ratios <= 1.0, near, far)


def improvement_of(ratios: np.ndarray, gains: np.ndarray | None, preference: np.ndarray,
                   config: RewardConfig) -> tuple[float, np.ndarray]:
    """(the preference-weighted improvement, the per-objective scores) of a plan's ratios (module docstring).

    "weighted-sum": ``sum_k w_k s_k``. "chebyshev" (augmented, the default): ``max_k w_k d0_k - max_k w_k d_k +
    rho (sum_k w_k d0_k - sum_k w_k d_k)`` with ``d_k`` the :func:`deviations` and ``d0_k`` the unmodified plan's
    (so it improves nothing, as under the weighted sum):
    a weighted sum of scores only ever picks the front's supported (convex-hull) points, so on a device where
    resident plans all have the same latency (small models on a big GPU) every preference that is not almost all
    memory picked one plan; Chebyshev reaches every front point for some preference, so K preferences spread
    along the front. Without ``gains`` (raw scale) it is always the weighted sum.
    """
    w = np.asarray(preference, dtype=np.float64)
    scores = objective_scores(ratios, gains, config)
    if gains is None or config.scale == "raw" or config.scalarisation == "weighted-sum":
        return float(np.dot(w, scores)), scores
    d = deviations(ratios, gains, config)
    d0 = deviations(np.ones_like(d), gains, config)
    return float(np.max(w * d0) - np.max(w * d) + config.rho * (np.dot(w, d0) - np.dot(w, d))), scores


def episode_reward(metrics: Any, base: Any, preference: np.ndarray, *, objectives: Sequence[str],
                   memory_budget: float | None, config: RewardConfig,
                   power_cap_w: float | None = None, gains: np.ndarray | None = None) -> tuple[float, dict[str, Any]]:
    """(reward, info) of one finished plan (module docstring: formula); ``gains`` the reachable gain per objective
    (``envs.reward_scale.reachable_gains``), None for the raw version-0 improvement."""
    ratios = normalised(metrics, base, objectives)
    improvement, scores = improvement_of(ratios, gains, preference, config)
    memory = float(metrics.objective("memory"))
    penalty = 0.0
    memory_violation = memory_budget is not None and memory > memory_budget
    if memory_violation:
        penalty += config.memory_penalty * (1.0 + memory / memory_budget - 1.0)
    quality = metrics.quality_loss
    quality_violation = quality is not None and quality > config.quality_bound
    if quality_violation:
        penalty += config.quality_penalty * (1.0 + (quality - config.quality_bound) / max(config.quality_bound, 1e-9))
    info = {"improvement": improvement, "ratios": ratios.tolist(), "scores": scores.tolist(), "memory_bytes": memory,
            "memory_budget": memory_budget, "memory_violation": bool(memory_violation),
            "quality_loss": quality, "quality_violation": bool(quality_violation)}
    if power_cap_w is not None:

        watts = mean_power_w(metrics)
        power_violation = watts is not None and watts > power_cap_w
        if power_violation:
            penalty += config.power_penalty * (1.0 + (watts - power_cap_w) / power_cap_w)
        info.update(power_w=watts, power_cap_w=power_cap_w, power_violation=bool(power_violation))
    return improvement - penalty, info


__all__ = ["SCALARISATIONS", "SCALES", "RewardConfig", "deviations", "episode_reward", "improvement_of", "normalised",
           "objective_scores"]
