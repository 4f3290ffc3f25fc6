"""What SurgeryEnv needs per model, built once per (model, device, evaluator) and shared by env copies.

A :class:`ModelContext` holds the loaded model, its SearchSpace (fixed knob set), the evaluator that
scores finished plans, the *estimator* that gives the running totals each step (the evaluator itself
when it is cheap — analytic, profiled — else an analytic one on the same space), the unmodified
model's metrics (the reward's normaliser), each objective's reachable gain (``envs.reward_scale``: the
reward's per-objective scale), the smallest memory a plan can reach (so sampled budgets are
feasible), and the per-unit features. Contexts are cached in-process: the vectorised envs of one training
run share them (and the evaluator's result cache).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autosurgeon._logging import get_logger
from autosurgeon.cost.footprint import plan_memory
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.evaluate import AnalyticEvaluator
from autosurgeon.evaluate.registry import get as evaluator_kind
from autosurgeon.evaluate.registry import names as evaluator_names
from autosurgeon.hardware.power_cap import mode_key
from autosurgeon.quality.sensitivity import measure_sensitivity
from autosurgeon.quality.settings import QualitySettings
from autosurgeon.space.search_space import SearchSpace
from autosurgeon.zoo import load_model
from envs.observation import (
    OBJECTIVES,
    DecisionUnit,
    ObservationLayout,
    decision_units,
    hardware_features,
    layout_for,
    unit_feature_table,
)
from envs.reward_scale import reachable_gains
from envs.smallest import smallest_budgeted

logger = get_logger(__name__)

EVALUATORS: tuple[str, ...] = evaluator_names()
_CACHE: dict[tuple[Any, ...], ModelContext] = {}


@dataclass
class ModelContext:
    """One model on one device with one evaluator (module docstring)."""

    spec: str
    loaded: Any
    profile: Any
    space: Any
    evaluator: Any
    estimator: Any
    units: list[DecisionUnit]
    unit_features: np.ndarray
    hardware: np.ndarray
    base: Any
    min_memory: float
    smallest: np.ndarray  # envs.smallest's vector (least GPU + CPU bytes): the shield's optimistic completion
    layout: ObservationLayout = ObservationLayout()  # of the knobs (envs.observation.layout_for)
    gains: np.ndarray | None = None  # reachable gain per OBJECTIVES entry (envs.reward_scale), the reward's scale
    estimate_base: Any = None  # the estimator's metrics of the unmodified model (the shaping potential's normaliser)


def build_context(spec: str, profile: Any, *, evaluator: str = "analytic", knobs: Sequence[str] = ("precision", "placement"),
                  sensitivity: bool = False, cache: bool = True, quality: Any = None) -> ModelContext:
    """Load ``spec`` and build (or fetch from the in-process cache) its context.

    Args:
        spec: zoo name, Hugging Face directory or ``package.module:factory``.
        profile: a HardwareProfile (resolved by the caller).
        evaluator: "analytic" (model on the meta device: nothing trained or downloaded), "profiled" or
            "runtime" (real weights; zoo models train on first use).
        knobs: the SearchSpace's knob kinds (session knobs too: ``envs.observation.layout_for``).
        sensitivity: measure a SensitivityTable (real weights) for the quality proxy and the unit feature.
        cache: reuse a context built earlier in this process.
        quality: a ``QualitySettings`` for the runtime evaluator's measured quality (None: the defaults).
    """

    if evaluator not in EVALUATORS:
        raise InvalidArgumentError(f"`evaluator` must be one of {', '.join(EVALUATORS)}, got {evaluator!r}.")

    # A profile moved to another power mode keeps its fingerprint, not its rates: the mode is in the key.
    quality_key = tuple(sorted(quality.to_dict().items())) if quality is not None else ()
    key = (spec, profile.fingerprint, mode_key(profile), evaluator, tuple(knobs), bool(sensitivity), quality_key)
    if cache and key in _CACHE:
        return _CACHE[key]
    real = evaluator != "analytic" or sensitivity
    loaded = load_model(spec, device="cpu" if real else "meta")
    space = SearchSpace.build(loaded, profile, knobs=knobs)
    table = None
    if sensitivity:

        table = measure_sensitivity(loaded)
    kind = evaluator_kind(evaluator)
    ev = kind.build(loaded, profile, space=space, sensitivity=table, quality=quality or QualitySettings())
    # A measuring evaluator is too slow to price every step's masks and hints: the analytic one does that.
    estimator = ev if kind.cheap else AnalyticEvaluator(loaded, profile, space=space, sensitivity=table)
    layout = layout_for(knobs)
    units = decision_units(space, layout)
    base = ev.evaluate(space.default_vector())
    tier_by_kind = {"gpu": "gpu", "cpu": "cpu"}
    tier = tier_by_kind.get(profile.default_unit().kind, "cpu")
    # The floor in the measure the budget counts (GPU + CPU), not the execution tier's alone (envs.smallest).
    _, small = smallest_budgeted(space, execution_tier=tier)
    mem = plan_memory(space, small)
    min_memory = float(mem.get("gpu", 0) + mem.get("cpu", 0))
    estimate_base = estimator.evaluate(space.default_vector())
    gains = reachable_gains(estimator, space, estimate_base, small, OBJECTIVES)
    ctx = ModelContext(spec=spec, loaded=loaded, profile=profile, space=space, evaluator=ev, estimator=estimator,
                       units=units, unit_features=unit_feature_table(space, units, table, layout=layout),
                       hardware=hardware_features(profile), base=base, min_memory=min_memory, smallest=small,
                       layout=layout, gains=gains, estimate_base=estimate_base)
    logger.info("surgery context %s on %s (%s): %d units, %d variables, base memory %d B, smallest %d B, "
                "reachable gains %s", spec, profile.name, evaluator, len(units), len(space), base.objective("memory"),
                min_memory, dict(zip(OBJECTIVES, gains.round(3).tolist())))
    if cache:
        _CACHE[key] = ctx
    return ctx


__all__ = ["EVALUATORS", "ModelContext", "build_context"]
