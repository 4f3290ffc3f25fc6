"""The numbers of a hardware profile checked before anything is priced with them.

A profile is read from a file a user may have edited; a rate of 0, NaN or ``"fast"`` would otherwise price
every plan at infinite or NaN speed (or crash deep in the cost model). Each unit needs a finite positive
memory bandwidth and finite positive GEMM rates (at least one), a memory size that is a non-negative number;
links (host<->device, disk) are finite non-negative rates. Bounds are generous (1e18 B/s, 1e21 FLOP/s,
2**62 B): they catch typos such as ``1e999``, not real hardware.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from autosurgeon.errors import InvalidArgumentError

if TYPE_CHECKING:  # annotations only
    from autosurgeon.hardware.profile import HardwareProfile

MAX_RATE = 1e21  # FLOP/s; far above any device
MAX_BANDWIDTH = 1e18  # B/s
MAX_BYTES = 2**62


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def profile_problems(profile: HardwareProfile) -> list[str]:
    """Each out-of-range number of ``profile`` as ``"units[0].memory_bandwidth must be ..."``; empty if none."""
    out: list[str] = []
    for i, unit in enumerate(profile.units):
        where = f"units[{i}] ({unit.name})"
        bw = unit.memory_bandwidth
        if not (_number(bw) and 0 < bw <= MAX_BANDWIDTH):
            out.append(f"{where}.memory_bandwidth must be a number of bytes/s in (0, {MAX_BANDWIDTH:g}], got {bw!r}")
        mem = unit.memory_bytes
        if not (_number(mem) and 0 <= mem <= MAX_BYTES):
            out.append(f"{where}.memory_bytes must be a number of bytes in [0, 2**62], got {mem!r}")
        rates = unit.gemm_flops
        if not isinstance(rates, dict) or not rates:
            out.append(f"{where}.gemm_flops must map dtype names to FLOP/s, got {rates!r}")
            continue
        for dtype, rate in rates.items():
            if not (_number(rate) and 0 < rate <= MAX_RATE):
                out.append(f"{where}.gemm_flops[{dtype!r}] must be a number of FLOP/s in (0, {MAX_RATE:g}], "
                           f"got {rate!r}")
    from autosurgeon.hardware.dispatch import DispatchCosts  # lazy: dispatch imports nothing of this module

    for unit_name, record in dict(getattr(profile, "dispatch", {}) or {}).items():
        try:
            DispatchCosts.from_record(record, where=f"dispatch[{unit_name!r}]")
        except InvalidArgumentError as exc:
            out.append(str(exc).split(";")[0])
    for name, rate in dict(profile.links).items():
        if not (_number(rate) and 0 <= rate <= MAX_BANDWIDTH):
            out.append(f"links[{name!r}] must be a number of bytes/s in [0, {MAX_BANDWIDTH:g}], got {rate!r}")
    return out


__all__ = ["MAX_BANDWIDTH", "MAX_BYTES", "MAX_RATE", "profile_problems"]
