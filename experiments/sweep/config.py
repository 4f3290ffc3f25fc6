"""SweepConfig: everything that decides a sweep's result, loaded from ``experiments/configs/*.json|toml``.

A config names the model, the device profile, the evaluator, the algorithm, the evaluation budget, the
seed, the objectives and how quality enters (a constraint ``quality - max_quality_loss <= 0``, a fourth
objective, or not at all), an optional power cap (``power_cap_w``: a paper profile is evaluated in the
fastest power mode within it; on a measured one ``mean power - power_cap_w <= 0`` is a constraint; see
``autosurgeon.hardware.power_cap``), and the hypervolume's normaliser and reference point. It is saved as
``runs/NAME/config.json``; ``--resume`` refuses a config that differs in anything but the budget, because
replaying a run (see ``runner``) reproduces its evaluations only under the same settings.

Normaliser: objective ``k`` is divided by ``scale[k]``. ``"reference"`` (the default) takes the unmodified
model's metrics on the same evaluator (so the unmodified model sits at 1.0 on latency, memory and energy);
quality, which is 0 for the unmodified model, is divided by ``quality_scale`` (default: the quality bound).
The reference point is given in that normalised space, one value per objective.
"""
from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autosurgeon.errors import InvalidArgumentError
from autosurgeon.metrics import hv_reference

from autosurgeon.evaluate.registry import names as _evaluator_names
from experiments.sweep.registry import names as _algorithm_names

QUALITY_MODES = ("constraint", "objective", "none")
INIT_POPULATIONS = ("random", "uniform")
BASE_OBJECTIVES = ("latency", "memory", "energy")
# Settings a resumed run may change without invalidating the replay of its finished evaluations.
RESUMABLE_CHANGES = ("budget_evals", "name")


@dataclass(frozen=True)
class SweepConfig:
    """One sweep (see the module docstring).

    Attributes:
        model: zoo name, HF directory or ``module:factory``.
        device: hardware profile (``local``, a preset such as ``h100-80gb``, or a profile JSON).
        evaluator: ``analytic`` | ``profiled`` | ``runtime``.
        algo: a registered search algorithm (``experiments.sweep.registry``: ``nsga2``, ``random``,
            ``optuna-nsga2``, ``optuna-tpe``).
        budget_evals: distinct plans evaluated, the baselines included (re-proposed plans are answered from the
            archive, uncounted); None: from the evaluator's speed (``runner.default_budget``), resolved when the
            sweep starts and saved in the run's config.json.
        seed: every random choice of the sweep derives from it.
        pop_size: NSGA-II population (pymoo and Optuna).
        objectives: minimised objectives (``Metrics.objective`` names) besides quality.
        quality: ``constraint`` (``quality - max_quality_loss <= 0``), ``objective`` (4th objective) or ``none``.
        max_quality_loss: the quality bound (relative; 0.01 = 1 %).
        quality_scale: quality's normaliser (None: ``max_quality_loss``).
        knobs: SearchSpace knob kinds that get variables.
        reference_point: HV reference point in normalised space, one per objective (quality last if it is one).
        normaliser: ``reference`` (unmodified model's metrics) — the only one so far, stated for the record.
        warm_start: a Markov placement model JSON whose plans (origin ``markov``) are evaluated first and
            seed the search (None: none).
        init_population: ``random`` or ``uniform`` (NSGA-II's first population starts with the uniform-precision
            plans — every unit at one precision, resident — then the warm start's or random plans).
        baselines: evaluate the unmodified model and the deterministic baselines (uniform, greedy fill,
            knapsack) first, in the search's archive and budget, and seed the search with them.
        knapsack_budgets: memory budgets for the knapsack baseline (shares of the unmodified weights).
        hv_at: evaluation counts at which the HV curve is reported.
        power_cap_w: a power cap in watts (None: none). Paper profiles are evaluated in the fastest power mode
            whose envelope fits it; on measured profiles plans whose mean power (energy / latency) exceeds it
            are infeasible (``autosurgeon.hardware.power_cap.resolve_power_cap``).
        name: a label (the config file's stem).
        quality_data / quality_samples / quality_method: how MEASURED quality is taken (``--data``,
            ``--quality-samples``, ``--quality-method``; ``autosurgeon.quality.settings.QualitySettings``, as
            every command takes them): the runtime evaluator's quality of each plan.
    """

    model: str
    device: str = "local"
    evaluator: str = "profiled"
    algo: str = "nsga2"
    budget_evals: int | None = None
    seed: int = 0
    pop_size: int = 20
    objectives: tuple[str, ...] = BASE_OBJECTIVES
    quality: str = "constraint"
    max_quality_loss: float = 0.01
    quality_scale: float | None = None
    knobs: tuple[str, ...] = ("precision", "group_size", "placement")
    reference_point: tuple[float, ...] = hv_reference(BASE_OBJECTIVES)  # the one default (autosurgeon.metrics)
    normaliser: str = "reference"
    warm_start: str | None = None
    init_population: str = "random"
    baselines: bool = True
    knapsack_budgets: tuple[str, ...] = ("25%", "40%", "60%")
    hv_at: tuple[int, ...] = (50, 100, 200)
    power_cap_w: float | None = None
    quality_data: str | None = None
    quality_samples: int | None = None
    quality_method: str = "auto"
    name: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for attr in ("objectives", "knobs", "reference_point", "knapsack_budgets", "hv_at"):
            value = getattr(self, attr)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise InvalidArgumentError(f"`{attr}` must be a list, got {value!r}.")
            object.__setattr__(self, attr, tuple(value))
        object.__setattr__(self, "reference_point", tuple(float(v) for v in self.reference_point))
        object.__setattr__(self, "extra", dict(self.extra))
        if not isinstance(self.model, str) or not self.model:
            raise InvalidArgumentError(f"`model` must be a zoo name, model directory or module:factory, "
                                       f"got {self.model!r}.")
        if self.evaluator not in _evaluator_names():
            raise InvalidArgumentError(f"`evaluator` must be one of {', '.join(_evaluator_names())}, got "
                                       f"{self.evaluator!r}.")
        if self.algo not in _algorithm_names():
            raise InvalidArgumentError(f"`algo` must be one of {', '.join(_algorithm_names())}, got {self.algo!r}.")
        if self.init_population not in INIT_POPULATIONS:
            raise InvalidArgumentError(f"`init_population` must be one of {', '.join(INIT_POPULATIONS)}, got "
                                       f"{self.init_population!r}.")
        if self.quality not in QUALITY_MODES:
            raise InvalidArgumentError(f"`quality` must be one of {', '.join(QUALITY_MODES)}, got {self.quality!r}.")
        if self.budget_evals is not None and not (isinstance(self.budget_evals, int) and self.budget_evals >= 1):
            raise InvalidArgumentError(f"`budget_evals` (--budget-evals) must be an integer >= 1, or None for a "
                                       f"budget from the evaluator's speed, got {self.budget_evals!r}.")
        if not (isinstance(self.pop_size, int) and self.pop_size >= 2):
            raise InvalidArgumentError(f"`pop_size` (--pop-size) must be an integer >= 2, got {self.pop_size!r}.")
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise InvalidArgumentError(f"`seed` (--seed) must be an integer >= 0, got {self.seed!r}.")
        if not (isinstance(self.max_quality_loss, (int, float)) and self.max_quality_loss >= 0
                and math.isfinite(self.max_quality_loss)):
            raise InvalidArgumentError(f"`max_quality_loss` (--max-quality-loss) must be a finite number >= 0 "
                                       f"(0.01 = 1 %), got {self.max_quality_loss!r}.")
        if self.power_cap_w is not None:
            if isinstance(self.power_cap_w, bool) or not isinstance(self.power_cap_w, (int, float)) \
                    or not (self.power_cap_w > 0 and math.isfinite(self.power_cap_w)):
                raise InvalidArgumentError(f"`power_cap_w` (--power-cap) must be a power in watts > 0, got "
                                           f"{self.power_cap_w!r}; e.g. 15 for a Jetson's 15 W mode.")
            object.__setattr__(self, "power_cap_w", float(self.power_cap_w))
        self.quality_settings()  # one-line errors naming --data / --quality-samples / --quality-method
        if self.quality_scale is not None and not self.quality_scale > 0:
            raise InvalidArgumentError(f"`quality_scale` must be > 0, got {self.quality_scale!r}.")
        if not self.objectives or len(set(self.objectives)) != len(self.objectives) or "quality" in self.objectives:
            raise InvalidArgumentError(f"`objectives` must be distinct metric names without 'quality' (set "
                                       f"`quality` = 'objective' for that), got {list(self.objectives)}.")
        if self.normaliser != "reference":
            raise InvalidArgumentError(f"`normaliser` must be 'reference', got {self.normaliser!r}.")
        n = len(self.objective_names)
        if len(self.reference_point) != n or not all(v > 0 and math.isfinite(v) for v in self.reference_point):
            raise InvalidArgumentError(f"`reference_point` must hold {n} positive numbers (one per objective "
                                       f"{list(self.objective_names)}), got {list(self.reference_point)}.")

    @property
    def objective_names(self) -> tuple[str, ...]:
        """The minimised objectives, quality last when it is one."""
        return self.objectives + (("quality",) if self.quality == "objective" else ())

    def quality_settings(self) -> Any:
        """The :class:`~autosurgeon.quality.settings.QualitySettings` of this sweep."""
        from autosurgeon.quality.settings import QualitySettings

        return QualitySettings(data=self.quality_data, samples=self.quality_samples, method=self.quality_method)

    @property
    def needs_quality(self) -> bool:
        return self.quality != "none"

    @property
    def quality_norm(self) -> float:
        return float(self.quality_scale if self.quality_scale is not None else (self.max_quality_loss or 0.01))

    def replace(self, **changes: Any) -> SweepConfig:
        """A copy with ``changes`` (None values are ignored, so CLI options left unset keep the config's)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise InvalidArgumentError(f"unknown sweep setting(s) {unknown}.")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for k, v in data.items():
            if isinstance(v, tuple):
                data[k] = list(v)
        return data

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> SweepConfig:
        if not isinstance(obj, Mapping):
            raise InvalidArgumentError(f"a sweep config must be a JSON/TOML table, got {type(obj).__name__}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(obj) - known - {"description"})
        if unknown:
            raise InvalidArgumentError(f"sweep config has unknown key(s) {unknown}; known: {sorted(known)}.")
        if "model" not in obj:
            raise InvalidArgumentError("sweep config needs `model` (a zoo name such as tiny-llama).")
        return cls(**{k: v for k, v in obj.items() if k in known})

    def differences(self, other: SweepConfig) -> list[str]:
        """Settings that differ from ``other``, besides those a resume may change."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if k not in RESUMABLE_CHANGES and a[k] != b[k]]


def load_config(path: str | Path) -> SweepConfig:
    """A :class:`SweepConfig` from a ``.json`` or ``.toml`` file (``name`` defaults to the file's stem)."""
    p = Path(path)
    if not p.is_file():
        raise InvalidArgumentError(f"`--config` {str(path)!r} is not a file; see experiments/configs/ for examples.")
    try:
        if p.suffix == ".toml":
            obj = tomllib.loads(p.read_text())
        elif p.suffix == ".json":
            obj = json.loads(p.read_text())
        else:
            raise InvalidArgumentError(f"`--config` must be a .json or .toml file, got {str(path)!r}.")
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise InvalidArgumentError(f"`--config` {str(path)!r} is not valid {p.suffix[1:].upper()}: {exc}") from None
    if isinstance(obj, dict) and "name" not in obj:
        obj = {**obj, "name": p.stem}
    return SweepConfig.from_dict(obj)


__all__ = ["QUALITY_MODES", "SweepConfig", "load_config"]
