"""Metrics: what every evaluator returns for a plan, each figure labelled with how it was obtained.

One record for all evaluators (analytic, profiled, runtime), so proposers compare plans evaluation for
evaluation whatever produced the numbers. Each field carries a label in ``labels``:

* ``"measured"`` — timed or counted end to end on the runtime for this plan (RuntimeEvaluator);
* ``"profiled"`` — composed from per-unit measurements taken once on this device (ProfiledEvaluator);
* ``"estimated"`` — from a model on paper: roofline, power envelope, sensitivity proxy.

Units: ``latency_s`` is seconds per decode token (causal LMs, batch 1 by default) or per sample
(classifiers: one forward of the batch, divided by the batch); ``energy_j`` is joules per the same unit.
``peak_bytes`` is per memory tier (``"gpu"``, ``"cpu"``, ``"disk"``): the weights, their streaming staging
slots and the kernels' packed copies, as the runtime's TensorStore charges them, plus the paged KV cache
and the expert cache whenever the plan decides a session knob (activations are not in it). ``quality_loss`` is relative to the unmodified model (0.01 = 1 %): perplexity ratio - 1
for LMs, accuracy drop in points / 100 for classifiers.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from autosurgeon.errors import InvalidArgumentError
from autosurgeon.files.envelope import unwrap, wrap

LABELS = ("measured", "profiled", "estimated")
TIERS = ("gpu", "cpu", "disk")
METRIC_FIELDS = ("latency_s", "prefill_s", "tokens_per_s", "peak_bytes", "energy_j", "quality_loss")
METRICS_TYPE = "autosurgeon.Metrics"
METRICS_VERSION = 1
# Tiers summed by the plain "memory" objective: the memory a deployment must hold (disk is not scarce).
MEMORY_TIERS = ("gpu", "cpu")
OBJECTIVES = ("latency", "prefill", "throughput", "memory", "memory:gpu", "memory:cpu", "memory:disk",
              "memory:total", "memory:device", "energy", "quality")
# The hypervolume's reference point per objective, in the space where each objective is divided by the
# unmodified model's value: ONE for every front the project reports (`sweep`, `apply`, benchmarks), so their
# hypervolumes compare. Latency and energy count up to 3x / 3.5x the unmodified model (streamed and low-bit plans
# trade them for memory); memory up to 1.1x (a plan holding more than the model itself buys nothing).
HV_REFERENCE: Mapping[str, float] = {"latency": 3.0, "memory": 1.1, "energy": 3.5}


def hv_reference(objectives: Sequence[str]) -> tuple[float, ...]:
    """The reference point of ``HV_REFERENCE`` for ``objectives``, in their order."""
    missing = [k for k in objectives if k not in HV_REFERENCE]
    if missing:
        raise InvalidArgumentError(f"no default hypervolume reference for objective(s) {missing}; give "
                                   f"`reference_point` explicitly (one value per objective, normalised space).")
    return tuple(HV_REFERENCE[k] for k in objectives)


@dataclass(frozen=True)
class Metrics:
    """One evaluation of one plan (see the module docstring for units and labels).

    Attributes:
        latency_s: seconds per decode token (LMs) or per sample (classifiers).
        peak_bytes: tier -> bytes (weights + staging + packed copies, as TensorStore charges them).
        labels: field -> "measured" | "profiled" | "estimated" for every field that has a value.
        method: how the figures were obtained, in words (evaluator, settings, models, assumptions).
        device: fingerprint of the hardware profile evaluated on.
        evaluator: name of the evaluator ("analytic", "profiled", "runtime").
        phase: "decode" (per token) or "sample" (per sample).
        prefill_s: seconds of one prefill of the evaluator's context (LMs), else None.
        tokens_per_s: decode tokens per second (1 / latency_s for batch 1), else None.
        energy_j: joules per token or sample; None if not evaluated.
        quality_loss: relative quality loss; None if not evaluated.
        extra: breakdowns and diagnostics (compute/transfer/overhead seconds, energy source, ...).
    """

    latency_s: float
    peak_bytes: Mapping[str, int]
    labels: Mapping[str, str]
    method: str = ""
    device: str | None = None
    evaluator: str = ""
    phase: str = "decode"
    prefill_s: float | None = None
    tokens_per_s: float | None = None
    energy_j: float | None = None
    quality_loss: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (isinstance(self.latency_s, (int, float)) and self.latency_s > 0 and math.isfinite(self.latency_s)):
            raise InvalidArgumentError(f"`latency_s` must be a finite positive number, got {self.latency_s!r}.")
        peak = {str(k): int(v) for k, v in dict(self.peak_bytes).items()}
        unknown = sorted(set(peak) - set(TIERS))
        if unknown:
            raise InvalidArgumentError(f"`peak_bytes` tiers must be among {TIERS}, got {unknown}.")
        object.__setattr__(self, "peak_bytes", {t: peak.get(t, 0) for t in TIERS})
        labels = dict(self.labels)
        for name, label in labels.items():
            if name not in METRIC_FIELDS:
                raise InvalidArgumentError(f"`labels` key {name!r} is not a metric field; use one of {METRIC_FIELDS}.")
            if label not in LABELS:
                raise InvalidArgumentError(f"`labels[{name!r}]` must be one of {LABELS}, got {label!r}.")
        for name in METRIC_FIELDS:
            if getattr(self, name) is not None and name not in labels:
                raise InvalidArgumentError(f"metric {name!r} has a value but no label; add labels[{name!r}].")
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "extra", dict(self.extra))

    # ------------------------------------------------------------------------------------------ views
    @property
    def memory_bytes(self) -> int:
        """Bytes on the tiers a deployment must hold (``MEMORY_TIERS``: GPU + CPU, not disk)."""
        return sum(self.peak_bytes.get(t, 0) for t in MEMORY_TIERS)

    def objective(self, name: str) -> float:
        """One objective for minimisation (see :meth:`objectives`)."""
        if name == "latency":
            return float(self.latency_s)
        if name == "prefill":
            return _required(self.prefill_s, name, "prefill_s")
        if name == "throughput":
            return -_required(self.tokens_per_s, name, "tokens_per_s")
        if name == "memory":
            return float(self.memory_bytes)
        if name == "memory:total":
            return float(sum(self.peak_bytes.values()))
        if name == "memory:device":  # the fullest execution device (several GPUs: extra["device_bytes"])
            devices = self.extra.get("device_bytes") or {"gpu": self.peak_bytes.get("gpu", 0)}
            return float(max(devices.values()))
        if name.startswith("memory:") and name[7:] in TIERS:
            return float(self.peak_bytes.get(name[7:], 0))
        if name == "energy":
            return _required(self.energy_j, name, "energy_j")
        if name == "quality":
            return _required(self.quality_loss, name, "quality_loss")
        raise InvalidArgumentError(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVES)}.")

    def objectives(self, names: Sequence[str] = ("latency", "memory", "energy", "quality")) -> tuple[float, ...]:
        """The objective vector for minimisation, in the order of ``names``.

        ``"latency"`` s/token or s/sample; ``"prefill"`` s; ``"throughput"`` -tokens/s; ``"memory"`` bytes
        on GPU + CPU (disk excluded: a plan that streams from disk is *meant* to use it), or one tier
        (``"memory:gpu"``, ``"memory:cpu"``, ``"memory:disk"``) or all of them (``"memory:total"``);
        ``"memory:device"`` the bytes of the fullest execution device (on several GPUs, from ``extra["device_bytes"]``;
        else the gpu tier's);
        ``"energy"`` J/token or J/sample; ``"quality"`` relative loss. A name whose metric was not
        evaluated raises InvalidArgumentError (never a silent NaN in a Pareto sort).
        """
        if isinstance(names, str):
            names = (names,)
        return tuple(self.objective(n) for n in names)

    to_objectives = objectives  # the name surgery.md's contract uses

    # ------------------------------------------------------------------------------------------ io
    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["peak_bytes"] = dict(self.peak_bytes)
        data["labels"] = dict(self.labels)
        data["extra"] = dict(self.extra)
        return wrap(METRICS_TYPE, METRICS_VERSION, data)

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Metrics:
        data = unwrap(obj, type_name=METRICS_TYPE, version=METRICS_VERSION, what="Metrics record",
                      fix="evaluate the plan again")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidArgumentError(f"Metrics record has unknown field(s) {unknown}; known: {sorted(known)}.")
        return cls(**data)

    def summary(self) -> str:
        """One line for people."""
        parts = [f"{self.latency_s * 1e3:.3f} ms/{'token' if self.phase == 'decode' else 'sample'} "
                 f"[{self.labels.get('latency_s')}]"]
        mem = ", ".join(f"{t} {b / 2**20:.2f} MiB" for t, b in self.peak_bytes.items() if b)
        parts.append(f"memory {mem or '0'} [{self.labels.get('peak_bytes')}]")
        if self.energy_j is not None:
            parts.append(f"energy {self.energy_j * 1e3:.3f} mJ [{self.labels.get('energy_j')}]")
        if self.quality_loss is not None:
            parts.append(f"quality loss {self.quality_loss * 100:.2f}% [{self.labels.get('quality_loss')}]")
        return "; ".join(parts)


def _required(value: float | None, name: str, fieldname: str) -> float:
    if value is None:
        raise InvalidArgumentError(f"objective {name!r} needs `{fieldname}`, which this evaluation did not produce; "
                                   "configure the evaluator to compute it (e.g. give it a sensitivity table or a "
                                   "quality evaluator) or drop the objective.")
    return float(value)


__all__ = ["HV_REFERENCE", "LABELS", "MEMORY_TIERS", "METRIC_FIELDS", "OBJECTIVES", "TIERS", "Metrics", "hv_reference"]
