"""The Evaluator protocol: ``evaluate(plan) -> Metrics`` with validation, counting and a result cache."""
from __future__ import annotations

import hashlib
import json
import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from autosurgeon.cost.profiled import (
    Workload,
)
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.evaluate.cache import EvaluationCache
from autosurgeon.evaluate.kv_proxy import KVQualityProxy
from autosurgeon.evaluate.session_terms import SessionTerms
from autosurgeon.hardware.resolve import resolve_profile
from autosurgeon.metrics import Metrics
from autosurgeon.plan import Plan, model_fingerprint
from autosurgeon.quality.flip_proxy import expected_flip_loss
from autosurgeon.space.search_space import SearchSpace

if TYPE_CHECKING:  # annotations only
    from autosurgeon.hardware.profile import HardwareProfile
    from autosurgeon.zoo import LoadedModel


# ---------------------------------------------------------------------------------------------- base
class Evaluator(SessionTerms, KVQualityProxy):
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

    def __init__(self, loaded: LoadedModel, profile: HardwareProfile | str, *, space: SearchSpace | None = None,
                 workload: Workload | None = None,
                 sensitivity: Any = None, cache: EvaluationCache | None = None, kv_sensitivity: Any = "auto") -> None:

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
    @classmethod
    def build(cls, loaded: LoadedModel, profile: HardwareProfile, *, space: SearchSpace | None = None,
              cache: EvaluationCache | None = None,
              sensitivity: Any = None, quality: Any = None, quality_samples: int | None = 4) -> Evaluator:
        """This evaluator from what every command has (``registry.build`` calls it, so a new evaluator needs
        no change where evaluators are made). ``sensitivity`` is the table the cheap evaluators' quality proxy
        reads; ``quality`` (``QualitySettings``, or None when quality is not asked for) and ``quality_samples``
        (samples when the settings name none; None: all) are for evaluators that measure it
        (``RuntimeEvaluator.build``)."""
        return cls(loaded, profile, space=space, sensitivity=sensitivity, cache=cache)

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

    def settings(self) -> dict[str, Any]:
        """Everything besides the plan that changes the result (part of the cache key)."""
        out = {"workload": [self.workload.task, self.workload.batch, self.workload.context, self.workload.seed],
               "space": self.space.digest(),
               "sensitivity": getattr(self.sensitivity, "key", None)}
        if self._kv_quality_applies():  # spaces without KV knobs keep their keys
            out["kv_sensitivity"] = self._kv_key()
        return out

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
        total, unscored, noise = 0.0, 0, 0.0
        # a classifier: expected top-1 flips (flip_proxy); a table without margins (not a classifier's, or a
        # stand-in with only divergences) is summed as KL
        flips = bool(getattr(table, "margin_mse", None)) and bool(getattr(table, "margins", None))
        for (name, knob), value in self.space.values(x).items():
            if knob != "precision" or value == "float32":
                continue
            if name in table.params and (name, value) in table.divergence:
                total += table.divergence[(name, value)]
                noise += table.margin_mse.get((name, value), 0.0) if flips else 0.0
            else:
                unscored += 1
        kv_nats, kv_extra = self._kv_quality(self._session(x)) if self.workload.task == "causal-lm" else (0.0, {})
        if self.workload.task == "causal-lm":
            loss = math.expm1(total + kv_nats)
        elif flips:
            loss = expected_flip_loss(table.margins, table.correct, noise)
            kv_extra = {**kv_extra, "quality_proxy_margin_var": noise, "quality_proxy_method": (
                f"expected top-1 flips: each unit's margin noise summed, against the reference's margins on "
                f"{len(table.margins)} calibration images (quality.flip_proxy)")}
        else:
            loss = total
        return loss, {"quality_proxy_kl": total, "quality_unscored": unscored, **kv_extra}

    def _per_item(self, step_s: float) -> float:
        """Step seconds -> seconds per token (decode: each of the batch's sequences gets one per step) or sample."""
        return step_s if self.workload.phase == "decode" else step_s / self.workload.batch

    def _base_extra(self) -> dict[str, Any]:
        return {"threads": torch.get_num_threads(), "profile": self.profile.name}
