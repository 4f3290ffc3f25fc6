"""Power caps: the profile a plan is evaluated on under a cap, and the constraint a plan must meet.

Energy is an objective like latency; a *power cap* (``--power-cap W``) is a constraint on where plans
may run. Two cases, because AutoSurgeon never changes a real device's clocks or power limit:

* **On paper** (a preset, ``measured=False``): :func:`at_power_cap` returns the profile in the fastest
  power mode whose envelope fits the cap — a listed mode (Jetson nvpmodel 15/30/50 W/MAXN), or, below a
  GPU's TDP, a mode made by the profile's ``power_derating`` model (DVFS: dynamic power ~ f^3, labelled
  DERIVED). Rates scale by the mode's factors, so an evaluator built on the result is slower where the
  mode's clocks are lower, and its energy uses the mode's envelope (``cost.power_envelope``): a plan's
  estimated mean power never exceeds the mode's watts, hence never the cap.
* **Measured** (this machine as it runs): the profile stays as measured; a plan whose mean power
  (``Metrics.energy_j / latency_s``, measured where NVML/RAPL reads) exceeds the cap is infeasible.

:func:`resolve_power_cap` makes that choice and returns a :class:`PowerCap` that sweeps, the
environment and the policy tools share: the profile to evaluate on, the mode, and :meth:`PowerCap.excess`
(mean power minus cap, <= 0 feasible), recorded in run outputs with :meth:`PowerCap.to_dict`.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autosurgeon._logging import get_logger
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.hardware.power_modes import PowerDerating, PowerMode, current_mode, profile_modes
from autosurgeon.hardware.profile import HardwareProfile

if TYPE_CHECKING:  # annotations only
    from autosurgeon.metrics import Metrics

logger = get_logger(__name__)


def check_power_cap(watts: Any, *, argument: str = "--power-cap") -> float:
    """``watts`` as a float, or InvalidArgumentError naming ``argument`` when it is not a finite number > 0."""
    try:
        value = float(watts)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"`{argument}` must be a power in watts (a number > 0), got {watts!r}.") from None
    if not (value > 0 and math.isfinite(value)):
        raise InvalidArgumentError(f"`{argument}` must be a power in watts > 0, got {watts!r}; give the device's "
                                   "power budget, e.g. 15 for a Jetson in its 15 W mode.")
    return value


def _speed(profile: HardwareProfile, mode: PowerMode) -> tuple[float, float]:
    kind = profile.default_unit().kind
    return (mode.compute(kind), mode.memory(kind))


def derated_mode(profile: HardwareProfile, watts: float) -> PowerMode | None:
    """The mode the profile's ``power_derating`` model makes for a cap of ``watts`` (None: out of its range)."""
    model: PowerDerating | None = profile.power_derating
    if model is None:
        return None
    ref = next(m for m in profile_modes(profile) if m.name == model.mode)
    static = model.static_watts if model.static_watts is not None else ref.idle
    if not (model.min_watts <= watts < ref.watts) or watts <= static:
        return None
    clock = ((watts - static) / (ref.watts - static)) ** (1.0 / model.exponent)
    return PowerMode(
        name=f"cap {watts:g} W (DVFS model)", watts=watts,
        compute_scale={**ref.compute_scale, **{k: ref.compute(k) * clock for k in model.kinds}},
        memory_scale={**ref.memory_scale, **{k: ref.memory(k) * model.memory_scale for k in model.kinds}},
        cores=dict(ref.cores), idle_watts=min(static, watts),
        source=(f"DERIVED by the power_derating model from {ref.name!r} ({ref.watts:g} W): clock x "
                f"(({watts:g} - {static:g}) / ({ref.watts:g} - {static:g}))^(1/{model.exponent:g}) = {clock:.3f} on "
                f"{', '.join(model.kinds)}; a model, not a measurement. {model.source}".strip()))


def select_mode(profile: HardwareProfile, watts: float, *, argument: str = "--power-cap") -> PowerMode:
    """The fastest mode whose envelope fits ``watts``: the highest-watts listed mode <= ``watts``, or the
    derating model's mode at ``watts`` when that is higher (ties: the faster default unit)."""
    watts = check_power_cap(watts, argument=argument)
    modes = profile_modes(profile)
    fits = [m for m in modes if m.watts <= watts]
    made = derated_mode(profile, watts)
    if made is not None:
        fits.append(made)
    if not fits:
        listed = ", ".join(f"{m.name} {m.watts:g} W" for m in sorted(modes, key=lambda m: m.watts))
        floor = min(m.watts for m in modes)
        extra = ""
        if profile.power_derating is not None:
            floor = min(floor, profile.power_derating.min_watts)
            extra = (f"; its power limit can be set down to {profile.power_derating.min_watts:g} W "
                     f"(power_derating model of {profile.power_derating.mode!r})")
        raise InvalidArgumentError(
            f"`{argument}` {watts:g} W is below every power mode of {profile.name!r} ({listed}{extra}). "
            f"Give a cap >= {floor:g} W, or a profile with a lower-power mode (see `autosurgeon profile --device "
            f"{profile.name}`).")
    return max(fits, key=lambda m: (m.watts, *_speed(profile, m)))


def in_mode(profile: HardwareProfile, mode: PowerMode) -> HardwareProfile:
    """A copy of ``profile`` whose rates are ``mode``'s (rescaled from the current mode's factors)."""
    current = current_mode(profile)
    if mode == current:
        return profile
    units = []
    for u in profile.units:
        c = mode.compute(u.kind) / current.compute(u.kind)
        m = mode.memory(u.kind) / current.memory(u.kind)
        units.append(dataclasses.replace(
            u, gemm_flops={k: v * c for k, v in u.gemm_flops.items()}, memory_bandwidth=u.memory_bandwidth * m,
            cores=mode.cores.get(u.kind, u.cores), measured=u.measured and c == 1.0 and m == 1.0))
    modes = profile_modes(profile)
    if mode.name not in {m.name for m in modes}:
        modes = (*modes, mode)
    note = (f"Rates are for power mode {mode.name!r} ({mode.watts:g} W), scaled by autosurgeon.hardware.power_cap from "
            f"{current.name!r} (the factors and their source: power_modes).")
    notes = tuple(n for n in profile.notes if not n.startswith("Rates are for power mode ")) + (note,)
    return dataclasses.replace(profile, units=tuple(units), power_modes=tuple(modes), power_mode=mode.name,
                               notes=notes)


def at_power_cap(profile: HardwareProfile, watts: float, *, argument: str = "--power-cap") -> HardwareProfile:
    """The paper profile in the fastest mode whose envelope is <= ``watts`` (module docstring).

    Raises:
        InvalidArgumentError: ``watts`` is not a power > 0, is below every mode (the message lists them), or
            ``profile`` is measured and the cap would need other clocks (a real device is never changed:
            use :func:`resolve_power_cap`, which makes the cap a constraint there).
    """
    mode = select_mode(profile, watts, argument=argument)
    if profile.measured and mode.name != current_mode(profile).name:
        raise InvalidArgumentError(
            f"profile {profile.name!r} was measured on this machine as it runs; AutoSurgeon never changes a real "
            f"device's clocks or power limit, so `{argument}` {watts:g} W cannot derate it. Use resolve_power_cap "
            "(what --power-cap does): on a measured profile plans above the cap are infeasible.")
    return in_mode(profile, mode)


def mean_power_w(metrics: Metrics) -> float | None:
    """A plan's mean power in watts: ``energy_j / latency_s`` (both per token or sample); None without energy."""
    energy = getattr(metrics, "energy_j", None)
    if energy is None:
        return None
    return float(energy) / float(metrics.latency_s)


@dataclass(frozen=True)
class PowerCap:
    """A power cap resolved for one profile (module docstring).

    Attributes:
        watts: The cap.
        profile: The profile to evaluate on (derated on paper; as measured otherwise).
        mode: The power mode evaluated in.
        derated: Whether ``profile`` is a paper profile moved to ``mode`` for the cap.
    """

    watts: float
    profile: HardwareProfile
    mode: PowerMode
    derated: bool

    @property
    def how(self) -> str:
        if self.derated:
            return (f"on paper: evaluated in power mode {self.mode.name!r} ({self.mode.watts:g} W <= cap); a plan's "
                    "estimated mean power cannot exceed the mode's envelope")
        return ("measured profile: clocks and power limit left as they are (never changed); plans whose mean power "
                "(energy / latency) exceeds the cap are infeasible")

    def excess(self, metrics: Metrics) -> float:
        """Mean power minus the cap, in watts (<= 0: within the cap)."""
        watts = mean_power_w(metrics)
        if watts is None:
            raise InvalidArgumentError("the power cap needs the evaluator's energy (Metrics.energy_j), which this "
                                       "evaluation did not produce; drop --power-cap or use an evaluator with energy.")
        return watts - self.watts

    def to_dict(self) -> dict[str, Any]:
        """What run outputs record: the cap, the mode used, its envelope and source, and how it applied."""
        return {"power_cap_w": self.watts, "power_mode": self.mode.name, "mode_watts": self.mode.watts,
                "mode_idle_watts": self.mode.idle, "derated": self.derated, "device": self.profile.name,
                "device_measured": bool(self.profile.measured), "how": self.how, "mode_source": self.mode.source}


def resolve_power_cap(profile: HardwareProfile, watts: Any, *, argument: str = "--power-cap") -> PowerCap:
    """How a cap of ``watts`` applies to ``profile``: derate a paper profile, constrain a measured one."""
    watts = check_power_cap(watts, argument=argument)
    if profile.measured:
        mode = current_mode(profile)
        if watts < mode.idle:
            logger.warning("%s %g W is below %s's idle power in the power model (%g W, mode %r): expect every plan "
                           "to be infeasible", argument, watts, profile.name, mode.idle, mode.name)
        return PowerCap(watts=watts, profile=profile, mode=mode, derated=False)
    derated = at_power_cap(profile, watts, argument=argument)
    return PowerCap(watts=watts, profile=derated, mode=current_mode(derated), derated=True)


def mode_key(profile: HardwareProfile) -> str | None:
    """A cache-key part naming the profile's mode when its rates are not the reference ones (else None, so
    the keys of profiles in their reference mode are what they were before power modes existed)."""
    mode = current_mode(profile)
    if mode.is_reference:
        return None
    return f"{mode.name}@{mode.watts:g}W"


__all__ = ["PowerCap", "at_power_cap", "check_power_cap", "derated_mode", "in_mode", "mean_power_w", "mode_key",
           "resolve_power_cap", "select_mode"]
