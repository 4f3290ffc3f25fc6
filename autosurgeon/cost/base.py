"""Cost models of a plan: the pieces both cheap evaluators share, and the two models themselves.

* :mod:`autosurgeon.cost.analytic` — ``AnalyticCostModel``: roofline per unit + transfers + overlap +
  launch overhead, from a ``HardwareProfile`` alone (works for presets on paper).
* :mod:`autosurgeon.cost.profiled` — ``ProfiledTable``: per-unit times measured once on the runtime,
  cached on disk, composed per plan.

This module holds what they share: how a plan resolves into per-block placements and per-leaf precisions
(:func:`resolve_blocks`), the streaming pipeline formula (:func:`pipeline_latency`), link bandwidths
(:func:`transfer_seconds_per_byte`) and the power model (:func:`power_envelope`, :func:`energy_j`).

Streaming pipeline (one forward; blocks in order)::

    T = overhead + sum_b step_b
    step_b = C_b                              resident block
    step_b = max(C_b, X_b) + F_b              streamed, lookahead >= 1
    step_b = C_b + X_b + F_b                  streamed, lookahead == 0

``C_b`` compute time of block b on its execution unit, ``X_b`` its transfer time (bytes / link), ``F_b``
the per-fetch cost on the critical path (``n_fetch x fetch_overhead``: hook, mapping, copy issue — paid on
the main thread, so never hidden). With prefetch lookahead the transfer of a block runs while the blocks
before it compute, so in steady state a streamed block costs the slower of its compute and its transfer.

Power model (energy per token/sample, always labelled "estimated")::

    E = (P_idle + (P_max - P_idle) x u) x T,    u = busy_s / T clipped to [0, 1]

``busy_s`` is the roofline time of the work (the unit would be fully busy for that long); ``P_max`` the
watts of the profile's current power mode (``hw_power.current_mode``: the mode its rates are for — a
preset's reference mode such as the Jetson's MAXN or a GPU's TDP, or the mode ``power.at_power_cap``
moved it to); ``P_idle`` the mode's idle watts, else ``IDLE_POWER_FRACTION x P_max``. A profile without
power modes derives one from ``power["tdp"]`` or its largest envelope; without any power figure (this
CPU's measured profile) ``DEFAULT_WATTS_PER_CORE x cores``, and the method text says so. Since
``u <= 1``, a plan's estimated mean power never exceeds its mode's watts.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autosurgeon import precisions as precision_table
from autosurgeon.cost.footprint import tensor_bytes
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.hardware.power_modes import DEFAULT_WATTS_PER_CORE, IDLE_POWER_FRACTION, current_mode
from autosurgeon.knobs import placement_kind
from autosurgeon.space.masks import group_size_reason

if TYPE_CHECKING:  # pragma: no cover
    from autosurgeon.hardware.profile import ComputeUnit, HardwareProfile
    from autosurgeon.space.search_space import SearchSpace

# The power model's constants (IDLE_POWER_FRACTION, DEFAULT_WATTS_PER_CORE) live with the power modes in
# ``hw_power`` and are re-exported here.
# ASSUMED per-op dispatch/launch cost of eager PyTorch, per unit kind, for profiles that did not measure it
# (ProfiledTable measures it: fixed overhead / ops per forward). CPU: aten dispatch + Python module call,
# a few microseconds per op; GPU: kernel launch latency ~5-10 us (eager decode is launch-bound, ANCHORS.md:
# H100 eager decode 20 tok/s vs an HBM bound of ~430 tok/s).
DEFAULT_LAUNCH_OVERHEAD_S = {"cpu": 6e-6, "gpu": 8e-6, "dla": 50e-6}
# ASSUMED cost of issuing one streamed fetch (hook, mapping or copy issue), per execution kind.
DEFAULT_FETCH_OVERHEAD_S = {"cpu": 30e-6, "gpu": 20e-6, "dla": 20e-6}
# ASSUMED disk read rate for profiles that list none (a Jetson preset): a mid-range NVMe SSD.
DEFAULT_DISK_READ = 2.0e9
DISK_CACHE_MODES = ("auto", "warm", "cold")


@dataclass(frozen=True)
class LeafChoice:
    """One leaf under a plan: its record, the precision it computes in, and its quantization settings."""

    leaf: Any  # space_units.LeafRecord
    precision: str
    group_size: int
    kernel: str
    chosen: bool  # a precision variable decided it (False: the model's own dtype)


@dataclass(frozen=True)
class BlockChoice:
    """One block-level unit under a plan: where it runs, where its weights live, and its leaves."""

    name: str
    exec_kind: str  # "cpu" | "gpu" | "dla"
    home: str | None  # None: resident; else the tier it streams from ("cpu", "disk")
    packed: bool
    leaves: tuple[LeafChoice, ...]

    @property
    def placement(self) -> str:
        return self.exec_kind if self.home is None else f"{self.exec_kind}<-{self.home}"

    @property
    def streamed(self) -> bool:
        return self.home is not None


def resolve_blocks(space: SearchSpace, x: Any) -> list[BlockChoice]:
    """Every block-level unit of ``space`` under vector ``x``, in model order (modules outside blocks too)."""
    values = space.values(x)
    default_kind = space.default_placement
    out = []
    for block in space.blocks:
        placement = values.get((block.name, "placement"), default_kind) if block.is_block else default_kind
        exec_kind, home = placement_kind(placement), placement.partition("<-")[2]  # "gpu:1<-cpu": gpu, cpu
        exec_tier = "gpu" if exec_kind in ("gpu", "dla") else "cpu"
        home = home or None
        if home == exec_tier:
            home = None
        packed = values.get((block.name, "layout")) == "packed" and home is not None
        leaves = []
        for name in block.leaves:
            leaf = space.leaves[name]
            precision = values.get((name, "precision"))
            leaves.append(LeafChoice(
                leaf=leaf, precision=precision or (leaf.dtype or "float32"),
                group_size=int(values.get((name, "group_size"), default_group(leaf))),
                kernel=str(values.get((name, "kernel"), "auto")), chosen=precision is not None))
        out.append(BlockChoice(block.name, exec_kind, home, packed, tuple(leaves)))
    return out


def default_group(leaf: Any) -> int:
    """int4 group of a leaf whose space has no group_size variable: 128, or 32 where 128 is masked (a row
    narrower than 128), which is what ``SearchSpace.repair`` makes of the default there."""

    return 128 if not leaf.in_features or group_size_reason(128, leaf.in_features) is None else 32


def leaf_stream_bytes(choice: LeafChoice) -> int:
    """Bytes a streamed leaf moves per fetch (0 for vector-only leaves, which the runtime keeps resident)."""
    leaf = choice.leaf
    if not leaf.streamable:
        return 0
    if choice.chosen and leaf.weight_numel:
        parts = tensor_bytes(leaf.weight_numel, leaf.out_features, choice.precision, choice.group_size,
                             bias=leaf.bias)
        return sum(parts) + sum(leaf.other_sizes)
    return sum(leaf.tensor_sizes)


def block_stream(block: BlockChoice) -> tuple[int, int]:
    """``(bytes, fetches)`` of one pass over a streamed block (``packed``: one fetch for the whole block)."""
    sizes = [leaf_stream_bytes(c) for c in block.leaves]
    moved = [s for s in sizes if s]
    return sum(moved), (1 if block.packed and moved else len(moved))


def pipeline_latency(steps: Iterable[tuple[float, float, float, bool]], *, lookahead: int) -> float:
    """Sum of per-block steps ``(compute_s, transfer_s, fetch_overhead_s, streamed)`` (module docstring)."""
    total = 0.0
    for compute, transfer, fetch, streamed in steps:
        if not streamed:
            total += compute
        elif lookahead >= 1:
            total += max(compute, transfer) + fetch
        else:
            total += compute + transfer + fetch
    return total


def disk_is_warm(profile: HardwareProfile, disk_bytes: int, mode: str) -> bool:
    """Whether disk-tier reads come from the page cache: ``auto`` = the disk tier fits in half the RAM.

    The runtime writes a session's disk-tier file when it starts, so a file that fits the page cache is
    read back from memory; ``cold`` models a dropped cache (first run, or a model much larger than RAM).
    """
    if mode not in DISK_CACHE_MODES:
        raise InvalidArgumentError(f"`disk_cache` must be one of {DISK_CACHE_MODES}, got {mode!r}.")
    if mode != "auto":
        return mode == "warm"
    ram = profile.cpu.memory_bytes or 0
    return ram > 0 and disk_bytes <= ram // 2


def _cpu_unit(profile: HardwareProfile) -> ComputeUnit | None:
    return next((u for u in profile.units if u.kind == "cpu"), None)


def _integrated(profile: HardwareProfile, unit: ComputeUnit) -> bool:
    index = int(unit.name.split(":")[1]) if ":" in unit.name else 0
    return any(g.index == index and g.integrated for g in profile.gpus)


def transfer_seconds_per_byte(profile: HardwareProfile, exec_unit: ComputeUnit, home: str, *,
                              warm_disk: bool) -> tuple[float, str]:
    """Seconds per streamed byte from ``home`` to ``exec_unit``, and how it was derived.

    gpu<-cpu: ``links["h2d_pinned"]`` (else pageable; an integrated GPU copies within the shared DRAM at
    half its read+write bandwidth). *<-disk: ``links["disk_read"]`` (cold) or a page-cache copy at half the
    CPU's read+write bandwidth (warm); a GPU reading from disk goes disk -> RAM -> GPU, the two legs in
    series per unit.
    """
    notes = []
    per_byte = 0.0
    if home == "disk":
        cpu = _cpu_unit(profile)
        if warm_disk and cpu is not None and cpu.memory_bandwidth > 0:
            per_byte += 2.0 / cpu.memory_bandwidth
            notes.append("disk via page cache at CPU memory bandwidth / 2")
        else:
            rate = profile.links.get("disk_read")
            if rate is None:
                rate = DEFAULT_DISK_READ
                notes.append(f"disk_read ASSUMED {DEFAULT_DISK_READ / 1e9:.1f} GB/s (profile lists none)")
            else:
                notes.append(f"disk_read {rate / 1e9:.2f} GB/s")
            per_byte += 1.0 / rate
    if exec_unit.kind in ("gpu", "dla"):
        rate = profile.links.get("h2d_pinned") or profile.links.get("h2d_pageable")
        if rate:
            notes.append(f"h2d {rate / 1e9:.1f} GB/s")
        elif _integrated(profile, exec_unit) or exec_unit.kind == "dla":
            rate = exec_unit.memory_bandwidth / 2.0
            notes.append("shared-DRAM copy at memory bandwidth / 2")
        else:
            raise InvalidArgumentError(
                f"profile {profile.name!r} lists no host-to-device link (`links['h2d_pinned']`) for streaming to "
                f"{exec_unit.name}; measure one with `autosurgeon profile` or add it to the profile.")
        per_byte += 1.0 / rate
    return per_byte, "; ".join(notes)


def power_envelope(profile: HardwareProfile) -> tuple[float, float, str]:
    """``(P_idle, P_max, how)`` in watts for the power model: the envelope of the profile's current power
    mode (``hw_power.current_mode``: the mode its rates are for; a profile without ``power_modes`` derives
    it from ``power`` as before modes existed)."""
    mode = current_mode(profile)
    if profile.power_modes:
        how = f"power mode {mode.name!r} {mode.watts:g} W"
    elif mode.name == "TDP":
        how = f"TDP {mode.watts:.0f} W"
    elif mode.name.startswith("ASSUMED"):
        how = f"{mode.name} (profile lists no power figure)"
    else:
        how = f"largest envelope {mode.name!r} {mode.watts:.0f} W"
    idle = (f"idle {IDLE_POWER_FRACTION:.0%}" if mode.idle_watts is None else f"idle {mode.idle:.4g} W")
    return mode.idle, mode.watts, f"{how}, {idle}"


def energy_j(profile: HardwareProfile, latency_s: float, busy_s: float) -> tuple[float, str]:
    """Estimated joules of one step of ``latency_s`` with ``busy_s`` of roofline work (module docstring)."""
    p_idle, p_max, how = power_envelope(profile)
    u = min(1.0, max(0.0, busy_s / latency_s)) if latency_s > 0 else 0.0
    return (p_idle + (p_max - p_idle) * u) * latency_s, f"power model: {how}, utilisation {u:.2f}"


def mean_watts(profile: HardwareProfile, utilisation: float) -> float:
    """Power at ``utilisation`` (for the runtime's energy *estimate* where no counter is readable)."""
    p_idle, p_max, _ = power_envelope(profile)
    return p_idle + (p_max - p_idle) * min(1.0, max(0.0, utilisation))


def compute_dtype(precision: str) -> str:
    """The dtype a leaf's arithmetic runs in under ``precision`` (the rate ``peak_flops`` is asked for).

    Weight-only int8/int4 dequantize to float32 activations; int8-dynamic multiplies int8 x int8; fp8
    looks up ``float8_e4m3fn`` (``peak_flops`` falls back to float32 where the unit lists no rate).
    """
    row = precision_table.TABLE.get(precision)
    return row.compute_dtype if row is not None else precision


def count_ops(model: Any, inputs: dict[str, Any]) -> int:
    """Aten ops one ``model(**inputs)`` dispatches (each one launch in eager mode); works on meta tensors.

    On meta, a data-dependent scalar read (``.item()``) answers True / 1, i.e. the common path (for
    transformers: no packed sequences), so the count follows what a real run of plain inputs dispatches.
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Counter(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
            self.n += 1
            if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
                # A data-dependent check on meta (transformers' packed-sequence test): take the common path.
                return True if args[0].dtype == torch.bool else 1
            return func(*args, **(kwargs or {}))

    counter = _Counter()
    with torch.no_grad(), counter:
        model(**inputs)
    return counter.n


__all__ = [
    "DEFAULT_DISK_READ", "DEFAULT_FETCH_OVERHEAD_S", "DEFAULT_LAUNCH_OVERHEAD_S", "DEFAULT_WATTS_PER_CORE",
    "IDLE_POWER_FRACTION", "BlockChoice", "LeafChoice", "block_stream", "compute_dtype", "count_ops", "default_group",
    "disk_is_warm", "energy_j", "leaf_stream_bytes", "mean_watts", "pipeline_latency", "power_envelope",
    "resolve_blocks", "transfer_seconds_per_byte",
]
