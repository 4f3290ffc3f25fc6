"""Decision units and the fixed-size observation of SurgeryEnv: model-agnostic by construction.

A *decision unit* is one module (block, leaf or fusible group) and every knob the SearchSpace gives it;
the environment takes one step per unit, in SearchSpace variable order (placements of blocks first, then
leaves in model order, then fusion groups), so every conditional rule of the space (which always looks
backwards in variable order) only depends on units already decided — as HAQ walks layers.

The action is one entry per knob of ``ACTION_KNOBS`` with a fixed number of choices (``MAX_CHOICES``):
the same ``MultiDiscrete`` for every model and device, so one policy applies to models it never saw.
A knob the unit lacks is masked to index 0.

Session knobs (opt-in, ``autosurgeon.knobs.SESSION_KNOBS``: KV precision, budget, tier, window, prefetch,
prefetch depth) are model-level: the SearchSpace gives them variables of one ``"<session>"`` unit after
every module variable, so the session unit is the episode's last step. Only when the env's knobs name
some (:func:`layout_for`) does the layout grow: their action entries follow ``ACTION_KNOBS`` (in
``SESSION_KNOBS`` order, only those named), with the space's fixed choice counts
(``SESSION_MAX_CHOICES``), the unit features gain ``kind_session`` and a ``has_*`` flag per session
knob. Without session knobs the layout is :class:`ObservationLayout`'s default, exactly as before, so
policies trained before keep loading and acting identically.

Observation (``ObservationLayout``, every entry roughly in [0, 1], clipped to ``[-OBS_CLIP, OBS_CLIP]``):

* unit features (from ``SearchSpace.features()`` / ``unit_summary``): log FLOPs, log weight bytes, log
  intensity (each divided by the largest module's in the model), parallelism, relative position, unit kind
  one-hot, which knobs it has (the session unit: the whole model's FLOPs and bytes, so at or a little
  above 1, position 1, ``kind_session``),
  sensitivity (``log10(1 + 1e4 * KL at int4)/4`` from a SensitivityTable, 0 without one) and a flag saying
  whether sensitivity is known;
* hardware features of the profile's default unit: log10 of float32 peak FLOP/s / 15, log10 of memory
  bandwidth / 13, GPU present, log10 of memory bytes / 12 (fixed scales, so presets and measured profiles
  land in the same range);
* running totals of the plan so far (undecided units at their unmodified choice): memory / budget,
  memory / baseline, latency / baseline, energy / baseline, budget / baseline, progress (steps done / units);
* the previous step's action, one-hot per knob;
* the preference vector over ``OBJECTIVES``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autosurgeon.errors import InvalidArgumentError
from autosurgeon.knobs import (
    FUSIONS,
    GROUP_SIZES,
    KV_PRECISIONS,
    KV_TIERS,
    LAYOUTS,
    PLACEMENTS,
    PRECISIONS,
    PREFETCHES,
    SESSION_KNOBS,
)
from autosurgeon.space.session import KV_BUDGET_CHOICES, KV_WINDOW_CHOICES, PREFETCH_DEPTH_CHOICES, SESSION_KIND
from autosurgeon.space.variables import FEATURE_KINDS, KNOB_ORDER

ACTION_KNOBS: tuple[str, ...] = KNOB_ORDER
# Kernel names come from the runtime's registry ("auto" first): 14 on a CPU-only machine today; 16 leaves
# a little room (a space with more raises in decision_units, naming this constant).
MAX_CHOICES: dict[str, int] = {"placement": len(PLACEMENTS), "precision": len(PRECISIONS),
                               "group_size": len(GROUP_SIZES), "kernel": 16, "layout": len(LAYOUTS),
                               "fusion": len(FUSIONS)}
# Session knobs have fixed, discretised choices in every space (autosurgeon.space.session): the counts are
# exact, not headroom.
SESSION_MAX_CHOICES: dict[str, int] = {"kv_precision": len(KV_PRECISIONS), "kv_budget": len(KV_BUDGET_CHOICES),
                                       "kv_tier": len(KV_TIERS), "kv_window": len(KV_WINDOW_CHOICES),
                                       "prefetch": len(PREFETCHES), "prefetch_depth": len(PREFETCH_DEPTH_CHOICES)}
OBJECTIVES: tuple[str, ...] = ("latency", "memory", "energy")
OBS_CLIP = 5.0
UNIT_FEATURES: tuple[str, ...] = ("log_flops", "log_bytes", "log_intensity", "parallelism", "position",
                                  *[f"kind_{k}" for k in FEATURE_KINDS], *[f"has_{k}" for k in ACTION_KNOBS],
                                  "sensitivity", "sensitivity_known")
HW_FEATURES: tuple[str, ...] = ("log_peak_flops", "log_bandwidth", "has_gpu", "log_memory")
TOTAL_FEATURES: tuple[str, ...] = ("memory_vs_budget", "memory_vs_base", "latency_vs_base", "energy_vs_base",
                                   "budget_vs_base", "progress")


@dataclass(frozen=True)
class DecisionUnit:
    """One step of an episode: a module and the space variables (indices, ascending) it decides."""

    name: str
    variables: tuple[int, ...]
    knobs: tuple[str, ...]


def decision_units(space: Any, layout: ObservationLayout | None = None) -> list[DecisionUnit]:
    """The space's variables grouped into steps (module docstring: order and why).

    Fusion variables form units of their own (key ``(name, "fusion")``): a fusion's group is named after
    its first member, but it depends on every member, which later leaf units decide. Session variables
    share one name (``"<session>"``) and come after every module variable: one unit, the last.

    ``layout`` (default: :func:`layout_for` the space's knobs) must have an action entry for every knob of
    the space with room for its choices; InvalidArgumentError naming the knob otherwise.
    """
    layout = layout if layout is not None else layout_for(getattr(space, "knobs", ()))
    limits = dict(zip(layout.action_knobs, layout.max_choices))
    groups: dict[tuple[str, bool], list[int]] = {}
    for i, v in enumerate(space.variables):
        if v.knob not in limits:
            raise InvalidArgumentError(
                f"{v.name}: the space has knob `{v.knob}` but the policy layout's actions are "
                f"{', '.join(layout.action_knobs)}; build the env with knobs naming {v.knob!r} "
                "(envs.observation.layout_for) so the layout includes it.")
        if v.n > limits[v.knob]:
            table = "MAX_CHOICES" if v.knob in MAX_CHOICES else "SESSION_MAX_CHOICES"
            raise InvalidArgumentError(
                f"{v.name}: `{v.knob}` has {v.n} choices, more than the policy's fixed {limits[v.knob]}; "
                f"raise envs.observation.{table}[{v.knob!r}] (the action space changes: retrain).")
        groups.setdefault((v.name, v.knob == "fusion"), []).append(i)
    units = [DecisionUnit(name=name, variables=tuple(idx), knobs=tuple(space.variables[i].knob for i in idx))
             for (name, _), idx in groups.items()]
    return sorted(units, key=lambda u: u.variables[0])


@dataclass(frozen=True)
class ObservationLayout:
    """Names and sizes of the observation's parts; saved with a policy and checked on load."""

    unit: tuple[str, ...] = UNIT_FEATURES
    hardware: tuple[str, ...] = HW_FEATURES
    totals: tuple[str, ...] = TOTAL_FEATURES
    action_knobs: tuple[str, ...] = ACTION_KNOBS
    max_choices: tuple[int, ...] = tuple(MAX_CHOICES[k] for k in ACTION_KNOBS)
    objectives: tuple[str, ...] = OBJECTIVES

    @property
    def size(self) -> int:
        return (len(self.unit) + len(self.hardware) + len(self.totals) + sum(self.max_choices)
                + len(self.objectives))

    def names(self) -> list[str]:
        prev = [f"prev_{k}_{j}" for k, n in zip(self.action_knobs, self.max_choices) for j in range(n)]
        return [*self.unit, *self.hardware, *self.totals, *prev, *[f"pref_{o}" for o in self.objectives]]

    @property
    def session_knobs(self) -> tuple[str, ...]:
        """The session knobs among the actions (empty for the default layout)."""
        return tuple(k for k in self.action_knobs if k in SESSION_MAX_CHOICES)

    def to_dict(self) -> dict[str, Any]:
        return {"unit": list(self.unit), "hardware": list(self.hardware), "totals": list(self.totals),
                "action_knobs": list(self.action_knobs), "max_choices": list(self.max_choices),
                "objectives": list(self.objectives), "size": self.size}


def layout_for(knobs: Iterable[str]) -> ObservationLayout:
    """The layout of an env deciding ``knobs``: the default one unless they name session knobs.

    With session knobs (module docstring) their actions follow ``ACTION_KNOBS`` in ``SESSION_KNOBS`` order
    (only those named: a policy decides exactly the knobs it trained on), and the unit features gain
    ``kind_session`` and their ``has_*`` flags. Unknown knob names are the SearchSpace's to refuse.
    """
    wanted = set(knobs)
    session = tuple(k for k in SESSION_KNOBS if k in wanted)
    if not session:
        return ObservationLayout()
    action = (*ACTION_KNOBS, *session)
    unit = ("log_flops", "log_bytes", "log_intensity", "parallelism", "position",
            *[f"kind_{k}" for k in (*FEATURE_KINDS, SESSION_KIND)], *[f"has_{k}" for k in action],
            "sensitivity", "sensitivity_known")
    return ObservationLayout(unit=unit, action_knobs=action,
                             max_choices=tuple(MAX_CHOICES.get(k) or SESSION_MAX_CHOICES[k] for k in action))


def unit_feature_table(space: Any, units: Sequence[DecisionUnit], sensitivity: Any = None, *,
                       layout: ObservationLayout | None = None) -> np.ndarray:
    """``(len(units), len(layout.unit))`` float32: per-unit features (module docstring), in ``layout.unit``
    order (default: the default layout's ``UNIT_FEATURES``)."""
    layout = layout if layout is not None else ObservationLayout()
    feats, names = space.features()
    col = {n: j for j, n in enumerate(names)}
    logs = _module_scaled_logs(space)
    rows = []
    for u in units:
        f = feats[u.variables[0]]
        values = {n: float(f[col[n]]) for n in ("parallelism", "position")}
        values.update(zip(("log_flops", "log_bytes", "log_intensity"), map(float, logs[u.variables[0]])))
        values.update({f"kind_{k}": float(f[col[f"kind_{k}"]]) for k in FEATURE_KINDS})
        values[f"kind_{SESSION_KIND}"] = float(space.variables[u.variables[0]].kind == SESSION_KIND)
        values.update({f"has_{k}": float(k in u.knobs) for k in layout.action_knobs})
        sens, known = 0.0, 0.0
        if sensitivity is not None and "precision" in u.knobs:
            div = sensitivity.divergence.get((u.name, "int4"))
            if div is not None:
                sens, known = min(1.0, math.log10(1.0 + 1e4 * max(float(div), 0.0)) / 4.0), 1.0
        values.update(sensitivity=sens, sensitivity_known=known)
        rows.append([values[n] for n in layout.unit])
    return np.asarray(rows, dtype=np.float32).reshape(len(units), len(layout.unit))


def _module_scaled_logs(space: Any) -> np.ndarray:
    """``(n_vars, 3)`` float32: log1p of each variable's unit FLOPs, weight bytes and intensity, divided by the
    largest over the *module* variables.

    ``SearchSpace.features()`` scales by the largest over every variable, and a session variable's unit is the
    whole model: it would shrink every module's value whenever session knobs are present. Scaling by the
    modules keeps their features what they are without session knobs (bit for bit: the same float64
    arithmetic as ``features()``), and puts the session unit at or a little above 1.
    """
    arr = np.array([[math.log1p(a) for a in space.unit_summary(v)[:3]] for v in space.variables],
                   dtype=np.float64).reshape(len(space.variables), 3)
    modules = np.array([v.kind != SESSION_KIND for v in space.variables], dtype=bool)
    for c in range(3):
        top = arr[modules, c].max() if modules.any() else 0.0
        if top > 0:
            arr[:, c] /= top
    return arr.astype(np.float32)


def hardware_features(profile: Any) -> np.ndarray:
    """Fixed-scale features of the profile's default unit (module docstring)."""
    unit = profile.default_unit()
    flops = max(float(unit.peak_flops("float32")), 1.0)
    return np.array([math.log10(flops) / 15.0, math.log10(max(float(unit.memory_bandwidth), 1.0)) / 13.0,
                     float(any(u.kind == "gpu" for u in profile.units)),
                     math.log10(max(float(unit.memory_bytes), 1.0)) / 12.0], dtype=np.float32)


def one_hot_action(action: np.ndarray | None, layout: ObservationLayout) -> np.ndarray:
    out = np.zeros(sum(layout.max_choices), dtype=np.float32)
    if action is None:
        return out
    offset = 0
    for a, n in zip(np.asarray(action, dtype=np.int64), layout.max_choices):
        out[offset + int(a)] = 1.0
        offset += n
    return out


def assemble(layout: ObservationLayout, *, unit: np.ndarray, hardware: np.ndarray, totals: Mapping[str, float],
             previous: np.ndarray | None, preference: np.ndarray) -> np.ndarray:
    """The observation vector, float32, clipped to ``[-OBS_CLIP, OBS_CLIP]``."""
    parts = [np.asarray(unit, np.float32), np.asarray(hardware, np.float32),
             np.array([totals[k] for k in layout.totals], np.float32), one_hot_action(previous, layout),
             np.asarray(preference, np.float32)]
    obs = np.concatenate(parts)
    return np.clip(np.nan_to_num(obs, nan=0.0, posinf=OBS_CLIP, neginf=-OBS_CLIP), -OBS_CLIP, OBS_CLIP)


__all__ = ["ACTION_KNOBS", "MAX_CHOICES", "OBJECTIVES", "OBS_CLIP", "SESSION_MAX_CHOICES", "DecisionUnit",
           "ObservationLayout", "assemble", "decision_units", "hardware_features", "layout_for", "one_hot_action",
           "unit_feature_table"]
