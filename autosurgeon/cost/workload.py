"""The workload a cost is priced at, and how one step of it is built and timed.

A :class:`Workload` is what one step is: a decode token at ``context`` cached positions for causal LMs (batch x
1 token; plus one prefill of ``context`` tokens), or one forward of ``batch`` samples. ``make_steps`` builds the
callables the profiled table and the runtime evaluator time; ``timed`` times them on the wall or process CPU clock.
Split out of ``cost/profiled.py`` (one idea per file); ``cost.profiled`` re-exports every name.
"""
from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from autosurgeon.errors import InvalidArgumentError
from runtime.telemetry import LatencyStats, measure_latency

if TYPE_CHECKING:  # annotations only
    from autosurgeon.zoo import LoadedModel


# ---------------------------------------------------------------------------------------------- workload
@dataclass(frozen=True)
class Workload:
    """What one evaluation step is.

    Attributes:
        task: "causal-lm" (decode tokens) or "image-classification" (samples).
        batch: sequences or samples per step.
        context: causal LMs: positions in the KV cache for a decode step, and the prompt length of prefill.
        seed: seeds the example inputs.
    """

    task: str
    batch: int = 1
    context: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise InvalidArgumentError(f"`batch` must be >= 1, got {self.batch}.")
        if self.context < 1:
            raise InvalidArgumentError(f"`context` must be >= 1, got {self.context}.")

    @property
    def phase(self) -> str:
        return "decode" if self.task == "causal-lm" else "sample"


def base_inputs(loaded: LoadedModel, workload: Workload) -> dict[str, Any]:
    """Prompt (LMs, ``(batch, context)`` ids) or sample inputs from a zoo ``LoadedModel``."""
    return loaded.example_inputs(workload.batch, workload.context, phase="prefill", seed=workload.seed)


def _cache_kw(module: nn.Module) -> str:
    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def make_steps(forward: Callable[..., Any], module: nn.Module, workload: Workload, inputs: Mapping[str, Any], *,
               cache: Any = None) -> tuple[Callable[[], Any], Callable[[], Any] | None, dict[str, Any]]:
    """``(step, prefill, step_inputs)``: callables running one step and one prefill (None for classifiers).

    A decode step feeds one token against a KV cache of ``context`` positions built by a prefill through
    ``forward``, then crops the cache back, so every repeat decodes at the same context. ``cache``: a cache
    to prefill instead of the model's own (a runtime Session's paged KV cache, ``Session.open_kv_cache``);
    one that cannot be cropped grows by a position per repeat (the step decodes at ``context``,
    ``context + 1``, ...).
    """
    if workload.task != "causal-lm":
        return (lambda: forward(**inputs)), None, dict(inputs)
    ids = inputs["input_ids"]
    kw = _cache_kw(module)
    if cache is not None:
        forward(input_ids=ids, use_cache=True, **{kw: cache})
        step_inputs = {"input_ids": ids[:, -1:], kw: cache, "use_cache": True}
        return (lambda: forward(**step_inputs)), (lambda: forward(input_ids=ids, use_cache=False)), step_inputs
    out = forward(input_ids=ids, use_cache=True)
    cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
    if cache is None:
        raise InvalidArgumentError(f"{type(module).__name__} returned no KV cache; decode steps need a causal LM "
                                   "with use_cache support.")
    step_inputs = {"input_ids": ids[:, -1:], kw: cache, "use_cache": True}

    def step() -> Any:
        result = forward(**step_inputs)
        cache.crop(-1)
        return result

    return step, (lambda: forward(input_ids=ids, use_cache=False)), step_inputs


def no_grad_forward(module: nn.Module) -> Callable[..., Any]:
    def forward(**kwargs: Any) -> Any:
        with torch.no_grad():
            return module(**kwargs)
    return forward


def timed(fn: Callable[[], Any], *, warmup: int, repeats: int, device: str, clock: str) -> Any:
    """``LatencyStats`` of ``fn`` on the wall clock (``measure_latency``) or the process CPU clock."""

    if clock == "wall":
        return measure_latency(fn, warmup=warmup, repeats=repeats, device=device)
    if not str(device).startswith("cpu"):
        raise InvalidArgumentError(f"`clock`='cpu' times CPU execution only; {device!r} needs clock='wall'.")
    import statistics

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    s = sorted(times)

    def pct(q: float) -> float:
        pos = (len(s) - 1) * q
        lo, hi = int(pos), min(int(pos) + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)

    return LatencyStats(median_s=statistics.median(s), p10_s=pct(0.1), p90_s=pct(0.9), mean_s=statistics.fmean(s),
                        min_s=s[0], repeats=repeats, warmup=warmup, synchronised=False, device=str(device))
