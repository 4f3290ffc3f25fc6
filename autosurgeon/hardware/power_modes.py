"""Power modes of a device: the data a HardwareProfile carries about its power envelopes.

A :class:`PowerMode` is one envelope the device can run in (a Jetson nvpmodel mode, a GPU at its TDP)
with how the profile's rates scale in it: a factor on every GEMM rate and one on the memory bandwidth,
per unit kind, relative to the profile's *reference* rates (the mode whose factors are all 1 — the mode
the preset's datasheet figures are for). A :class:`PowerDerating` is a continuous model for caps below a
mode's watts (a GPU's configurable power limit), used where the device has no discrete modes there.

Profiles written before modes existed (schema v1) carry only ``power`` (name -> watts);
:func:`derived_modes` turns that into one mode, so every profile answers "which mode am I in" the same
way. The logic that picks a mode for a cap lives in :mod:`autosurgeon.hardware.power_cap`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from autosurgeon.errors import InvalidArgumentError

if TYPE_CHECKING:  # pragma: no cover
    from autosurgeon.hardware.profile import HardwareProfile

# Fraction of peak power a device draws idle. Source: ANCHORS.md, one H100 80GB measured with NVML
# (139 W idle / 700 W limit = 0.2); used for every mode without an idle figure of its own.
IDLE_POWER_FRACTION = 0.2
# ASSUMED power of one busy server CPU core when a profile lists no power figure (a 2-core share of a
# ~200 W 64-core EPYC package is ~6 W; 10 W rounds up for uncore/DRAM). Labelled estimated everywhere.
DEFAULT_WATTS_PER_CORE = 10.0
_KINDS = ("cpu", "gpu", "dla")


def _positive(value: Any, what: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"`{what}` must be a number, got {value!r}.") from None
    if not (out > 0 and math.isfinite(out)):
        raise InvalidArgumentError(f"`{what}` must be a finite number > 0, got {value!r}.")
    return out


def _scales(values: Mapping[str, Any], what: str) -> dict[str, float]:
    out = {}
    for kind, v in dict(values).items():
        if kind not in _KINDS:
            raise InvalidArgumentError(f"`{what}` keys must be unit kinds {_KINDS}, got {kind!r}.")
        out[str(kind)] = _positive(v, f"{what}[{kind!r}]")
    return out


@dataclass(frozen=True, kw_only=True)
class PowerMode:
    """One power envelope and how the profile's rates scale in it.

    Attributes:
        name: The mode's name as the vendor calls it (``"MAXN"``, ``"15W"``, ``"TDP"``).
        watts: The envelope: the most the device (module, board) draws in this mode.
        compute_scale: Unit kind -> factor on that kind's GEMM rates, relative to the reference rates
            (kinds not listed: 1.0). For clock caps: online cores x clock / reference cores x clock.
        memory_scale: Unit kind -> factor on that kind's memory bandwidth (not listed: 1.0).
        cores: Unit kind -> lanes online in this mode (CPU cores, GPU SMs), where the mode changes them.
        idle_watts: Power drawn idle in this mode; None: ``IDLE_POWER_FRACTION x watts``.
        source: Where the figures come from; anything computed is marked DERIVED or ASSUMED.
    """

    name: str
    watts: float
    compute_scale: dict[str, float] = field(default_factory=dict)
    memory_scale: dict[str, float] = field(default_factory=dict)
    cores: dict[str, int] = field(default_factory=dict)
    idle_watts: float | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InvalidArgumentError(f"`power_modes[].name` must be a non-empty string, got {self.name!r}.")
        object.__setattr__(self, "watts", _positive(self.watts, f"power_modes[{self.name!r}].watts"))
        object.__setattr__(self, "compute_scale",
                           _scales(self.compute_scale, f"power_modes[{self.name!r}].compute_scale"))
        object.__setattr__(self, "memory_scale", _scales(self.memory_scale, f"power_modes[{self.name!r}].memory_scale"))
        object.__setattr__(self, "cores", {str(k): int(v) for k, v in dict(self.cores).items()})
        if self.idle_watts is not None:
            idle = _positive(self.idle_watts, f"power_modes[{self.name!r}].idle_watts")
            if idle > self.watts:
                raise InvalidArgumentError(f"`power_modes[{self.name!r}].idle_watts` ({idle:g} W) must not exceed its "
                                           f"`watts` ({self.watts:g} W).")
            object.__setattr__(self, "idle_watts", idle)

    @property
    def idle(self) -> float:
        """Idle watts in this mode (the stated figure, else ``IDLE_POWER_FRACTION x watts``)."""
        return self.idle_watts if self.idle_watts is not None else IDLE_POWER_FRACTION * self.watts

    def compute(self, kind: str) -> float:
        return self.compute_scale.get(kind, 1.0)

    def memory(self, kind: str) -> float:
        return self.memory_scale.get(kind, 1.0)

    @property
    def is_reference(self) -> bool:
        """Whether every factor is 1: the profile's rates are this mode's."""
        return all(v == 1.0 for v in (*self.compute_scale.values(), *self.memory_scale.values()))


@dataclass(frozen=True, kw_only=True)
class PowerDerating:
    """A model of a configurable power limit below a mode's watts (GPU DVFS); labelled a model everywhere.

    Power splits into a static part (leakage, memory, fans: independent of the cap) and a dynamic part
    that scales with ``f^exponent`` (dynamic power ~ C V^2 f with V roughly proportional to f, hence
    ``exponent`` 3). A cap ``P`` leaves the clock at ``f / f_ref = ((P - static) / (P_ref - static)) ^
    (1 / exponent)``; the compute rates of ``kinds`` scale with it, memory bandwidth by ``memory_scale``
    (power capping lowers core clocks; the memory clock is not lowered, so 1.0 by default).

    Attributes:
        mode: Name of the mode it derates from (its watts are ``P_ref``).
        min_watts: Lowest cap the device accepts (its minimum power limit).
        static_watts: The cap-independent part; None: the mode's idle watts.
        exponent: Dynamic power ~ clock ^ exponent.
        kinds: Unit kinds whose clocks the limit lowers.
        memory_scale: Factor on those kinds' memory bandwidth at any cap below ``P_ref``.
        source: Where the figures and the model come from (ASSUMED / DERIVED marked).
    """

    mode: str
    min_watts: float
    static_watts: float | None = None
    exponent: float = 3.0
    kinds: tuple[str, ...] = ("gpu",)
    memory_scale: float = 1.0
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "min_watts", _positive(self.min_watts, "power_derating.min_watts"))
        object.__setattr__(self, "exponent", _positive(self.exponent, "power_derating.exponent"))
        object.__setattr__(self, "memory_scale", _positive(self.memory_scale, "power_derating.memory_scale"))
        object.__setattr__(self, "kinds", tuple(self.kinds))
        if self.static_watts is not None:
            object.__setattr__(self, "static_watts", _positive(self.static_watts, "power_derating.static_watts"))
        bad = [k for k in self.kinds if k not in _KINDS]
        if bad:
            raise InvalidArgumentError(f"`power_derating.kinds` must be unit kinds {_KINDS}, got {bad}.")


def mode_from_dict(data: Mapping[str, Any]) -> PowerMode:
    return PowerMode(**dict(data))


def derating_from_dict(data: Mapping[str, Any]) -> PowerDerating:
    kwargs = dict(data)
    if "kinds" in kwargs:
        kwargs["kinds"] = tuple(kwargs["kinds"])
    return PowerDerating(**kwargs)


def derived_modes(profile: HardwareProfile) -> tuple[PowerMode, ...]:
    """One mode from a profile's ``power`` figures, for profiles that list no ``power_modes``.

    ``power["tdp"]`` if given, else the largest envelope listed (the mode a v1 preset's rates are for),
    else ``DEFAULT_WATTS_PER_CORE`` x CPU cores (ASSUMED): the same envelope the power model used before
    modes existed, so old profiles keep their energy figures.
    """
    power = dict(profile.power)
    if "tdp" in power:
        return (PowerMode(name="TDP", watts=power["tdp"], source="DERIVED from the profile's power['tdp']"),)
    if power:
        key = max(power, key=lambda k: power[k])
        return (PowerMode(name=key, watts=power[key],
                          source="DERIVED: the largest envelope in the profile's `power` (no power_modes listed)"),)
    cores = profile.cpu.physical_cores or max((u.cores for u in profile.units if u.kind == "cpu"), default=1)
    cores = max(cores, 1)
    return (PowerMode(name=f"ASSUMED {DEFAULT_WATTS_PER_CORE:.0f} W x {cores} cores",
                      watts=DEFAULT_WATTS_PER_CORE * cores,
                      source="ASSUMED: the profile lists no power figure (DEFAULT_WATTS_PER_CORE per CPU core)"),)


def measured_modes(gpus: Any) -> tuple[PowerMode, ...]:
    """The power mode a measured machine runs in, from what NVML read: the first GPU's enforced power limit
    (the card runs under it now; AutoSurgeon reads it and never changes it). Empty without such a reading."""
    for gpu in gpus:
        if gpu.power_limit_w:
            default = f", default {gpu.default_power_limit_w:g} W" if gpu.default_power_limit_w else ""
            return (PowerMode(name=f"cuda:{gpu.index} enforced limit", watts=gpu.power_limit_w,
                              source=f"NVML enforced power limit of GPU {gpu.index} ({gpu.name}{default}), read-only: "
                              "the limit the card runs under when profiled; never changed by AutoSurgeon. Idle "
                              "power ASSUMED 20% of it."),)
    return ()


def profile_modes(profile: HardwareProfile) -> tuple[PowerMode, ...]:
    """The profile's power modes: its ``power_modes``, else :func:`derived_modes`."""
    return tuple(profile.power_modes) or derived_modes(profile)


def current_mode(profile: HardwareProfile) -> PowerMode:
    """The mode the profile's rates are for: ``power_mode`` by name, else its reference (all factors 1)."""
    modes = profile_modes(profile)
    if profile.power_mode is not None:
        for mode in modes:
            if mode.name == profile.power_mode:
                return mode
    return next((m for m in modes if m.is_reference), modes[0])


__all__ = ["DEFAULT_WATTS_PER_CORE", "IDLE_POWER_FRACTION", "PowerDerating", "PowerMode", "current_mode",
           "derating_from_dict", "derived_modes", "measured_modes", "mode_from_dict", "profile_modes"]
