"""The analytic evaluator: roofline + transfers + overlap + launches on a HardwareProfile; all estimated."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from autosurgeon.analysis.model_analysis import analyze
from autosurgeon.cost.analytic import AnalyticCostModel, leaf_rows
from autosurgeon.cost.base import count_ops, energy_j
from autosurgeon.cost.gemv import gemv_table
from autosurgeon.cost.profiled import Profiler, TimingSettings, base_inputs
from autosurgeon.cost.profiled_trust import tables_as_is
from autosurgeon.cost.step_rest import rest_on_runtime
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.evaluate.base import Evaluator
from autosurgeon.metrics import Metrics
from autosurgeon.plan import Plan

if TYPE_CHECKING:  # annotations only
    from autosurgeon.hardware.profile import HardwareProfile
    from autosurgeon.zoo import LoadedModel


# The runtime probes' timing on a measured CPU (the step's rest, streaming): the process CPU clock, as the GEMV table.
STREAM_TIMING = TimingSettings(clock="cpu", step_warmup=2, step_repeats=10)
# On a measured GPU (the step's rest): the wall clock, synchronised, as the runtime's GPU steps are timed.
GPU_REST_TIMING = TimingSettings(clock="wall", step_warmup=3, step_repeats=20)


# ---------------------------------------------------------------------------------------------- analytic
class AnalyticEvaluator(Evaluator):
    """Roofline + transfers + overlap + launches on a HardwareProfile (``cost_analytic``); all "estimated".

    Extra args (see ``AnalyticCostModel``): ``launch_overhead_s``, ``fetch_overhead_s`` (None: documented
    defaults, or pass ``ProfiledTable`` figures to calibrate), ``lookahead``, ``disk_cache``.
    The model may live on the meta device (large architectures on paper).
    ``gpu_rest``: on a measured GPU profile with dispatch costs (``hardware.dispatch``) and real weights, measure the
    step's rest (linears nulled) on the runtime there, as on a measured CPU (False: the profile's per-op and per-step
    costs alone price it).
    ``gemv``: rates at the workload's real shapes (``cost.gemv``): "auto" measures (or loads, after a spot check)
    the table of this model's linear shapes at each phase's token rows (decode: batch x 1; prefill and encoders:
    batch x prompt) when the profile is a MEASURED CPU-only machine; a ``GemvTable`` (decode rows); or None
    (the roofline alone, as on paper profiles).
    """

    name = "analytic"

    def __init__(self, loaded: LoadedModel, profile: HardwareProfile, *, launch_overhead_s: float | None = None,
                 fetch_overhead_s: float | None = None, lookahead: int = 2, disk_cache: str = "auto",
                 gemv: Any = "auto", gpu_rest: bool = True, **kwargs: Any) -> None:
        super().__init__(loaded, profile, **kwargs)

        model = self.loaded.model
        w = self.workload
        phases = [(w.phase, lambda: base_inputs(self.loaded, w))]
        if w.task == "causal-lm":
            # One decode token against ``context`` cached positions (the zoo builds the cache; on meta too).
            phases = [(w.phase, lambda: self.loaded.example_inputs(w.batch, w.context, phase="decode", seed=w.seed)),
                      ("prefill", lambda: base_inputs(self.loaded, w))]
        if isinstance(gemv, str) and gemv != "auto":
            raise InvalidArgumentError(f"`gemv` must be 'auto', a GemvTable or None, got {gemv!r}.")
        self.gemv = None
        self.rest: dict[str, dict[str, Any]] = {}  # phase -> cost.step_rest.rest_on_runtime's record
        self.stream: dict[str, dict[str, Any]] = {}  # streamed placement -> measured exposed cost
        self._rest_record: dict[str, Any] = {}
        self._profiler: Profiler | None = None
        self.models: dict[str, AnalyticCostModel] = {}
        for phase, make in phases:
            inputs = make()
            n_ops = count_ops(model, inputs)
            analysis = analyze(model, make(), phase="decode" if phase == "decode" else "prefill")
            # Token rows each linear multiplies in this phase (batch x 1 at decode, batch x prompt or the patches
            # of an image otherwise), from the analysis: the GEMV table's rows for it.
            info = {u.name: u for u in analysis.leaves}
            rows = {leaf_rows(leaf, info[leaf.name], w.batch) for leaf in self.space.leaves.values()
                    if leaf.kind == "linear" and leaf.out_features and info[leaf.name].flops}
            table = gemv
            if gemv == "auto":
                table = self._gemv_table(rows) if rows and self._gemv_applies() else None
            elif gemv is not None and phase != "decode":
                table = None  # a table passed in is for decode rows
            if phase == w.phase:
                self.gemv = table
            rest = stream = None
            # The step's non-GEMV part measured on the runtime: on a measured CPU (the GEMV table prices the
            # linears), and on a measured GPU with dispatch costs and the real weights (HF's Python, norms,
            # attention, the per-step work and the closing synchronise; the linears then cost their format's
            # measured floor or roofline). Streamed placements: their exposed cost per fetch and per byte measured
            # there too (H200, session 8: the runtime paid 80-115 us per fetch beyond its work where the documented
            # default assumes 20 us; random plans, mostly streamed, were priced 49-54 % low with the fetch assumed).
            on_cpu = table is not None
            if gemv == "auto" and (on_cpu or (gpu_rest and self._gpu_rest_applies())):
                rest = self._rest(phase)
                self.rest[phase] = rest
                if phase == w.phase:
                    stream = self.stream = self._stream_costs()
            self.models[phase] = AnalyticCostModel(self.space, analysis, self.profile, n_ops=n_ops,
                                                   launch_overhead_s=launch_overhead_s,
                                                   fetch_overhead_s=fetch_overhead_s, lookahead=lookahead,
                                                   disk_cache=disk_cache, gemv=table,
                                                   batch=w.batch,
                                                   rest_s=None if rest is None else rest["median_s"],
                                                   stream=stream)
        self.lookahead = lookahead

    def _rest(self, phase: str) -> dict[str, Any]:
        """The phase's step with the linears nulled, on the runtime (``cost.step_rest``; measured once for both
        phases: the prefill is timed with the step). Measured now and kept with the streaming costs' table; inside
        ``cached_tables_as_is()`` (a sweep's Dask workers) the kept record is used, so every worker prices alike."""
        if not self._rest_record:
            profiler = self._probe_profiler()
            kept = profiler.table.settings.get("analytic_rest")
            if kept and tables_as_is():
                self._rest_record = dict(kept)
            else:
                linears = {leaf.name for leaf in self.space.leaves.values()
                           if leaf.kind == "linear" and leaf.out_features}
                self._rest_record = rest_on_runtime(self.loaded, self.space, self.profile, self.workload, linears,
                                                    timing=self._probe_timing())
                profiler.table.settings["analytic_rest"] = self._rest_record
                profiler.mark_changed()
                profiler.save()
        r = self._rest_record
        if phase == "prefill":
            return {**r, "median_s": r["prefill_s"]}
        return r

    def _probe_profiler(self) -> Profiler:
        """The Profiler whose table keeps this evaluator's runtime probes (the step's rest, streaming)."""
        if self._profiler is None:
            self._profiler = Profiler(self.loaded, self.space, self.profile, self.workload,
                                      timing=self._probe_timing())
        return self._profiler

    def _probe_timing(self) -> TimingSettings:
        return STREAM_TIMING if self.profile.default_unit().kind == "cpu" else GPU_REST_TIMING

    def _gpu_rest_applies(self) -> bool:
        """A measured GPU profile with the default unit's dispatch record, and real weights to run."""
        p = self.profile
        unit = p.default_unit()
        on_meta = any(t.is_meta for t in self.loaded.model.parameters())
        return bool(p.measured) and unit.kind == "gpu" and unit.name in p.dispatch and not on_meta

    def _stream_costs(self) -> dict[str, dict[str, Any]]:
        """Streamed placements' exposed cost per fetch and per byte, measured on the runtime at this model's
        block sizes (``Profiler.stream_costs``; CPU clock on a CPU, wall clock on a GPU; measured now and kept with the
        rest, see ``_rest``)."""
        if not any(v.knob == "placement" and any("<-" in c for c in v.choices) for v in self.space.variables):
            return {}
        profiler = self._probe_profiler()
        if not tables_as_is():  # measured now, as the rest (a kept figure is what Dask workers take)
            profiler.table.stream.clear()
        costs = profiler.stream_costs()
        profiler.save()
        return costs

    def _gemv_applies(self) -> bool:
        p = self.profile
        on_meta = any(t.is_meta for t in self.loaded.model.parameters())
        return bool(p.measured) and not p.gpus and p.default_unit().kind == "cpu" and not on_meta

    def _gemv_table(self, rows: set[int]) -> Any:

        leaves = [leaf for leaf in self.space.leaves.values() if leaf.kind == "linear" and leaf.out_features]
        shapes = {(leaf.weight_numel // leaf.out_features, leaf.out_features) for leaf in leaves}
        precisions = {c for v in self.space.variables if v.knob == "precision" for c in v.choices} | {"float32"}
        # Layers in a pass are read cold (the other layers between two calls of one evict them; on a shared machine
        # other tenants share the L3): entries rotate through copies totalling half this CPU's L3 (tiny-llama, 1
        # thread: its 29 linears cost 3.1-4.2 ms in a pass, 0.7-1.5 ms hot in L2, 1.3-1.7 ms rotating 1 MiB, 2.3-2.8
        # ms rotating 16 MiB; under load 3.3); 8 MiB where the profile lists no L3.
        cold = int(self.profile.cpu.caches.get("l3", 0) or 2**24) // 2
        table = None
        for r in sorted(rows):  # one table file; each call adds its rows' entries (merged on write)
            table = gemv_table(self.profile.fingerprint, sorted(shapes), sorted(precisions), batch=r, cold_bytes=cold)
        return table

    def settings(self) -> dict[str, Any]:
        main = self.models[self.workload.phase]
        return {**super().settings(), **main.settings()}

    def _model(self, phase: str, lookahead: int) -> AnalyticCostModel:
        """The phase's cost model at ``lookahead`` (a plan's prefetch_depth): a shallow copy sharing the
        per-leaf cache (leaf costs do not depend on the lookahead)."""
        import copy

        model = self.models[phase]
        if lookahead == model.lookahead:
            return model
        key = f"{phase}@{lookahead}"
        if key not in self.models:
            variant = copy.copy(model)
            variant.lookahead = lookahead
            self.models[key] = variant
        return self.models[key]

    def _evaluate(self, plan: Plan, x: np.ndarray) -> Metrics:
        depth = self._session(x).get("prefetch_depth")
        lookahead = self.lookahead if depth is None else int(depth)
        parts = self._model(self.workload.phase, lookahead).breakdown(x)
        session_note = self._session_latency(x, parts,
                                             launch_overhead_s=self.models[self.workload.phase].launch_overhead_s)
        latency = parts["latency_s"]
        joules, energy_how = energy_j(self.profile, latency, parts["busy_s"])
        prefill = (self._model("prefill", lookahead).breakdown(x)["latency_s"] if "prefill" in self.models
                   else None)
        peak, mem_extra = self._memory(x, lookahead)
        quality, qextra = self._proxy_quality(x)
        labels = {"latency_s": "estimated", "peak_bytes": "estimated", "energy_j": "estimated"}
        if prefill is not None:
            labels.update(prefill_s="estimated", tokens_per_s="estimated")
        if quality is not None:
            labels["quality_loss"] = "estimated"
        m = self.models[self.workload.phase]
        kind = "measured" if self.profile.measured else "paper"
        gemv_note = (f"; linears at decode priced by measured GEMV times ({len(self.gemv.entries)} entries, "
                     f"{self.gemv.noisy_share():.0%} noisy, load {self.gemv.load_average[:1]})"
                     if self.gemv is not None else "")
        rest = self.rest.get(self.workload.phase)
        if rest is not None:
            gemv_note += (f"; the rest of the step (linears nulled) measured {rest['median_s'] * 1e3:.3f} ms "
                          f"(IQR/median {rest['dispersion']:.0%}{', NOISY' if rest['noisy'] else ''}) replaces "
                          "the launch term")
        if m.dispatch:
            gemv_note += ("; on " + ", ".join(sorted(m.dispatch)) + ": measured eager dispatch (per-op launch, "
                          f"per-step {m.step_fixed_s * 1e6:.1f} us, each linear at least its format's measured "
                          "per-call floor)")
        elif self.profile.default_unit().kind != "cpu":
            gemv_note += "; GPU dispatch costs not in the profile: the documented launch default"
        method = (f"analytic: roofline per leaf on {self.profile.name} ({kind}"
                  f" profile) + {m.launched_ops} ops x {m.launch_overhead_s * 1e6:.1f} us launch + streaming pipeline "
                  f"(lookahead {lookahead}; {', '.join(parts['link_notes']) or 'no streaming'})"
                  + gemv_note + session_note + f"; memory: footprint.plan_memory; energy: {energy_how}"
                  + self._quality_note(quality, qextra))
        step = self._per_item(latency)
        return Metrics(
            latency_s=step, prefill_s=prefill,
            tokens_per_s=(self.workload.batch / latency) if self.workload.phase == "decode" else None,
            peak_bytes=peak,
            energy_j=self._per_item(joules), quality_loss=quality, labels=labels, method=method,
            device=self.profile.fingerprint, evaluator=self.name, phase=self.workload.phase,
            extra={**self._base_extra(), **{k: v for k, v in parts.items() if k != "blocks"}, **qextra, **mem_extra})
