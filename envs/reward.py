"""SurgeryEnv's reward: preference-weighted improvement over the unmodified model, minus violations.

At the end of an episode the plan is evaluated and

    reward = sum_k w_k * (1 - m_k / m_k_base)                     (k over latency, memory, energy)
             - memory_penalty  * [mem > budget]  * (1 + mem / budget - 1)
             - quality_penalty * [q > bound]     * (1 + (q - bound) / bound)
             - power_penalty   * [P > cap]       * (1 + (P - cap) / cap)

``m_k_base`` is the unmodified model's metric from the same evaluator (so the improvement term is 0 for
the unmodified model, and at most 1); ``w`` is the episode's preference (on the simplex). The penalties
have a fixed part (any violation costs more than any improvement can earn) plus a part growing with the
excess, so the agent learns the boundary's direction. Quality is only penalised when the evaluator reports
a quality loss (a SensitivityTable for the cheap evaluators, held-out data for the runtime one). The power
term applies only with a power cap: ``P`` is the plan's mean power (energy / latency); on a paper profile
evaluated in the mode the cap selects it never fires (the mode's envelope bounds ``P``), on a measured
profile it is the cap's constraint, treated like the memory budget's penalty.
Intermediate steps are rewarded 0: no shaping (episodes are tens of steps, PPO's GAE carries the credit).
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

    def __post_init__(self) -> None:
        for name in ("memory_penalty", "quality_penalty", "quality_bound", "power_penalty"):
            value = getattr(self, name)
            if not value >= 0:
                raise InvalidArgumentError(f"`{name}` must be >= 0, got {value!r}.")


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


def episode_reward(metrics: Any, base: Any, preference: np.ndarray, *, objectives: Sequence[str],
                   memory_budget: float | None, config: RewardConfig,
                   power_cap_w: float | None = None) -> tuple[float, dict[str, Any]]:
    """(reward, info) of one finished plan (module docstring: formula)."""
    ratios = normalised(metrics, base, objectives)
    improvement = float(np.dot(preference, 1.0 - ratios))
    memory = float(metrics.objective("memory"))
    penalty = 0.0
    memory_violation = memory_budget is not None and memory > memory_budget
    if memory_violation:
        penalty += config.memory_penalty * (1.0 + memory / memory_budget - 1.0)
    quality = metrics.quality_loss
    quality_violation = quality is not None and quality > config.quality_bound
    if quality_violation:
        penalty += config.quality_penalty * (1.0 + (quality - config.quality_bound) / max(config.quality_bound, 1e-9))
    info = {"improvement": improvement, "ratios": ratios.tolist(), "memory_bytes": memory,
            "memory_budget": memory_budget, "memory_violation": bool(memory_violation),
            "quality_loss": quality, "quality_violation": bool(quality_violation)}
    if power_cap_w is not None:

        watts = mean_power_w(metrics)
        power_violation = watts is not None and watts > power_cap_w
        if power_violation:
            penalty += config.power_penalty * (1.0 + (watts - power_cap_w) / power_cap_w)
        info.update(power_w=watts, power_cap_w=power_cap_w, power_violation=bool(power_violation))
    return improvement - penalty, info


__all__ = ["RewardConfig", "episode_reward", "normalised"]
