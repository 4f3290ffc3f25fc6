"""The paged KV cache's cost per gather dispatch, measured once per profiled table (``Profiler.kv_op_seconds``).

A decode step of the unmodified model at the workload's context through the runtime's paged float cache and
through Hugging Face's, each in its own Session; the difference over the dispatches the paged cache adds is
what one dispatch costs on this machine.
"""
from __future__ import annotations

import copy
import time
from typing import Any

from autosurgeon._logging import get_logger
from autosurgeon.cost.footprint import kv_layer_bytes
from autosurgeon.cost.kv import gather_ops
from autosurgeon.cost.profiled_table import _exec_device
from autosurgeon.cost.workload import base_inputs, make_steps, timed
from runtime.kvcache import KVCacheConfig
from runtime.session import Session
from runtime.spec import BlockSpec, SessionSpec

logger = get_logger(__name__)


def measure_kv_op_seconds(profiler: Any) -> float:
    """Seconds per paged-KV gather dispatch for ``profiler`` (a ``cost.profiled.Profiler``), cached in its table."""
    key = "paged-float"
    if key in profiler.table.kv_op_s:
        return profiler.table.kv_op_s[key]

    record = getattr(profiler.space, "session", None)
    fallback = profiler.table.launch_overhead_s.get(profiler.workload.phase, 0.0)
    if record is None or not record.has_kv or profiler.workload.task != "causal-lm":
        return fallback
    started = time.perf_counter()
    dev = _exec_device(profiler.profile.default_unit())
    t = profiler.timing
    medians = []
    for kv in (None, KVCacheConfig()):
        with Session(copy.deepcopy(profiler.module), SessionSpec(default=BlockSpec(device=dev)), kv=kv) as session:
            step, _, _ = make_steps(session.forward, session.model, profiler.workload,
                                    base_inputs(profiler.loaded, profiler.workload), cache=session.open_kv_cache())
            medians.append(timed(step, warmup=t.step_warmup, repeats=t.step_repeats, device=dev,
                                 clock=t.clock).median_s)
    tokens = profiler.workload.context + t.step_warmup + t.step_repeats // 2 + 1  # the median repeat's cache
    pages = kv_layer_bytes(tokens - 1, 1, 1, None, None)[4]
    ops = (gather_ops("float", pages, rotated=False) - 2) * record.kv_layers
    profiler.table.kv_op_s[key] = max(0.0, (medians[1] - medians[0]) / max(ops, 1))
    profiler.table.seconds += time.perf_counter() - started
    profiler._dirty = True
    logger.info("paged KV cache: %.2f us per gather dispatch (step %.3f ms paged vs %.3f ms HF)",
                profiler.table.kv_op_s[key] * 1e6, medians[1] * 1e3, medians[0] * 1e3)
    return profiler.table.kv_op_s[key]


__all__ = ["measure_kv_op_seconds"]
