"""The profiled evaluator: per-unit times measured once on this machine's runtime, composed per plan."""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from autosurgeon._logging import get_logger
from autosurgeon.cost.base import energy_j
from autosurgeon.cost.kv import has_kv_decisions
from autosurgeon.cost.profiled import (
    Profiler,
    TimingSettings,
)
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.evaluate.base import Evaluator
from autosurgeon.metrics import Metrics
from autosurgeon.plan import Plan

if TYPE_CHECKING:  # annotations only
    from autosurgeon.zoo import LoadedModel

logger = get_logger(__name__)


# ---------------------------------------------------------------------------------------------- profiled
class ProfiledEvaluator(Evaluator):
    """Per-unit runtime measurements composed per plan (``cost_profiled``); latency "profiled".

    Extra args: ``timing`` (TimingSettings), ``cache_dir``/``use_disk_cache`` for the table, ``measure_all``
    (measure every valid unit choice up front, so evaluations only look up), ``lookahead`` (memory formula),
    ``revalidate`` (default True: on first use the table is checked against the machine now and, outside a band,
    its time terms scaled, said in the method: ``cost/profiled_drift.py``).
    ``profile`` must describe THIS machine (default "local"): the table is measured here.

    Calibration (optional): ``calibrate_with`` (a RuntimeEvaluator of the same model and space) and
    ``calibration_plans`` N run N random plans (drawn with ``calibration_seed``) end to end once at setup
    and fit ``step = a + b x composed`` by least squares (b > 0): composition misses what no single unit
    shows (mixed kernels inside one pass, the machine's load at measuring time), and a line fitted on
    plans of the same space corrects its systematic part. Evaluate plans drawn apart from those (another
    seed) to report honest errors; ``calibration`` holds a, b and the fit's points.
    """

    name = "profiled"

    def __init__(self, loaded: LoadedModel, profile: Any = "local", *, timing: TimingSettings | None = None,
                 cache_dir: str | os.PathLike[str] | None = None, use_disk_cache: bool = True,
                 measure_all: bool = True, lookahead: int = 2, calibrate_with: Any = None,
                 calibration_plans: int = 0, calibration_seed: int = 12345, revalidate: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(loaded, profile, **kwargs)
        self.lookahead = lookahead
        if calibration_plans < 0 or (calibration_plans and calibrate_with is None):
            raise InvalidArgumentError(f"`calibration_plans` ({calibration_plans}) must be >= 0, and > 0 needs "
                                       "`calibrate_with` (a RuntimeEvaluator of this model and space).")
        self.calibration: dict[str, Any] = {"a": 0.0, "b": 1.0, "points": [], "seed": None}
        self.profiler = Profiler(self.loaded, self.space, self.profile, self.workload, timing=timing,
                                 cache_dir=cache_dir, use_cache=use_disk_cache, revalidate=revalidate)
        started = time.perf_counter()
        if measure_all:
            self.profiler.measure_all()
        else:
            self.profiler.ensure_base()
            self.profiler.save()
        if calibration_plans:
            self._calibrate(calibrate_with, calibration_plans, calibration_seed)
        self.setup_seconds = time.perf_counter() - started

    def _calibrate(self, runtime: Any, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        points = []
        for _ in range(n):
            x = self.space.random_vector(rng)
            composed = self.profiler.compose(x, self.workload.phase)["latency_s"]
            per_step = self.workload.batch if self.workload.phase == "sample" else 1
            measured = runtime.evaluate(x).latency_s * per_step
            points.append((composed, measured))
        c = np.array([p[0] for p in points])
        y = np.array([p[1] for p in points])
        a, b = 0.0, float(y.sum() / c.sum())  # ratio fallback (one point, or a degenerate fit)
        if n >= 2 and np.ptp(c) > 0:
            slope, intercept = np.polyfit(c, y, 1)
            if slope > 0:
                a, b = float(intercept), float(slope)
        self.calibration = {"a": a, "b": b, "points": points, "seed": seed}
        logger.info("profiled composition calibrated on %d plans: step = %.3g + %.3f x composed", n, a, b)
    @property
    def table(self) -> Any:
        return self.profiler.table

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "table": self.profiler.table.key, "lookahead": self.lookahead,
                "calibration": [self.calibration["a"], self.calibration["b"], self.calibration["seed"]]}

    def _evaluate(self, plan: Plan, x: np.ndarray) -> Metrics:
        parts = self.profiler.compose(x, self.workload.phase)
        if self.calibration["points"]:
            parts["composed_s"] = parts["latency_s"]
            parts["latency_s"] = max(1e-9, self.calibration["a"] + self.calibration["b"] * parts["latency_s"])

        # The KV term's dispatch cost is measured (Profiler.kv_op_seconds), its byte traffic estimated.
        launch = (self.profiler.kv_op_seconds() if has_kv_decisions(self._session(x))
                  else self.profiler.table.launch_overhead_s.get(self.workload.phase, 0.0))
        session_note = self._session_latency(x, parts, launch_overhead_s=launch, stream=self.profiler.table.stream,
                                             kv_op=f" ({launch * 1e6:.2f} us per gather dispatch, measured)")
        depth = self._session(x).get("prefetch_depth")
        peak, mem_extra = self._memory(x, self.lookahead if depth is None else int(depth))
        prefill = (self.profiler.compose(x, "prefill")["latency_s"] if self.workload.task == "causal-lm" else None)
        self.profiler.save()
        latency = parts["latency_s"]
        joules, energy_how = energy_j(self.profile, latency, parts["units_s"])
        quality, qextra = self._proxy_quality(x)
        labels = {"latency_s": "profiled", "peak_bytes": "estimated", "energy_j": "estimated"}
        if prefill is not None:
            labels.update(prefill_s="profiled", tokens_per_s="profiled")
        if quality is not None:
            labels["quality_loss"] = "estimated"
        table = self.profiler.table
        method = (f"profiled: unit medians measured on this machine's runtime (table {table.key}, "
                  f"{len(table.unit_s)} entries, {len(table.noisy)} of {len(table.spread)} labelled noisy "
                  f"(IQR/median > 0.15 after a re-measure), measured at load {table.settings.get('load_1m')}"
                  + (f", spot check on load {self.profiler.load_check['verdict']}" if self.profiler.load_check else "")
                  + self.profiler.drift_note()
                  + ") + measured fixed overhead + measured streaming "
                  "costs" + (f", calibrated on {len(self.calibration['points'])} runtime plans (step = "
                              f"{self.calibration['a'] * 1e3:.3f} ms + {self.calibration['b']:.3f} x composed)"
                              if self.calibration["points"] else "")
                  + session_note + f"; memory: footprint.plan_memory; energy: {energy_how}"
                  + self._quality_note(quality, qextra))
        return Metrics(
            latency_s=self._per_item(latency), prefill_s=prefill,
            tokens_per_s=(self.workload.batch / latency) if self.workload.phase == "decode" else None,
            peak_bytes=peak,
            energy_j=self._per_item(joules), quality_loss=quality, labels=labels, method=method,
            device=self.profile.fingerprint, evaluator=self.name, phase=self.workload.phase,
            extra={**self._base_extra(), **parts, **qextra, **mem_extra,
                   **({"table_check": dict(self.profiler.drift)} if self.profiler.drift else {})})
