"""Evaluators: plan -> Metrics, behind one protocol, with a result cache the caller holds.

``Evaluator.evaluate(plan)`` validates the plan against the evaluator's SearchSpace (fingerprints, masks),
looks it up in the cache, and only on a miss calls the subclass's ``_evaluate``; it counts calls, hits and
seconds so sweeps can report evaluations per second. Three evaluators:

* :class:`AnalyticEvaluator` — ``cost_analytic.AnalyticCostModel`` on a ``HardwareProfile`` (presets on
  paper work: no hardware needed); every figure "estimated".
* :class:`ProfiledEvaluator` — ``cost_profiled.Profiler``: per-unit times measured once on this machine's
  runtime, cached on disk, composed per plan; latency "profiled", the rest "estimated".
* :class:`RuntimeEvaluator` — ``transforms.apply_plan`` -> ``runtime.Session``: the plan runs end to end;
  latency, prefill, peak bytes per tier (the TensorStore's accounting) and quality "measured"; energy
  "measured" where NVML/RAPL reads, else the runtime's estimate from the power model ("estimated").

Memory in the cheap evaluators is ``footprint.plan_memory`` (the runtime's byte formula); quality there is
the sensitivity proxy (``SensitivityTable.predict_loss``, sum of per-unit KL): for LMs ``exp(sum KL) - 1``
(KL in nats per token approximates the rise in mean NLL, and perplexity is ``exp(NLL)``); for classifiers
the KL sum itself (an uncalibrated proxy; it ranks plans, it is not accuracy points). Units absent from
the table (an embedding's float cast) and precisions it did not measure (fp8) add 0 and are counted in
``extra["quality_unscored"]``.

Session decisions (a space built with session knobs, see ``space_session.py``): memory counts the KV cache
at the workload's batch and context and streamed experts' homes and cache (``footprint.py``); the prefetch
depth sets the streaming lookahead of the footprint and of the analytic pipeline. The cheap evaluators add
the KV cache's effect on a decode step on paper (``cost_kv.kv_step_delta``: int8/fp8 storage is decoded
before attention on this runtime, so it costs time; a window or budget keeps fewer tokens to read) and the
misses of streamed experts (``cost_kv.expert_step_delta``, an ASSUMED uniform-routing LRU hit rate; the
profiled evaluator prices them with its measured streaming costs where it has that link, and the KV
cache's dispatches at a cost per dispatch it measures once, ``Profiler.kv_op_seconds``); the profiled
latency stays "profiled" with those terms estimated (the method says so). The prefetch depth does not
change the profiled latency (its streaming costs were measured at the runtime's default lookahead).
Quality of KV decisions: the runtime evaluator measures them: held-out windows decoded token by token
through the session's paged cache against Hugging Face's (``quality_kv.kv_quality_loss``), combined with
the weights' loss as ``(1 + weights) (1 + kv) - 1``. The cheap evaluators estimate them with the KV
sensitivity table (``sensitivity_kv``: ``kv_quality_loss`` of each kv_precision, kv_budget and kv_window
choice alone, measured once per model and workload context on this machine's CPU and cached on disk; a
plan's KV loss adds the precision's NLL rise to the larger of the budget's and the window's, an
approximation from single choices like the per-unit proxy) and combine it the same way:
``exp(sum KL + KV nats) - 1``. ``extra["quality_kv_proxy"]`` says how (the
table's key, context and decode length, each knob's nats, values the table does not hold). The table is
used when the evaluator has a weight sensitivity table (quality is asked for) and the plan decides the KV
cache; ``kv_sensitivity="auto"`` (default) measures or loads it on the first such plan, a
``KVSensitivityTable`` is used as given (it must be measured at the workload's context), None turns it
off. Where no table can exist (a model on the meta device) KV decisions still score as lossless, and
``extra["quality_ignores_kv"]`` marks such evaluations with the reason in ``quality_kv_proxy``. The
runtime evaluator
applies the plan's session (``apply_plan``: KV cache, experts, lookahead) and decodes against the session's
paged cache, which cannot be cropped: each repeat decodes one position further than the last. A Plan whose
session decides a knob the evaluator's space has no variable for is refused (its vector could not tell
it apart from a plan without it).

Cache key: ``(model fingerprint, plan, device fingerprint, evaluator name + settings)``; the plan enters
in its canonical form, its vector in the evaluator's space (whose digest is in the settings), so a Plan
and its vector, or two proposers' identical plans with other metadata, hit the same entry
(:func:`plan_hash` gives a space-free hash of a plan's decisions for other uses).
:class:`EvaluationCache` optionally appends every result to a JSON lines file and reloads it, so a sweep
resumes where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autosurgeon._logging import get_logger
from autosurgeon.cost import energy_j, mean_watts
from autosurgeon.cost_analytic import AnalyticCostModel
from autosurgeon.cost_profiled import (
    Profiler,
    TimingSettings,
    Workload,
    base_inputs,
    make_steps,
    timed,
)
from autosurgeon.errors import AutoSurgeonError, InvalidArgumentError
from autosurgeon.metrics import Metrics
from autosurgeon.plan import Plan

logger = get_logger(__name__)


# ---------------------------------------------------------------------------------------------- cache
def plan_hash(plan: Plan) -> str:
    """sha256 (16 hex) of a plan's decisions (rules, default and session; metadata and fingerprints left out).

    A plan without session decisions hashes as it did before session knobs existed."""
    data = plan.to_dict()["_data"]
    decisions = {"default": data["default"], "rules": data["rules"]}
    if plan.session:
        decisions["session"] = dict(plan.session)
    blob = json.dumps(decisions, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class EvaluationCache:
    """Metrics by key, in memory and optionally in a JSON lines file (one ``{"key", "metrics"}`` per line).

    Args:
        path: a ``.jsonl`` file to load on creation and append every new result to (None: memory only).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._data: dict[str, Metrics] = {}
        if self.path is not None and self.path.is_file():
            for n, line in enumerate(self.path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    self._data[row["key"]] = Metrics.from_dict(row["metrics"])
                except (ValueError, KeyError, TypeError) as exc:  # a torn last line after a crash
                    logger.warning("%s line %d unreadable (%s); skipped", self.path, n, exc)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def get(self, key: str) -> Metrics | None:
        return self._data.get(key)

    def put(self, key: str, metrics: Metrics) -> None:
        self._data[key] = metrics
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as fh:
                fh.write(json.dumps({"key": key, "metrics": metrics.to_dict()}, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


# ---------------------------------------------------------------------------------------------- base
class Evaluator:
    """The protocol: ``evaluate(plan) -> Metrics``; subclasses implement ``_evaluate`` and ``settings``.

    Args:
        loaded: a zoo ``LoadedModel`` (module, task, example inputs).
        profile: a HardwareProfile (or anything ``hardware.resolve_profile`` accepts).
        space: the model's SearchSpace on ``profile`` (built with precision and placement knobs if None).
        workload: what one step is (default: batch 1; LMs decode at 32 positions).
        sensitivity: a ``SensitivityTable`` for the quality proxy (cheap evaluators); None: no quality.
        cache: an :class:`EvaluationCache` (shared between evaluators is fine: keys include the evaluator).
        kv_sensitivity: the cheap evaluators' KV quality proxy (module docstring): "auto" (measure or load
            ``sensitivity_kv.measure_kv_sensitivity`` at the workload's context on the first plan that
            decides the KV cache), a ``KVSensitivitySettings`` (the same, measured with those settings: fewer
            held-out windows for a large model), a ``KVSensitivityTable``, or None (KV decisions score as
            lossless). Settings and tables must be at the workload's context.
    """

    name = "base"
    kv_proxy = True  # the cheap evaluators estimate KV decisions' quality from a table; the runtime measures

    def __init__(self, loaded: Any, profile: Any, *, space: Any = None, workload: Workload | None = None,
                 sensitivity: Any = None, cache: EvaluationCache | None = None, kv_sensitivity: Any = "auto") -> None:
        from autosurgeon.hardware import resolve_profile
        from autosurgeon.plan import model_fingerprint
        from autosurgeon.space import SearchSpace

        if not isinstance(getattr(loaded, "model", None), torch.nn.Module) or not hasattr(loaded, "example_inputs"):
            raise InvalidArgumentError(f"`loaded` must be a zoo LoadedModel (autosurgeon.zoo.load_model), got "
                                       f"{type(loaded).__name__}.")
        self.loaded = loaded
        self.profile = resolve_profile(profile)
        self.space = space if space is not None else SearchSpace.build(loaded, self.profile)
        if self.space.device_fingerprint not in (None, self.profile.fingerprint):
            raise InvalidArgumentError(f"`space` was built for device {self.space.device_fingerprint}, not "
                                       f"{self.profile.fingerprint} ({self.profile.name}); build it on this profile.")
        self.model_fingerprint = model_fingerprint(loaded.model)
        self.workload = workload or Workload(task=loaded.task)
        self.sensitivity = sensitivity
        self._kv_table: Any = None
        self._kv_unavailable: str | None = None  # why no KV table can be had (then KV scores as lossless)
        self.kv_sensitivity = self._check_kv_sensitivity(kv_sensitivity) if self.kv_proxy else None
        self.cache = cache if cache is not None else EvaluationCache()
        self.calls = self.hits = self.evaluated = 0
        self.seconds = 0.0  # wall time of cache-missing evaluate() calls
        self._settings_json: str | None = None

    # ---- the protocol
    def evaluate(self, plan: Plan | Any) -> Metrics:
        """Metrics of ``plan`` (a Plan or a vector of this evaluator's space); cached."""
        started = time.perf_counter()
        plan, x = self._validate(plan)
        self.calls += 1
        key = self.key(x)
        hit = self.cache.get(key)
        if hit is not None:
            self.hits += 1
            return hit
        metrics = self._evaluate(plan if plan is not None else self.space.decode(x), x)
        self.cache.put(key, metrics)
        self.evaluated += 1
        self.seconds += time.perf_counter() - started
        return metrics

    @property
    def evaluations_per_second(self) -> float:
        """Cache misses per second of their whole ``evaluate`` call (validation included); nan before any."""
        return self.evaluated / self.seconds if self.seconds > 0 else float("nan")

    def key(self, x: Plan | np.ndarray) -> str:
        """Cache key: model fingerprint, the plan's canonical form, device fingerprint, evaluator settings.

        The canonical form of a plan is its vector in this evaluator's space (``space.encode``; the space's
        digest is part of the settings): plans that decide the same thing — a Plan and its vector, two
        proposers' copies with other metadata — share a key.
        """
        if isinstance(x, Plan):
            x = self.space.encode(x)
        if self._settings_json is None:
            self._settings_json = json.dumps({"evaluator": self.name, **self.settings()}, sort_keys=True, default=str)
        vector = hashlib.sha256(np.asarray(x, dtype=np.int64).tobytes()).hexdigest()[:16]
        blob = f"{self.model_fingerprint}|{vector}|{self.profile.fingerprint}|{self._settings_json}"
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def _session(self, x: np.ndarray) -> dict[str, Any]:
        """The session decisions of vector ``x`` (its session variables' values; {} in spaces without them)."""
        from autosurgeon.footprint import session_values

        return session_values(self.space, x)

    def _memory(self, x: np.ndarray, lookahead: int) -> tuple[dict[str, int], dict[str, Any]]:
        """``(peak bytes per tier, extra)``: footprint at the workload's batch and context, with KV/experts detail."""
        from autosurgeon.footprint import memory_breakdown

        detail = memory_breakdown(self.space, x, lookahead=lookahead, batch=self.workload.batch,
                                  context=self.workload.context)
        extra: dict[str, Any] = {}
        if detail["kv"] is not None:
            extra["kv"] = {k: detail["kv"][k] for k in ("tier", "peak_bytes", "budget_bytes", "kept_tokens",
                                                          "evicted_tokens", "precision")}
        if detail["experts"] is not None:
            extra["experts"] = dict(detail["experts"])
        return detail["tiers"], extra

    def _kv_delta(self, x: np.ndarray, launch_overhead_s: float) -> dict[str, Any] | None:
        """The KV cache's estimated change to one decode step (``cost_kv``), None without a paged cache."""
        from autosurgeon.cost_kv import kv_step_delta
        from autosurgeon.footprint import kv_footprint

        if self.workload.phase != "decode":
            return None
        session = self._session(x)
        kv = kv_footprint(self.space, self.space.values(x), session, batch=self.workload.batch,
                          context=self.workload.context)
        if kv is None:
            return None
        kind = "gpu" if kv["tier"] == "gpu" else self.space.default_placement.partition("<-")[0]
        unit = next((u for u in self.profile.units if u.kind == kind), self.profile.default_unit())
        return kv_step_delta(kv, record=self.space.session, bandwidth=unit.memory_bandwidth,
                             launch_overhead_s=launch_overhead_s, context=self.workload.context)

    def _expert_delta(self, x: np.ndarray, stream: Mapping[str, Mapping[str, Any]] | None = None
                      ) -> dict[str, Any] | None:
        """Streamed experts' estimated cost per decode step (``cost_kv.expert_step_delta``), None if not streamed.

        ``stream``: measured streaming costs per placement (``ProfiledTable.stream``); where the experts' link
        ("cpu<-disk", "gpu<-cpu") was measured, its per-fetch and per-byte costs replace the paper link."""
        from autosurgeon.cost_kv import expert_step_delta
        from autosurgeon.footprint import expert_footprint

        if self.workload.phase != "decode":
            return None
        experts = expert_footprint(self.space, self.space.values(x), self._session(x))
        if experts is None:
            return None
        unit = next((u for u in self.profile.units if u.kind == experts["tier"]), self.profile.default_unit())
        out = expert_step_delta(experts, record=self.space.session, profile=self.profile, exec_unit=unit,
                                batch=self.workload.batch)
        measured = (stream or {}).get(f"{'gpu' if experts['tier'] == 'gpu' else 'cpu'}<-{experts['home']}")
        if out is not None and measured:
            out["delta_s"] = out["misses"] * measured["fetch_s"] + out["bytes"] * measured["s_per_byte"]
            out["link"] = "measured streaming costs of the profiled table"
        return out

    def _session_latency(self, x: np.ndarray, parts: dict[str, Any], *, launch_overhead_s: float,
                         stream: Mapping[str, Mapping[str, Any]] | None = None, kv_op: str = "") -> str:
        """Add the session's estimated KV and expert terms to ``parts`` (latency_s, busy_s); the method note."""
        notes = []
        kv = self._kv_delta(x, launch_overhead_s)
        if kv is not None:
            parts["kv_s"] = kv["delta_s"]
            notes.append(f"KV cache term {kv['delta_s'] * 1e6:+.1f} us{kv_op}")
        experts = self._expert_delta(x, stream)
        if experts is not None:
            parts["experts_s"] = experts["delta_s"]
            parts["expert_misses"] = experts["misses"]
            notes.append(f"expert misses {experts['misses']:.2f}/step at ASSUMED LRU hit rate "
                         f"{experts['hit_rate']:.2f} ({experts['link']}) {experts['delta_s'] * 1e6:+.1f} us")
        delta = parts.get("kv_s", 0.0) + parts.get("experts_s", 0.0)
        parts["latency_s"] = max(1e-9, parts["latency_s"] + delta)
        if "busy_s" in parts:
            parts["busy_s"] = max(0.0, parts["busy_s"] + parts.get("kv_s", 0.0))
        return (" + " + "; ".join(notes) + " (estimated, cost_kv)") if notes else ""

    def settings(self) -> dict[str, Any]:
        """Everything besides the plan that changes the result (part of the cache key)."""
        out = {"workload": [self.workload.task, self.workload.batch, self.workload.context, self.workload.seed],
               "space": self.space.digest(),
               "sensitivity": getattr(self.sensitivity, "key", None)}
        if self._kv_quality_applies():  # spaces without KV knobs keep their keys
            out["kv_sensitivity"] = self._kv_key()
        return out

    # ---- the KV quality proxy (sensitivity_kv)
    def _check_kv_sensitivity(self, value: Any) -> Any:
        from autosurgeon.sensitivity_kv import KVSensitivitySettings, KVSensitivityTable

        if value is None or (isinstance(value, str) and value == "auto"):
            return value
        if not isinstance(value, (KVSensitivitySettings, KVSensitivityTable)):
            raise InvalidArgumentError(f"`kv_sensitivity` must be 'auto', a KVSensitivitySettings, a "
                                       f"KVSensitivityTable or None, got {value!r}.")
        if value.context != self.workload.context:
            raise InvalidArgumentError(
                f"`kv_sensitivity` is at context {value.context}, but the workload's context is "
                f"{self.workload.context} (kv_budget shares are of the workload's context); measure it with "
                f"KVSensitivitySettings(context={self.workload.context}) or pass 'auto'.")
        if isinstance(value, KVSensitivityTable):
            self._kv_table = value
        return value

    def _kv_quality_applies(self) -> bool:
        """Quality is estimated here, the model is an LM, and the space can decide what its KV cache reads."""
        from autosurgeon.knobs import SESSION_UNIT
        from autosurgeon.sensitivity_kv import QUALITY_KNOBS

        return (self.kv_proxy and self.sensitivity is not None and self.workload.task == "causal-lm"
                and any(self.space.variable(SESSION_UNIT, k) is not None for k in QUALITY_KNOBS))

    def _kv_settings(self) -> Any:
        from autosurgeon.sensitivity_kv import KVSensitivitySettings

        if isinstance(self.kv_sensitivity, KVSensitivitySettings):
            return self.kv_sensitivity
        return KVSensitivitySettings(context=self.workload.context, batch=self.workload.batch)

    def _kv_key(self) -> str | None:
        """The KV table's key (part of the evaluator's settings), known before the table is measured."""
        from autosurgeon.sensitivity_kv import kv_table_key

        if self.kv_sensitivity is None:
            return None
        if self._kv_table is not None:
            return self._kv_table.key
        try:
            return kv_table_key(self.loaded, self._kv_settings())
        except InvalidArgumentError as exc:
            self._kv_unavailable = str(exc)
            return "unavailable"

    def kv_table(self) -> Any:
        """The KV sensitivity table this evaluator scores KV decisions with (measured or loaded on first use
        with ``kv_sensitivity="auto"``); None where there is none (the reason is logged once)."""
        if self._kv_table is not None or self.kv_sensitivity is None or self._kv_unavailable is not None:
            return self._kv_table
        from autosurgeon.sensitivity_kv import measure_kv_sensitivity

        try:
            self._kv_table = measure_kv_sensitivity(self.loaded, self._kv_settings())
        except InvalidArgumentError as exc:
            self._kv_unavailable = str(exc)
            logger.warning("no KV sensitivity table (%s); KV decisions score as lossless", exc)
        return self._kv_table

    def _kv_quality(self, session: Mapping[str, Any]) -> tuple[float, dict[str, Any]]:
        """``(nats the plan's KV decisions add to the mean NLL, extra)`` for the cheap evaluators' proxy."""
        from autosurgeon.cost_kv import has_kv_decisions

        if not has_kv_decisions(session):
            return 0.0, {}
        from autosurgeon.sensitivity_kv import QUALITY_KNOBS

        table = self.kv_table() if self._kv_quality_applies() else None
        if table is None:
            if all(session.get(k, ref) == ref for k, ref in QUALITY_KNOBS.items()):
                return 0.0, {}  # float pages, no budget, no window: the paged cache is lossless
            why = (self._kv_unavailable or ("kv_sensitivity=None" if self.kv_sensitivity is None else
                                            "the space has no kv_precision/kv_budget/kv_window variable"))
            return 0.0, {"quality_ignores_kv": True, "quality_kv_proxy": {"method": "none (scored as lossless)",
                                                                          "reason": why}}
        pred = table.predict(session)
        return pred["delta_nll"], {"quality_kv_proxy": {
            "method": "sensitivity_kv: per-choice kv_quality_loss measurements, precision + max(budget, window) nats",
            "table": table.key, "context": table.context, "seq_len": table.seq_len, "tokens": table.tokens,
            "kv_quality_loss": pred["kv_quality_loss"], "nats": pred["parts"], "unscored": pred["unscored"]}}

    def _quality_note(self, quality: float | None, qextra: Mapping[str, Any]) -> str:
        if quality is None:
            return ""
        proxy = qextra.get("quality_kv_proxy")
        if proxy is None:
            return "; quality: sensitivity proxy"
        if "table" not in proxy:
            return "; quality: sensitivity proxy (KV decisions scored as lossless: " + proxy["reason"] + ")"
        return (f"; quality: sensitivity proxy x KV sensitivity table (per-choice, combined; context "
                f"{proxy['context']}, decoded to {proxy['seq_len']} positions)")

    def _evaluate(self, plan: Plan, x: np.ndarray) -> Metrics:  # pragma: no cover - abstract
        raise NotImplementedError

    def _validate(self, plan: Plan | Any) -> tuple[Plan | None, np.ndarray]:
        space = self.space
        if isinstance(plan, Plan):
            for what, have, want in (("model", plan.model_fingerprint, self.model_fingerprint),
                                     ("device", plan.device_fingerprint, self.profile.fingerprint)):
                if have is not None and have != want:
                    raise InvalidArgumentError(
                        f"plan was made for {what} fingerprint {have}, this evaluator's {what} is {want}; "
                        f"re-plan for this {what} (or clear the plan's `{what}_fingerprint` to force it).")
            missing = sorted(k for k in plan.session if space.variable("<session>", k) is None)
            if missing:
                raise InvalidArgumentError(
                    f"plan session decides {', '.join(missing)}, which this evaluator's space has no variable for; "
                    f"build the space with knobs including {', '.join(missing)} (SearchSpace.build(knobs=...)), or "
                    "drop them from the plan's session.")
            x = space.encode(plan)
        else:
            x = space.check_vector(plan)
            plan = None  # decoded only if the evaluator needs a Plan (a miss)
        problems = space.problems(x)
        if problems:
            shown = "; ".join(f"{space.variables[i].name} {space.variables[i].knob}: {why}" for i, why in problems[:3])
            raise InvalidArgumentError(f"plan has {len(problems)} invalid decision(s): {shown}"
                                       f"{' ...' if len(problems) > 3 else ''}. Fix them (SearchSpace.repair).")
        return plan, x

    # ---- shared pieces
    def _proxy_quality(self, x: np.ndarray) -> tuple[float | None, dict[str, Any]]:
        table = self.sensitivity
        if table is None:
            return None, {}
        total, unscored = 0.0, 0
        for (name, knob), value in self.space.values(x).items():
            if knob != "precision" or value == "float32":
                continue
            if name in table.params and (name, value) in table.divergence:
                total += table.divergence[(name, value)]
            else:
                unscored += 1
        kv_nats, kv_extra = self._kv_quality(self._session(x)) if self.workload.task == "causal-lm" else (0.0, {})
        loss = math.expm1(total + kv_nats) if self.workload.task == "causal-lm" else total
        return loss, {"quality_proxy_kl": total, "quality_unscored": unscored, **kv_extra}

    def _per_item(self, step_s: float) -> float:
        """Step seconds -> seconds per token (decode: each of the batch's sequences gets one per step) or sample."""
        return step_s if self.workload.phase == "decode" else step_s / self.workload.batch

    def _base_extra(self) -> dict[str, Any]:
        return {"threads": torch.get_num_threads(), "profile": self.profile.name}


# ---------------------------------------------------------------------------------------------- analytic
class AnalyticEvaluator(Evaluator):
    """Roofline + transfers + overlap + launches on a HardwareProfile (``cost_analytic``); all "estimated".

    Extra args (see ``AnalyticCostModel``): ``launch_overhead_s``, ``fetch_overhead_s`` (None: documented
    defaults, or pass ``ProfiledTable`` figures to calibrate), ``lookahead``, ``disk_cache``.
    The model may live on the meta device (large architectures on paper).
    """

    name = "analytic"

    def __init__(self, loaded: Any, profile: Any, *, launch_overhead_s: float | None = None,
                 fetch_overhead_s: float | None = None, lookahead: int = 2, disk_cache: str = "auto",
                 **kwargs: Any) -> None:
        super().__init__(loaded, profile, **kwargs)
        from autosurgeon.analysis import analyze
        from autosurgeon.cost import count_ops

        model = self.loaded.model
        w = self.workload
        phases = [(w.phase, lambda: base_inputs(self.loaded, w))]
        if w.task == "causal-lm":
            # One decode token against ``context`` cached positions (the zoo builds the cache; on meta too).
            phases = [(w.phase, lambda: self.loaded.example_inputs(w.batch, w.context, phase="decode", seed=w.seed)),
                      ("prefill", lambda: base_inputs(self.loaded, w))]
        self.models: dict[str, AnalyticCostModel] = {}
        for phase, make in phases:
            n_ops = count_ops(model, make())
            analysis = analyze(model, make(), phase="decode" if phase == "decode" else "prefill")
            self.models[phase] = AnalyticCostModel(self.space, analysis, self.profile, n_ops=n_ops,
                                                   launch_overhead_s=launch_overhead_s,
                                                   fetch_overhead_s=fetch_overhead_s, lookahead=lookahead,
                                                   disk_cache=disk_cache)
        self.lookahead = lookahead

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
        method = (f"analytic: roofline per leaf on {self.profile.name} ({kind}"
                  f" profile) + {m.n_ops} ops x {m.launch_overhead_s * 1e6:.1f} us launch + streaming pipeline "
                  f"(lookahead {lookahead}; {', '.join(parts['link_notes']) or 'no streaming'})"
                  + session_note + f"; memory: footprint.plan_memory; energy: {energy_how}"
                  + self._quality_note(quality, qextra))
        step = self._per_item(latency)
        return Metrics(
            latency_s=step, prefill_s=prefill,
            tokens_per_s=(self.workload.batch / latency) if self.workload.phase == "decode" else None,
            peak_bytes=peak,
            energy_j=self._per_item(joules), quality_loss=quality, labels=labels, method=method,
            device=self.profile.fingerprint, evaluator=self.name, phase=self.workload.phase,
            extra={**self._base_extra(), **{k: v for k, v in parts.items() if k != "blocks"}, **qextra, **mem_extra})


# ---------------------------------------------------------------------------------------------- profiled
class ProfiledEvaluator(Evaluator):
    """Per-unit runtime measurements composed per plan (``cost_profiled``); latency "profiled".

    Extra args: ``timing`` (TimingSettings), ``cache_dir``/``use_disk_cache`` for the table, ``measure_all``
    (measure every valid unit choice up front, so evaluations only look up), ``lookahead`` (memory formula).
    ``profile`` must describe THIS machine (default "local"): the table is measured here.

    Calibration (optional): ``calibrate_with`` (a RuntimeEvaluator of the same model and space) and
    ``calibration_plans`` N run N random plans (drawn with ``calibration_seed``) end to end once at setup
    and fit ``step = a + b x composed`` by least squares (b > 0): composition misses what no single unit
    shows (mixed kernels inside one pass, the machine's load at measuring time), and a line fitted on
    plans of the same space corrects its systematic part. Evaluate plans drawn apart from those (another
    seed) to report honest errors; ``calibration`` holds a, b and the fit's points.
    """

    name = "profiled"

    def __init__(self, loaded: Any, profile: Any = "local", *, timing: TimingSettings | None = None,
                 cache_dir: str | os.PathLike[str] | None = None, use_disk_cache: bool = True,
                 measure_all: bool = True, lookahead: int = 2, calibrate_with: Any = None,
                 calibration_plans: int = 0, calibration_seed: int = 12345, **kwargs: Any) -> None:
        super().__init__(loaded, profile, **kwargs)
        self.lookahead = lookahead
        if calibration_plans < 0 or (calibration_plans and calibrate_with is None):
            raise InvalidArgumentError(f"`calibration_plans` ({calibration_plans}) must be >= 0, and > 0 needs "
                                       "`calibrate_with` (a RuntimeEvaluator of this model and space).")
        self.calibration: dict[str, Any] = {"a": 0.0, "b": 1.0, "points": [], "seed": None}
        self.profiler = Profiler(self.loaded, self.space, self.profile, self.workload, timing=timing,
                                 cache_dir=cache_dir, use_cache=use_disk_cache)
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
        from autosurgeon.cost_kv import has_kv_decisions

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
        method = (f"profiled: unit medians measured on this machine's runtime (table {self.profiler.table.key}, "
                  f"{len(self.profiler.table.unit_s)} entries) + measured fixed overhead + measured streaming "
                  f"costs" + (f", calibrated on {len(self.calibration['points'])} runtime plans (step = "
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
            extra={**self._base_extra(), **parts, **qextra, **mem_extra})


# ---------------------------------------------------------------------------------------------- runtime
class RuntimeEvaluator(Evaluator):
    """Apply the plan, run it on the runtime, measure (see the module docstring for labels).

    Extra args:
        timing: warm-up and repeats of the step and prefill (``TimingSettings.step_*``).
        quality: measure quality loss on a fixed held-out set (``autosurgeon.quality.QualityEvaluator``).
        quality_samples: held-out windows (LMs) or test images (classifiers; None: the whole split).
        budgets: tier budgets for ``apply_plan`` (None: unbounded).
        energy: measure energy (NVML/RAPL where readable, else the power-model estimate).
    """

    name = "runtime"
    kv_proxy = False  # measures KV decisions' quality (quality_kv.kv_quality_loss); no table

    def __init__(self, loaded: Any, profile: Any = "local", *, timing: TimingSettings | None = None,
                 quality: bool = True, quality_samples: int | None = 4, budgets: Mapping[str, Any] | None = None,
                 energy: bool = True, lookahead: int = 2, **kwargs: Any) -> None:
        super().__init__(loaded, profile, **kwargs)
        self.timing = timing or TimingSettings()
        self.lookahead = lookahead
        self._full_space: Any = None
        self.budgets = dict(budgets) if budgets else None
        self.energy = energy
        self.quality_samples = quality_samples
        self.quality_evaluator = None
        if quality:
            from autosurgeon.quality import QualityEvaluator

            samples = quality_samples if loaded.task == "causal-lm" else quality_samples
            self.quality_evaluator = QualityEvaluator(loaded, max_samples=samples)

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "timing": [self.timing.step_warmup, self.timing.step_repeats, self.timing.clock],
                "quality": self.quality_evaluator is not None, "quality_samples": self.quality_samples,
                "budgets": self.budgets, "energy": self.energy, "threads": torch.get_num_threads(),
                "lookahead": self.lookahead}

    def _evaluate(self, plan: Plan, x: np.ndarray) -> Metrics:
        try:
            from autosurgeon.transforms import apply_plan
        except ImportError as exc:
            raise AutoSurgeonError(f"RuntimeEvaluator needs autosurgeon.transforms.apply_plan ({exc}); use the "
                                   "profiled or analytic evaluator.") from exc
        from runtime.telemetry import EnergyMeter

        t = self.timing
        if self._full_space is None:  # apply_plan wants the space with every knob; build it once
            from autosurgeon.knobs import KNOBS
            from autosurgeon.space import SearchSpace

            self._full_space = (self.space if set(self.space.knobs) == set(KNOBS)
                                else SearchSpace.build(self.loaded, self.profile, knobs=KNOBS))
        if self._full_space is not self.space:
            # Knobs this evaluator's space leaves out take the full space's defaults, repaired where the
            # default is masked (int4 group 128 on a layer narrower than 128 -> 32), as the cost models assume.
            full = self._full_space
            session_decisions = plan.session  # the full (per-module) space has no session variables
            plan = replace(full.decode(full.repair(full.encode(plan)), metadata=plan.metadata),
                           session=session_decisions)
        session = apply_plan(self.loaded, plan, self.profile, inplace=False, budgets=self.budgets,
                             space=self._full_space, lookahead=self.lookahead,
                             energy_watts=mean_watts(self.profile, 1.0), kv_context=self.workload.context,
                             kv_batch=self.workload.batch)
        with session:
            step, prefill, _ = make_steps(session.forward, session.model, self.workload,
                                          base_inputs(self.loaded, self.workload),
                                          cache=session.open_kv_cache() if plan.session else None)
            device = next((d for d in getattr(session, "_devices", ["cpu"]) if str(d).startswith("cuda")), "cpu")
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
            else:
                stats = timed(step, warmup=0, repeats=t.step_repeats, device=device, clock=t.clock)
            pre = (timed(prefill, warmup=1, repeats=max(3, t.step_repeats // 3), device=device,
                         clock=t.clock).median_s if prefill is not None else None)
            final = session.stats()
            peak = final.peak_bytes
            kv_stats = final.extra.get("kv")
            experts = final.extra.get("experts")
            quality = self.quality_evaluator.loss(session.model) if self.quality_evaluator is not None else None
            kv_quality = None
            if quality is not None and kv_stats is not None and self.workload.task == "causal-lm":
                from autosurgeon.quality_kv import kv_quality_loss

                kv_quality = kv_quality_loss(session, samples=self.quality_samples or 4, kv_batch=self.workload.batch)
                quality = (1.0 + quality) * (1.0 + kv_quality["kv_quality_loss"]) - 1.0
        latency = stats.median_s
        labels = {"latency_s": "measured", "peak_bytes": "measured"}
        if pre is not None:
            labels.update(prefill_s="measured", tokens_per_s="measured")
        if joules is not None:
            labels["energy_j"] = "measured" if source in ("nvml", "rapl") else "estimated"
        if quality is not None:
            labels["quality_loss"] = "measured"
        ignores = quality is not None and kv_stats is not None and kv_quality is None
        method = (f"runtime: apply_plan -> Session on {self.profile.name}; median of {t.step_repeats} steps after "
                  f"{t.step_warmup} warm-up ({t.clock} clock); peak bytes from the TensorStore; energy source {source}"
                  + (f"; quality on {self.quality_evaluator.metric} held-out data" if quality is not None else "")
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
                   **({"kv": kv_stats} if kv_stats is not None else {}),
                   **({"quality_ignores_kv": True} if ignores else {}),
                   **({"kv_quality": kv_quality} if kv_quality is not None else {}),
                   **({"experts": experts} if experts is not None else {})})


__all__ = ["AnalyticEvaluator", "EvaluationCache", "Evaluator", "ProfiledEvaluator", "RuntimeEvaluator",
           "plan_hash"]
