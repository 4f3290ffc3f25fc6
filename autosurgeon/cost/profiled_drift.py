"""Re-validating a profiled table against the machine's present state when it is used (MEASURING.md).

A profiled table is measured at one moment and used at another: minutes later in the same process (a sweep, the
evaluator-error benchmark) or days later from the cache. On the shared CPU machines the same unmodified step read
1.3-2.0x apart between two such moments in one process (``results/evaluator_regression_s6.md``), and that one
factor was most of the profiled evaluator's error. So on first use a profiler times the unmodified plan's real
step a few times (cheap: ``warmup`` + ``repeats`` steps) and compares it with the table's own prediction for that
plan, which is the table's baseline step by construction (overhead = baseline - the float leaves), in
``BURSTS`` short bursts. When every burst lies outside ``DRIFT_BAND`` on the same side, every time term of the
table (overhead, units, streaming) is scaled by now / table of the burst nearest the table (conservative: on a
loaded 2-core machine one burst read 0.72x while the minutes-long reference read 1.12x); bursts whose spread
(max - min over median) exceeds the band are measured once more and, still spread, the check is recorded as noisy
and not applied (a warming session read 6.3, 5.8, 5.3 ms at load 5 against a 3.1 ms reference); otherwise
nothing changes. The check, its factor and the load average are recorded in ``table.checks`` and said
in every estimate's method (never silently). A sweep's Dask workers (``cached_tables_as_is()``) take the
coordinator's last check as it is, so every evaluator of one sweep prices with one table and one factor.
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Any

from autosurgeon._logging import get_logger
from autosurgeon.cost.dispersion import load_average
from autosurgeon.cost.profiled_table import _exec_device
from autosurgeon.cost.profiled_trust import tables_as_is
from runtime.spec import BlockSpec, SessionSpec

logger = get_logger("autosurgeon.cost.profiled")

DRIFT_BAND = 0.15  # now / table within [1 / 1.15, 1.15]: the table is used as measured
REUSE_S = 60.0  # a load-time spot check at most this old stands for the first use's check
WARMUP, REPEATS, BURSTS = 3, 5, 3  # three short bursts: one burst under load moved 0.6-1.7x


def drift_scale(ratio: float, band: float = DRIFT_BAND) -> float:
    """The factor the table's time terms take for a measured now / table ``ratio``: 1 inside the band, else it."""
    if ratio <= 0:
        return 1.0
    return 1.0 if 1.0 / (1.0 + band) <= ratio <= 1.0 + band else float(ratio)


def revalidate(profiler: Any, *, band: float = DRIFT_BAND) -> dict[str, Any]:
    """Time the unmodified step now, compare with the table's own figure for it; return (and record) the check.

    A table this profiler measured at most ``REUSE_S`` ago stands for now (nothing timed); so does this profiler's
    own load-time spot check when it is at most ``REUSE_S`` old; inside
    ``cached_tables_as_is()`` reuses the table's last recorded use check (or none: factor 1) and times nothing.
    """
    table = profiler.table
    phase = profiler.workload.phase
    cached = table.baseline_s.get(phase)
    if tables_as_is():
        last = next((c for c in reversed(table.checks) if c.get("kind") == "use"), None)
        return {**(last or {"scale": 1.0, "verdict": "no check (the coordinator's table, as it is)"}), "reused": True}
    loaded = getattr(profiler, "load_check", None)
    fresh = getattr(profiler, "fresh_at", None)
    if fresh is not None and time.time() - fresh <= REUSE_S:  # measured moments ago: the table IS the present state
        now, how = cached, f"the table itself, measured {time.time() - fresh:.0f} s ago in this process"
    elif loaded is not None and time.time() - loaded["at"] <= REUSE_S and loaded.get("cached_s") == cached:
        now, how = loaded["now_s"], "the load-time spot check"
    else:
        dev = _exec_device(profiler.profile.default_unit())
        bursts: list[float] = []
        for attempt in range(2):  # a spread above the band is measured once more, then the check is not applied
            bursts = [profiler._session_step(SessionSpec(default=BlockSpec(device=dev)), warmup=WARMUP if i == 0
                                             else 1, repeats=REPEATS, prefill=False)[0] for i in range(BURSTS)]
            spread = (max(bursts) - min(bursts)) / max(statistics.median(bursts), 1e-12)
            if spread <= band:
                break
        now = None
        how = (f"{BURSTS} bursts of {REPEATS} steps: " + ", ".join(f"{b * 1e3:.3f}" for b in bursts)
               + f" ms (spread {spread:.0%}" + (", measured twice" if attempt else "") + ")")
    if now is None:  # bursts: scaled only when steady and every burst agrees, by the one nearest the table
        ratios = [b / cached if cached else 1.0 for b in bursts]
        agree = spread <= band and (all(r > 1.0 + band for r in ratios) or all(r < 1.0 / (1.0 + band) for r in ratios))
        if spread > band:
            how += " -- noisy: not applied"
        ratio = min(ratios, key=lambda r: abs(math.log(r))) if all(r > 0 for r in ratios) else 1.0
        now = ratio * cached if cached else bursts[0]
        scale = drift_scale(ratio, band) if agree else 1.0
        if not agree and spread <= band and any(drift_scale(r, band) != 1.0 for r in ratios):
            how += " (bursts disagree about the band: kept as measured)"
    else:
        ratio = now / cached if cached else 1.0
        scale = drift_scale(ratio, band)
    verdict = (f"within +-{band:.0%}: used as measured" if scale == 1.0 else
               f"outside +-{band:.0%}: time terms x{scale:.2f}")
    check = {"kind": "use", "phase": phase, "cached_s": cached, "now_s": now, "ratio": ratio, "scale": scale,
             "band": band, "how": how, "load_1m": load_average(), "table_load_1m": table.settings.get("load_1m"),
             "at": time.time(), "verdict": verdict}
    table.checks = [*table.checks[-4:], check]
    profiler.mark_changed()
    (logger.info if scale == 1.0 else logger.warning)(
        "profiled table %s on use: unmodified step now %.3f ms vs the table's %.3f ms (x%.2f, load %s): %s",
        table.key, now * 1e3, (cached or 0.0) * 1e3, ratio, check["load_1m"], verdict)
    return check


def describe(check: dict[str, Any] | None) -> str:
    """One clause for an estimate's method: what the check found and what it did."""
    if not check:
        return ""
    if "ratio" not in check:
        return f"; re-validation on use: {check.get('verdict')}"
    return (f"; re-validated on use (unmodified step now / table = {check['ratio']:.2f}, {check.get('how')}, "
            f"load {check.get('load_1m')}): {check['verdict']}" + (" (the coordinator's check)"
                                                                     if check.get("reused") else ""))


__all__ = ["DRIFT_BAND", "describe", "drift_scale", "revalidate"]
