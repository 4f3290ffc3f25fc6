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
the expected share of top-1 decisions lost (``quality.flip_proxy``: each unit's noise on the reference's top-1
margins, summed, against those margins on the calibration images), in accuracy points as measured; a table
without margins (measured before they were kept) gives the KL sum itself. Units absent from
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

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autosurgeon.evaluate.analytic import AnalyticEvaluator
    from autosurgeon.evaluate.base import Evaluator
    from autosurgeon.evaluate.cache import EvaluationCache, plan_hash
    from autosurgeon.evaluate.profiled import ProfiledEvaluator
    from autosurgeon.evaluate.runtime import RuntimeEvaluator

# Loaded on first use (PEP 562), so `autosurgeon.evaluate.registry` — what the CLI's `--evaluator` choices come
# from — can be imported by `--help` without importing torch.
_LAZY = {"AnalyticEvaluator": "analytic", "Evaluator": "base", "EvaluationCache": "cache", "plan_hash": "cache",
         "ProfiledEvaluator": "profiled", "RuntimeEvaluator": "runtime"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"autosurgeon.evaluate.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["AnalyticEvaluator", "EvaluationCache", "Evaluator", "ProfiledEvaluator", "RuntimeEvaluator", "plan_hash"]
