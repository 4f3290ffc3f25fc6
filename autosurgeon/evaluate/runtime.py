"""The runtime evaluator: the plan applied and run end to end on the Jalapeño runtime; measured."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from autosurgeon.cost.base import mean_watts
from autosurgeon.cost.profiled import (
    TimingSettings,
    base_inputs,
    make_steps,
    timed,
)
from autosurgeon.evaluate.base import Evaluator
from autosurgeon.evaluate.cache import EvaluationCache
from autosurgeon.evaluate.energy_window import counter_energy_per_step
from autosurgeon.knobs import KNOBS
from autosurgeon.metrics import Metrics
from autosurgeon.plan import Plan
from autosurgeon.quality.kv import kv_quality_loss
from autosurgeon.quality.settings import QualitySettings
from autosurgeon.space.search_space import SearchSpace
from autosurgeon.transforms import apply_plan
from runtime.telemetry import COUNTER_WINDOW_S, EnergyMeter

if TYPE_CHECKING:  # annotations only
    from autosurgeon.hardware.profile import HardwareProfile
    from autosurgeon.zoo import LoadedModel

Step = Callable[[], Any]
NOISY = 0.15  # (p90 - p10) / median above which a step time is re-measured, then labelled noisy


def _dispersion(stats: Any) -> float:
    return (stats.p90_s - stats.p10_s) / stats.median_s if stats.median_s > 0 else 0.0


# ---------------------------------------------------------------------------------------------- runtime
class RuntimeEvaluator(Evaluator):
    """Apply the plan, run it on the runtime, measure (see the module docstring for labels).

    Extra args:
        timing: warm-up and repeats of the step and prefill (``TimingSettings.step_*``).
        quality: measure quality loss on a fixed held-out set (``autosurgeon.quality.measure.QualityEvaluator``).
        quality_samples: held-out windows (LMs) or test images (classifiers; None: the whole split).
        quality_settings: a ``quality.settings.QualitySettings`` (``--data``, ``--quality-method``; its
            ``samples`` replace ``quality_samples`` when set). The Metrics' ``extra["quality"]`` then holds the
            method, sample count, reference and candidate values and the loss's 95 % interval.
        budgets: tier budgets for ``apply_plan`` (None: unbounded).
        energy: measure energy (NVML/RAPL where readable, else the power-model estimate).
    """

    name = "runtime"
    kv_proxy = False  # measures KV decisions' quality (quality_kv.kv_quality_loss); no table

    @classmethod
    def build(cls, loaded: LoadedModel, profile: HardwareProfile, *, space: SearchSpace | None = None,
              cache: EvaluationCache | None = None,
              sensitivity: Any = None, quality: Any = None, quality_samples: int | None = 4) -> RuntimeEvaluator:
        """As ``Evaluator.build``; quality is measured (``quality`` settings) rather than read from ``sensitivity``."""
        return cls(loaded, profile, space=space, cache=cache, quality=quality is not None, quality_settings=quality,
                   quality_samples=quality_samples)

    def __init__(self, loaded: LoadedModel, profile: Any = "local", *, timing: TimingSettings | None = None,
                 quality: bool = True, quality_samples: int | None = 4, budgets: Mapping[str, Any] | None = None,
                 energy: bool = True, lookahead: int = 2, quality_settings: Any = None, **kwargs: Any) -> None:
        super().__init__(loaded, profile, **kwargs)
        self.timing = timing or TimingSettings()
        self.lookahead = lookahead
        self._full_space: Any = None
        self.budgets = dict(budgets) if budgets else None
        self.energy = energy

        self.quality_settings = quality_settings or QualitySettings()
        if self.quality_settings.samples is not None:
            quality_samples = self.quality_settings.samples
        self.quality_samples = quality_samples
        self.quality_evaluator = None
        if quality:
            self.quality_evaluator = self.quality_settings.evaluator(loaded, default_samples=quality_samples)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "timing": [self.timing.step_warmup, self.timing.step_repeats, self.timing.clock],
                "quality": self.quality_evaluator is not None, "quality_samples": self.quality_samples,
                **({"quality_settings": self.quality_settings.to_dict()}
                   if self.quality_settings.to_dict() != {"data": None, "samples": None, "method": "auto"} else {}),
                "budgets": self.budgets, "energy": self.energy, "threads": torch.get_num_threads(),
                "lookahead": self.lookahead}

    def _full_plan(self, plan: Plan) -> Plan:
        """``plan`` in the space with every knob (apply_plan wants it); knobs this evaluator's space leaves out take
        the full space's defaults, repaired where the default is masked (int4 group 128 on a layer narrower than
        128 -> 32), as the cost models assume."""
        if self._full_space is None:  # built once
            self._full_space = (self.space if set(self.space.knobs) == set(KNOBS)
                                else SearchSpace.build(self.loaded, self.profile, knobs=KNOBS))
        if self._full_space is self.space:
            return plan
        full = self._full_space
        session_decisions = plan.session  # the full (per-module) space has no session variables
        return replace(full.decode(full.repair(full.encode(plan)), metadata=plan.metadata), session=session_decisions)

    @contextmanager
    def open_step(self, plan: Plan | np.ndarray) -> Iterator[tuple[Any, Step, Step | None, str]]:
        """``(session, step, prefill, device)`` of ``plan`` (a Plan or a vector of this space) applied on the
        runtime, open until the block ends: what ``evaluate`` times. A harness that times several plans in
        interleaved rounds keeps them open (``experiments/benchmarks/runtime_reference.py``)."""
        if not isinstance(plan, Plan):
            plan = self.space.decode(self.space.check_vector(plan))
        plan = self._full_plan(plan)
        session = apply_plan(self.loaded, plan, self.profile, inplace=False, budgets=self.budgets,
                             space=self._full_space, lookahead=self.lookahead,
                             energy_watts=mean_watts(self.profile, 1.0), kv_context=self.workload.context,
                             kv_batch=self.workload.batch)
        with session:
            step, prefill, _ = make_steps(session.forward, session.model, self.workload,
                                          base_inputs(self.loaded, self.workload),
                                          cache=session.open_kv_cache() if plan.session else None)
            device = next((d for d in getattr(session, "_devices", ["cpu"]) if str(d).startswith("cuda")), "cpu")
            yield session, step, prefill, device

    # long: time, measure memory/energy/quality, combine with the KV term and label each figure, in order
    def _evaluate(self, plan: Plan, x: np.ndarray) -> Metrics:

        t = self.timing
        with self.open_step(plan) as (session, step, prefill, device):
            for _ in range(t.step_warmup):
                step()
            joules = source = None
            if self.energy:
                # The estimate's power: the profile's envelope at full utilisation (the process is busy
                # stepping); NVML/RAPL, where readable, replace it with a counter.
                meter = EnergyMeter(device=device, watts=mean_watts(self.profile, 1.0), min_window_s=0.0)
                with meter:
                    stats = timed(step, warmup=0, repeats=t.step_repeats, device=device, clock=t.clock)
                joules, source = meter.joules / t.step_repeats, meter.source
                if source in ("nvml", "rapl") and (meter.seconds < COUNTER_WINDOW_S or not meter.joules > 0):
                    # A window of a few steps is shorter than the counter's tick: measure again over >= 1 s; a
                    # counter that still did not move leaves the estimate, labelled so, never 0 J "measured".
                    joules = counter_energy_per_step(step, device, watts=mean_watts(self.profile, 1.0))
                    if joules is None:
                        joules = mean_watts(self.profile, 1.0) * stats.median_s
                        source = (f"estimate ({source} did not tick in a >= {COUNTER_WINDOW_S:g} s window; "
                                  f"profile watts x step time)")
            else:
                stats = timed(step, warmup=0, repeats=t.step_repeats, device=device, clock=t.clock)
            remeasured = False
            if _dispersion(stats) > NOISY and t.step_repeats >= 3:
                # MEASURING.md: a spread above the threshold is measured again; the steadier run is kept, and a
                # spread that stays is labelled noisy (extra["latency_noisy"], and in the method) rather than hidden.
                again = timed(step, warmup=0, repeats=t.step_repeats, device=device, clock=t.clock)
                stats, remeasured = min((stats, again), key=_dispersion), True
            pre = (timed(prefill, warmup=1, repeats=max(3, t.step_repeats // 3), device=device,
                         clock=t.clock).median_s if prefill is not None else None)
            final = session.stats()
            peak = final.peak_bytes
            kv_stats = final.extra.get("kv")
            experts = final.extra.get("experts")
            quality = self.quality_evaluator.loss(session.model) if self.quality_evaluator is not None else None
            quality_report = self.quality_evaluator.report() if self.quality_evaluator is not None else None
            kv_quality = None
            if quality is not None and kv_stats is not None and self.workload.task == "causal-lm":

                kv_quality = kv_quality_loss(session, samples=self.quality_samples or 4, kv_batch=self.workload.batch)
                quality = (1.0 + quality) * (1.0 + kv_quality["kv_quality_loss"]) - 1.0
        latency = stats.median_s
        dispersion = _dispersion(stats)
        labels = {"latency_s": "measured", "peak_bytes": "measured"}
        if pre is not None:
            labels.update(prefill_s="measured", tokens_per_s="measured")
        if joules is not None:
            labels["energy_j"] = "measured" if source in ("nvml", "rapl") else "estimated"
        if quality is not None:
            labels["quality_loss"] = "measured"
        ignores = quality is not None and kv_stats is not None and kv_quality is None
        method = (f"runtime: apply_plan -> Session on {self.profile.name}; median of {t.step_repeats} steps after "
                  f"{t.step_warmup} warm-up ({t.clock} clock; p10-p90 spread {dispersion:.0%}"
                  f"{', re-measured' if remeasured else ''}{', NOISY' if dispersion > NOISY else ''}); peak bytes from the TensorStore; energy source {source}"
                  + (f"; quality: {self.quality_evaluator.reference.method}" if quality is not None else "")
                  + (f" x KV cache's decode loss ({kv_quality['tokens']} tokens teacher-forced through the paged "
                     "cache vs HF's)" if kv_quality is not None else ""))
        return Metrics(
            latency_s=self._per_item(latency), prefill_s=pre,
            tokens_per_s=(self.workload.batch / latency) if self.workload.phase == "decode" else None,
            peak_bytes={k: int(v) for k, v in peak.items()},
            energy_j=self._per_item(joules) if joules is not None else None, quality_loss=quality,
            labels=labels, method=method, device=self.profile.fingerprint, evaluator=self.name,
            phase=self.workload.phase,
            extra={**self._base_extra(), "p10_s": stats.p10_s, "p90_s": stats.p90_s, "energy_source": source,
                   "latency_dispersion": dispersion, "latency_noisy": dispersion > NOISY,
                   "latency_remeasured": remeasured,
                   **({"kv": kv_stats} if kv_stats is not None else {}),
                   **({"quality": quality_report} if quality_report is not None else {}),
                   **({"quality_ignores_kv": True} if ignores else {}),
                   **({"kv_quality": kv_quality} if kv_quality is not None else {}),
                   **({"experts": experts} if experts is not None else {})})
