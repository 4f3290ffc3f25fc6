"""A plan's session decisions as the runtime's session options: KV cache, expert streaming, lookahead.

``Plan.session`` (``autosurgeon.knobs.SESSION_KNOBS``) maps onto ``runtime.Session`` like this:

* any KV knob -> ``kv=KVCacheConfig(precision=kv_precision or "float", budget_bytes=..., tier=kv_tier,
  window=kv_window)`` (the runtime's paged cache, charged to the session's store); no KV knob -> ``kv=None``
  (Hugging Face's own cache). A ``kv_budget`` share becomes bytes with ``footprint.kv_budget_bytes``: the
  share of ``layers x (kv_context + 1) x token bytes`` at the chosen precision and ``kv_batch`` sequences,
  raised to the runtime's floor (sinks and one page per layer), exactly as the footprint counts it;
* ``prefetch`` "markov" | "lru" | "gate" -> ``experts=ExpertConfig(home=<the slower tier>, capacity=0.25,
  prefetch=..., lookahead=prefetch_depth or 2)``; "none" (or absent) -> experts stay in their blocks;
* ``prefetch_depth`` -> ``SessionSpec.lookahead`` (streamed units fetched ahead) and the expert lookahead.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from autosurgeon.cost.footprint import (
    DEFAULT_KV_CONTEXT,
    EXPERT_CAPACITY,
    kv_budget_bytes,
    kv_token_bytes,
)
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.knobs import KV_KNOBS, validate_session
from autosurgeon.space.session import build_session_record
from runtime.errors import JalapenoError
from runtime.experts import ExpertConfig
from runtime.kvcache import KVCacheConfig


@dataclass(frozen=True)
class SessionOptions:
    """What ``runtime.Session`` takes from a plan's session decisions (module docstring).

    Attributes:
        kv: a ``runtime.kvcache.KVCacheConfig``, or None for Hugging Face's own cache.
        experts: a ``runtime.experts.ExpertConfig``, or None (experts resident in their blocks).
        lookahead: the streaming lookahead the plan decides (None: the caller's).
        notes: how each decision was turned into an option (budget shares in bytes, floors applied).
    """

    kv: Any = None
    experts: Any = None
    lookahead: int | None = None
    notes: tuple[str, ...] = field(default=())


def session_options(session: Mapping[str, Any], model: nn.Module, *, exec_device: str,
                    kv_context: int = DEFAULT_KV_CONTEXT, kv_batch: int = 1, task: str | None = None,
                    expert_capacity: float | int = EXPERT_CAPACITY) -> SessionOptions:
    """Runtime options of ``session`` for ``model`` (as transformed) executing on ``exec_device``.

    Args:
        session: ``Plan.session``.
        model: the model the session runs (its config gives the KV shape; its first floating parameter the
            KV dtype, as ``runtime.Session`` does).
        exec_device: where block 0 executes ("cpu", "cuda:0"): the experts' home is the next slower tier.
        kv_context, kv_batch: the workload a ``kv_budget`` share is of (positions cached at a decode step;
            sequences).
        task: the model's task when known (a LoadedModel's), else guessed from ``model``.
        expert_capacity: expert cache slots, a share of all experts or a count (``ExpertConfig.capacity``).

    Raises:
        InvalidArgumentError: a decision this model cannot take (``check_plan`` reports these first).
    """

    session = validate_session(session)
    if kv_context < 1 or kv_batch < 1:
        raise InvalidArgumentError(f"`kv_context` and `kv_batch` must be >= 1, got {kv_context} and {kv_batch}.")
    if not session:
        return SessionOptions()
    record = build_session_record(model, task=task)
    notes: list[str] = []
    kv = experts = None
    try:
        if any(k in session for k in KV_KNOBS):
            if not record.has_kv:
                raise InvalidArgumentError(f"plan session decides the KV cache, but {record.kv_reason}; drop the "
                                           "kv_* knobs from the plan's session.")

            precision = session.get("kv_precision", "float")
            tb = kv_token_bytes(record.kv_heads, record.head_dim, precision, record.dtype, batch=kv_batch)
            budget_value = session.get("kv_budget", "none")
            budget = kv_budget_bytes(budget_value, layers=record.kv_layers, token_bytes=tb, tokens=kv_context + 1)
            if budget is not None:
                notes.append(f"kv_budget {budget_value!r} -> {budget} B (full context: {record.kv_layers} layers x "
                             f"{kv_context + 1} tokens x {tb} B per token of {kv_batch} sequence(s); floor: sinks + "
                             "one page per layer)")
            kv = KVCacheConfig(precision=precision, budget_bytes=budget, tier=session.get("kv_tier"),
                               window=session.get("kv_window"))
        prefetch = session.get("prefetch", "none")
        depth = session.get("prefetch_depth")
        if prefetch != "none":
            if not record.moe:
                raise InvalidArgumentError(f"plan session `prefetch` {prefetch!r} streams mixture-of-experts weights, "
                                           f"but {type(model).__name__} has none (dense: its blocks prefetch "
                                           "sequentially); use prefetch 'none' and set prefetch_depth.")
            if prefetch in ("gate", "hybrid") and not record.routers:
                raise InvalidArgumentError(f"plan session `prefetch` {prefetch!r} needs a router next to every experts "
                                           "module; use 'markov' or 'lru'.")

            home = "disk" if str(exec_device).startswith("cpu") else "cpu"
            experts = ExpertConfig(home=home, capacity=expert_capacity, prefetch=prefetch,
                                   lookahead=2 if depth is None else int(depth))
    except JalapenoError as exc:
        raise InvalidArgumentError(f"plan session: {exc}") from None
    return SessionOptions(kv=kv, experts=experts, lookahead=None if depth is None else int(depth), notes=tuple(notes))


__all__ = ["SessionOptions", "session_options"]
