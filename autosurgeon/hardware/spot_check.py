"""Whether a cached local profile can be trusted: plausible rates, and a cheap spot check against now.

A measured profile is reused by every command, so one taken under heavy load (this project's shared 2-core
machines once cached float32 GEMM at 4.85 and 21.8 MFLOP/s) would poison every decision made from it. Before
the cached local profile is used:

* **Plausibility**: every measured unit's GEMM rates and memory bandwidth must reach ``MIN_RATE``
  (1e8 FLOP/s, 1e8 B/s). No machine that runs torch is that slow: the floor sits two orders of magnitude
  below a single 2005-era core, so it flags only measurements of a starved process, never real hardware.
* **Spot check** (the CPU unit): one float32 GEMM at the size the profile was measured at, timed now
  (median of a few calls, wall clock, as the profile was). A cached rate below ``1 / SLOWER`` of the rate
  measured now was taken under load and is re-measured; a cached rate above ``SLOWER`` x now is kept (the
  machine is loaded NOW, and a measurement taken now would be the poisoned one); the check is logged.
"""
from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Any

from autosurgeon._logging import get_logger

if TYPE_CHECKING:  # annotations only
    from autosurgeon.hardware.profile import HardwareProfile

logger = get_logger(__name__)

MIN_RATE = 1e8  # FLOP/s and B/s: the plausibility floor (module docstring)
SLOWER = 3.0  # cached vs spot check: beyond this factor slower, the cached profile is re-measured
MAX_SPOT_N = 1024  # the spot check's GEMM size at most (a few ms on a small CPU)


def implausible(profile: HardwareProfile) -> list[str]:
    """Each measured rate of ``profile`` below the floor, as ``"cpu gemm_flops['float32'] = 4.85e+06 ..."``."""
    out = []
    for unit in profile.units:
        if not getattr(unit, "measured", False):
            continue
        for dtype, rate in dict(unit.gemm_flops).items():
            if rate < MIN_RATE:
                out.append(f"{unit.name} gemm_flops[{dtype!r}] = {rate:.3g} FLOP/s < {MIN_RATE:g}")
        if unit.memory_bandwidth < MIN_RATE:
            out.append(f"{unit.name} memory_bandwidth = {unit.memory_bandwidth:.3g} B/s < {MIN_RATE:g}")
    return out


def spot_check(profile: HardwareProfile, *, repeats: int = 5) -> dict[str, Any] | None:
    """Re-time the CPU unit's float32 GEMM now; ``{"cached", "now", "n", "verdict"}`` or None (nothing to check).

    ``verdict``: ``"re-measure"`` (cached far slower than now), ``"kept"`` or ``"kept (slower now)"``.
    """
    import torch

    unit = next((u for u in profile.units if u.kind == "cpu" and getattr(u, "measured", False)), None)
    cached = dict(unit.gemm_flops).get("float32") if unit is not None else None
    if not cached:
        return None
    how = profile.method.get("gemm", {}).get(unit.name, {}).get("float32", {})
    n = int(min(max(int(how.get("n", 256)), 16), MAX_SPOT_N))
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    torch.matmul(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - t0)
    now = 2 * n**3 / max(statistics.median(times), 1e-12)
    verdict = "kept"
    if cached * SLOWER < now:
        verdict = "re-measure"
    elif now * SLOWER < cached:
        verdict = "kept (slower now)"
    return {"cached": cached, "now": now, "n": n, "verdict": verdict}


def trust_problems(profile: HardwareProfile) -> list[str]:
    """Why the cached local ``profile`` must be measured again (empty: use it); logs the spot check."""
    problems = implausible(profile)
    if problems:
        return problems
    missing = [u.name for u in profile.units if u.kind == "gpu" and u.measured and u.name not in profile.dispatch]
    if missing:  # measured before per-op dispatch costs were recorded (hardware/dispatch.py)
        return [f"{', '.join(missing)} measured without dispatch costs (an older profile)"]
    check = spot_check(profile)
    if check is None:
        return []
    logger.info("local profile spot check: float32 GEMM n=%d cached %.3g FLOP/s, now %.3g: %s", check["n"],
                check["cached"], check["now"], check["verdict"])
    if check["verdict"] == "re-measure":
        return [f"cpu float32 GEMM cached at {check['cached']:.3g} FLOP/s, {check['now']:.3g} now (n={check['n']}): "
                f"the cached profile was measured under load"]
    return []


__all__ = ["MAX_SPOT_N", "MIN_RATE", "SLOWER", "implausible", "spot_check", "trust_problems"]
