"""The spot check of a cached profiled table (MEASURING.md): re-time the unmodified step a few times now.

A cached table slower than now by more than ``STALE`` (measured under load, or stale) or mostly noisy is
re-measured, not trusted; one faster than now is kept (the machine is loaded NOW, and a table measured now
would be the poisoned one) and the check is recorded in ``table.checks``.

Inside ``cached_tables_as_is()`` a cached table is used as it is: a sweep's Dask workers load the table the
coordinator measured and checked, and every evaluator of one sweep must price with that one table (a worker
that re-measured would price plans differently from the serial evaluator and from the other workers).
"""
from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from autosurgeon._logging import get_logger
from autosurgeon.cost.dispersion import STALE, load_average
from autosurgeon.cost.profiled_table import _exec_device
from runtime.spec import BlockSpec, SessionSpec

logger = get_logger("autosurgeon.cost.profiled")


_AS_IS = contextvars.ContextVar("autosurgeon_cached_tables_as_is", default=False)


@contextmanager
def cached_tables_as_is() -> Iterator[None]:
    """Profilers built inside use a cached table without the spot check (module docstring)."""
    token = _AS_IS.set(True)
    try:
        yield
    finally:
        _AS_IS.reset(token)


def tables_as_is() -> bool:
    """Whether the caller runs inside ``cached_tables_as_is()`` (cached measurements are used as they are)."""
    return _AS_IS.get()


def trust_table(profiler: Any, table: Any) -> bool:
    """Whether ``profiler`` may use the cached ``table`` (module docstring); records the check in ``table.checks``."""
    if _AS_IS.get():
        return True
    if table.noisy_share() > 0.5:
        logger.warning("cached profiled table %s: %d of %d entries noisy; measuring again.", profiler.path,
                       len(table.noisy), len(table.spread))
        return False
    phase = profiler.workload.phase
    cached = table.baseline_s.get(phase)
    if not cached:
        return True

    dev = _exec_device(profiler.profile.default_unit())
    now, _, _ = profiler._session_step(SessionSpec(default=BlockSpec(device=dev)), warmup=2, repeats=5,
                                       prefill=False)
    verdict = "kept"
    if cached > now * (1 + STALE):
        verdict = "re-measured"
    elif now > cached * (1 + STALE):
        verdict = "kept (slower now: the machine is loaded now)"
    check = {"phase": phase, "cached_s": cached, "now_s": now, "load_1m": load_average(),
             "table_load_1m": table.settings.get("load_1m"), "verdict": verdict}
    logger.info("profiled table spot check: cached %.3f ms vs now %.3f ms per step: %s", cached * 1e3,
                now * 1e3, verdict)
    if verdict == "re-measured":
        logger.warning("cached profiled table %s prices the unmodified step at %.3f ms, now %.3f ms (load %s): "
                       "measuring it again.", profiler.path, cached * 1e3, now * 1e3, check["load_1m"])
        return False
    table.checks = [*table.checks[-4:], check]
    profiler.load_check = {**check, "at": time.time()}  # the first use's re-validation may stand on it (profiled_drift)
    return True


__all__ = ["cached_tables_as_is", "tables_as_is", "trust_table"]
