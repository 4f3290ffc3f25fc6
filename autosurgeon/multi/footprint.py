"""Bytes per execution device of a plan over several GPUs, per-device budgets, and the check that names the
device that overflows.

One byte formula: the per-block bytes are ``cost.footprint.FootprintTracker``'s (the runtime's stored layouts,
alignment, resident vectors, packed kernel copies); this module only sums them by the device each block's
placement names, as ``runtime.multi_device.MultiSession`` charges them: a device holds its resident blocks'
bytes, its streamed blocks' resident vectors, and ``lookahead + 1`` staging slots as large as *its own*
largest streamed unit (one Streamer per device). Modules outside the blocks and the session's own holdings
(a paged KV cache, an expert cache) count on the first device (``gpu:0``, where the runtime puts them).
Host and disk tiers are shared by every device and summed as ``plan_memory`` does.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from autosurgeon.cost.footprint import FootprintTracker
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.knobs import placement_kind
from autosurgeon.multi.devices import placement_device
from autosurgeon.plan import Plan
from runtime.sizes import format_bytes, parse_bytes

if TYPE_CHECKING:  # annotations only
    from autosurgeon.hardware.profile import HardwareProfile
    from autosurgeon.space.search_space import SearchSpace


@dataclass(frozen=True)
class DeviceFootprint:
    """What a plan holds where.

    Attributes:
        devices: device (``gpu:0``, ``gpu:1``, ``cpu``) -> bytes on its memory (blocks, staging, the rest).
        tiers: the shared tiers' bytes (``cpu`` host memory, ``disk``), as ``plan_memory`` counts them.
        blocks: device -> {block name: bytes of that block on the device}, for messages.
        staging: device -> bytes of its staging slots.
    """

    devices: dict[str, int]
    tiers: dict[str, int]
    blocks: dict[str, dict[str, int]] = field(default_factory=dict)
    staging: dict[str, int] = field(default_factory=dict)


def _device_of(placement: str) -> str:
    kind = placement_kind(placement)
    return placement_device(placement) if kind == "gpu" else kind


def device_footprint(space: SearchSpace, plan: Plan | Any, *, lookahead: int = 2) -> DeviceFootprint:
    """Bytes per device of ``plan`` (a Plan or a vector of ``space``; see the module docstring)."""
    if isinstance(plan, Plan):
        tracker = FootprintTracker(space, space.encode(replace(plan, session={})), lookahead=lookahead,
                                   session=plan.session)
    else:
        tracker = FootprintTracker(space, space.check_vector(plan), lookahead=lookahead)
    default = _device_of(space.default_placement)
    blocks: dict[str, dict[str, int]] = defaultdict(dict)
    slots: dict[str, int] = defaultdict(int)
    shared = {"cpu": 0, "disk": 0}
    for block, (totals, _, slot) in zip(space.blocks, tracker.usage):
        placement = tracker.values.get((block.name, "placement"), space.default_placement) if block.is_block \
            else space.default_placement
        device = _device_of(placement) if block.is_block else default
        exec_tier = "cpu" if device == "cpu" else "gpu"
        own = totals.get(exec_tier, 0)
        if own:
            blocks[device][block.name] = own
        for tier in ("cpu", "disk"):
            if tier != exec_tier:
                shared[tier] += totals.get(tier, 0)
        slots[device] = max(slots[device], slot.get(exec_tier, 0))
    session_tiers = tracker._session_part[0]  # the session's holdings (KV, expert cache): on the first device
    if session_tiers.get("gpu" if default != "cpu" else "cpu"):
        blocks[default]["<session>"] = session_tiers.get("gpu" if default != "cpu" else "cpu", 0)
    for tier in ("cpu", "disk"):
        if not (default == "cpu" and tier == "cpu"):
            shared[tier] += session_tiers.get(tier, 0)
    staging = {d: (tracker.lookahead + 1) * n for d, n in slots.items() if n}
    devices = {d: sum(b.values()) + staging.get(d, 0) for d, b in blocks.items()}
    for d, n in staging.items():
        devices.setdefault(d, n)
    if "cpu" in devices:  # host-executed blocks live in host memory: the shared host tier holds them too
        shared["cpu"] += devices["cpu"]
    return DeviceFootprint(devices=dict(sorted(devices.items())), tiers=shared,
                           blocks={d: dict(b) for d, b in blocks.items()}, staging=staging)


def device_budgets(profile: HardwareProfile, *, per_gpu: int | str | None = None,
                   devices: Mapping[str, int | str] | None = None) -> dict[str, int]:
    """``{gpu:N: bytes}`` for every GPU of ``profile``: ``per_gpu`` (a cap each GPU gets, e.g. ``"40GiB"``)
    else each GPU's memory, then ``devices`` overriding single devices (``{"gpu:1": "20GiB"}``)."""
    gpus = [u for u in profile.units if u.kind == "gpu"]
    cap = None if per_gpu is None else parse_bytes(per_gpu, what="per_gpu")
    out = {f"gpu:{i}": (cap if cap is not None else int(u.memory_bytes)) for i, u in enumerate(gpus)}
    for name, value in dict(devices or {}).items():
        if name not in out:
            raise InvalidArgumentError(f"`devices` names {name!r}, which profile {profile.name!r} lacks; its GPU "
                                       f"devices are {sorted(out)}.")
        out[name] = parse_bytes(value, what=f"devices[{name!r}]")
    return out


def device_problems(footprint: DeviceFootprint, budgets: Mapping[str, int]) -> dict[str, str]:
    """Device -> message for each device whose bytes exceed its budget, naming the device, need, budget and
    largest block; empty when every device fits."""
    out = {}
    for device, need in footprint.devices.items():
        budget = budgets.get(device)
        if budget is None or need <= budget:
            continue
        held = footprint.blocks.get(device, {})
        top = max(held, key=held.__getitem__) if held else None
        largest = f"; largest block {top!r} ({format_bytes(held[top])})" if top else ""
        staging = footprint.staging.get(device, 0)
        streamed = "gpu<-cpu" if device == "gpu:0" else f"{device}<-disk" if device == "cpu" else f"{device}<-cpu"
        out[device] = (f"device {device!r} needs {format_bytes(need)} ({need} B) but its budget is "
                       f"{format_bytes(budget)} "
                   f"({budget} B): {len(held)} block(s) and {format_bytes(staging)} of staging{largest}. Move blocks "
                   f"to another device, or stream them ('{streamed}').")
    return out


def multi_gpu_space(space: SearchSpace) -> bool:
    """Whether ``space`` offers placements on a second GPU (a profile with several GPUs)."""
    return any(c.startswith("gpu:") for v in space.variables if v.knob == "placement" for c in v.choices)


def devices_used(space: SearchSpace, plan: Plan | Any) -> list[str]:
    """The devices a plan's blocks run on, in order of first use."""
    x = space.encode(plan) if isinstance(plan, Plan) else space.check_vector(plan)
    values = space.values(x)
    seen = [_device_of(values.get((b.name, "placement"), space.default_placement)) for b in space.blocks if b.is_block]
    return list(dict.fromkeys(seen))


__all__ = ["DeviceFootprint", "device_budgets", "device_footprint", "device_problems", "devices_used",
           "multi_gpu_space"]
