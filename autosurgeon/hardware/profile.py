"""The HardwareProfile data model: what a device is (detected or on paper) and how fast it runs (measured).

Plain frozen dataclasses with a versioned JSON form, so a profile measured today loads next year or fails
with a message that says why. The identifying facts (CPU model, cores, RAM, GPU names and memory) make
the ``fingerprint``; measured numbers do not, so re-measuring one machine keeps its fingerprint.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autosurgeon.errors import InvalidArgumentError
from autosurgeon.hardware.power_modes import PowerDerating, PowerMode, derating_from_dict, mode_from_dict
from autosurgeon.hardware.validate import profile_problems

# v2: power_modes, power_mode and power_derating (v1 files load: their modes derive from `power`).
SCHEMA_VERSION = 2
UNIT_KINDS = ("cpu", "gpu", "dla")
# Keys of HardwareProfile.links, all in bytes/s. Host<->device links are per GPU (each GPU has its own);
# "p2p" is GPU<->GPU (NVLink or PCIe peer), per direction, on profiles with several GPUs.
LINK_KEYS = ("h2d_pinned", "h2d_pageable", "d2h_pinned", "d2h_pageable", "disk_read", "p2p")


class ProfileFormatError(InvalidArgumentError):
    """A profile JSON is malformed, misses fields, or has a schema version this code cannot read."""


def dtype_name(dtype: Any) -> str:
    """Return the profile's key for a dtype: ``torch.bfloat16`` and ``"bfloat16"`` both give ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True, kw_only=True)
class CpuInfo:
    """The host CPU and its memory.

    Attributes:
        model: Marketing name as the OS reports it (``/proc/cpuinfo`` "model name").
        vendor: ``GenuineIntel``, ``AuthenticAMD``, ``ARM`` ...; empty when unknown.
        arch: Machine architecture (``x86_64``, ``aarch64``).
        physical_cores: Cores, not hardware threads; 0 when unknown (paper presets of a GPU alone).
        logical_cores: Hardware threads visible to the OS.
        caches: Bytes of one instance of each cache level: ``l1d``, ``l2``, ``l3`` (L1/L2 are usually per
            core, L3 per socket or complex); ``*_instances`` keys count the instances where known.
        isa: Normalised instruction-set features that matter for kernels (``avx2``, ``avx512f``,
            ``avx512_vnni``, ``avx512_bf16``, ``amx_tile``, ``amx_bf16``, ``amx_int8``, ``neon``, ``sve`` ...).
        memory_bytes: Installed RAM; 0 when unknown.
        max_mhz: Highest core clock the OS reports, if any.
    """

    model: str
    vendor: str = ""
    arch: str = ""
    physical_cores: int = 0
    logical_cores: int = 0
    caches: dict[str, int] = field(default_factory=dict)
    isa: tuple[str, ...] = ()
    memory_bytes: int = 0
    max_mhz: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "caches", {str(k): int(v) for k, v in self.caches.items()})
        object.__setattr__(self, "isa", tuple(sorted(set(self.isa))))
        for name in ("physical_cores", "logical_cores", "memory_bytes"):
            if getattr(self, name) < 0:
                raise InvalidArgumentError(f"`cpu.{name}` must be >= 0, got {getattr(self, name)}.")


@dataclass(frozen=True, kw_only=True)
class GpuInfo:
    """One GPU as NVML and torch describe it; ``None`` marks a fact that could not be read.

    Attributes:
        index: CUDA device index.
        name: Device name (``NVIDIA H100 80GB HBM3``).
        memory_bytes: Total device memory.
        power_limit_w: Enforced power limit now (NVML), watts.
        default_power_limit_w: Default limit (the board's TDP/TGP as shipped), watts.
        max_sm_clock_mhz / max_mem_clock_mhz: Highest clocks NVML reports.
        pcie_gen / pcie_width: Maximum PCIe generation and lane count of the link.
        energy_counter: Whether NVML's total-energy counter reads on this GPU (``None``: unknown).
        sm_count: Streaming multiprocessors (torch).
        compute_capability: ``"major.minor"`` (torch).
        integrated: Whether the GPU shares DRAM with the CPU (Jetson).
    """

    index: int
    name: str
    memory_bytes: int
    power_limit_w: float | None = None
    default_power_limit_w: float | None = None
    max_sm_clock_mhz: int | None = None
    max_mem_clock_mhz: int | None = None
    pcie_gen: int | None = None
    pcie_width: int | None = None
    energy_counter: bool | None = None
    sm_count: int | None = None
    compute_capability: str | None = None
    integrated: bool = False


@dataclass(frozen=True, kw_only=True)
class ComputeUnit:
    """A place that runs kernels: the CPU, one GPU, one DLA.

    Attributes:
        name: ``"cpu"``, ``"cuda:0"``, ``"dla:0"``.
        kind: ``"cpu"``, ``"gpu"`` or ``"dla"``.
        memory_bytes: Memory this unit computes from (RAM for the CPU, device memory for a GPU; on
            shared-memory boards the shared DRAM).
        memory_bandwidth: Bytes/s of that memory (copy test: read + write bytes over time).
        gemm_flops: Dtype name -> dense GEMM ops/s (``float32``, ``bfloat16``, ``float16``, ``int8`` ...).
        measured: True when the numbers were measured on this machine, False when taken from paper.
        cores: Parallel lanes a scheduler can fill: physical cores (CPU), SMs (GPU), 1 (DLA); 0 unknown.
    """

    name: str
    kind: str
    memory_bytes: int
    memory_bandwidth: float
    gemm_flops: dict[str, float] = field(default_factory=dict)
    measured: bool = False
    cores: int = 0

    def __post_init__(self) -> None:
        if self.kind not in UNIT_KINDS:
            raise InvalidArgumentError(
                f"`unit.kind` must be one of {UNIT_KINDS}, got {self.kind!r} (unit {self.name!r})."
            )
        object.__setattr__(self, "gemm_flops", {dtype_name(k): float(v) for k, v in self.gemm_flops.items()})

    def peak_flops(self, dtype: str | Any) -> float:
        """Dense GEMM ops/s for ``dtype``.

        Falls back to the float32 rate when this unit has no entry for ``dtype`` (a kernel in an
        unlisted dtype is assumed to run no faster than float32), and to 0.0 when float32 is missing too.
        """
        rates = self.gemm_flops
        return rates.get(dtype_name(dtype), rates.get("float32", 0.0))


@dataclass(frozen=True, kw_only=True)
class HardwareProfile:
    """A device, detected and measured (``measured=True``) or on paper (a preset, ``measured=False``).

    Attributes:
        schema_version: Version of the JSON layout (see ``SCHEMA_VERSION``).
        name: ``"local"`` or the preset's name.
        measured: Whether the numbers were measured here; ``links`` share this flag, units carry their own.
        cpu: Host CPU and RAM.
        gpus: NVIDIA GPUs, in CUDA index order.
        units: Compute units, CPU first on measured profiles.
        links: Transfer bandwidths in bytes/s (keys in ``LINK_KEYS``); a missing key means not available.
        power: Power envelopes in watts by mode (``"tdp"``, ``"cuda:0 enforced limit"``, ``"nvpmodel 30W"`` ...).
        power_modes: The modes the device can run in, with how its rates scale in each
            (``autosurgeon.hardware.power_modes.PowerMode``); empty: one mode derived from ``power``.
        power_mode: Name of the mode the ``units``' rates are for (None: the reference mode, whose factors
            are all 1). ``at_power_cap`` returns a copy in another mode.
        power_derating: Model for power limits below a mode's watts (GPUs), or None.
        board: Board name for embedded systems (``"NVIDIA Jetson AGX Orin ..."``), else ``None``.
        method: How the numbers were measured (repeats, statistic, sizes, threads, page cache ...).
        sources: For paper figures: field -> datasheet citation.
        notes: Caveats a reader should see (an omitted dtype, a page cache that could not be dropped).
        dispatch: Per GPU unit (``"cuda:0"``) what an eager step pays besides its work, measured
            (``autosurgeon.hardware.dispatch``: per-op launch, per-step fixed cost, each linear format's per-call
            floor); empty on paper profiles, whose analytic pricing keeps the documented launch default.
    """

    schema_version: int = SCHEMA_VERSION
    name: str
    measured: bool
    cpu: CpuInfo
    gpus: tuple[GpuInfo, ...] = ()
    units: tuple[ComputeUnit, ...] = ()
    links: dict[str, float] = field(default_factory=dict)
    power: dict[str, float] = field(default_factory=dict)
    power_modes: tuple[PowerMode, ...] = ()
    power_mode: str | None = None
    power_derating: PowerDerating | None = None
    board: str | None = None
    method: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    dispatch: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "gpus", tuple(self.gpus))
        object.__setattr__(self, "units", tuple(self.units))
        object.__setattr__(self, "notes", tuple(self.notes))
        object.__setattr__(self, "links", {str(k): float(v) for k, v in self.links.items()})
        object.__setattr__(self, "power", {str(k): float(v) for k, v in self.power.items()})
        object.__setattr__(self, "method", dict(self.method))
        object.__setattr__(self, "sources", dict(self.sources))
        object.__setattr__(self, "dispatch", dict(self.dispatch))
        if not self.units:
            raise InvalidArgumentError(f"profile {self.name!r} has no compute units; give at least one in `units`.")
        names = [u.name for u in self.units]
        if len(set(names)) != len(names):
            raise InvalidArgumentError(f"profile {self.name!r} repeats a unit name: {names}.")
        unknown = sorted(set(self.links) - set(LINK_KEYS))
        if unknown:
            raise InvalidArgumentError(
                f"profile {self.name!r} has unknown `links` keys {unknown}; allowed: {LINK_KEYS}."
            )
        self._check_power_modes()

    def _check_power_modes(self) -> None:
        modes = tuple(m if isinstance(m, PowerMode) else mode_from_dict(m) for m in self.power_modes)
        object.__setattr__(self, "power_modes", modes)
        if isinstance(self.power_derating, Mapping):
            object.__setattr__(self, "power_derating", derating_from_dict(self.power_derating))
        names = [m.name for m in modes]
        if len(set(names)) != len(names):
            raise InvalidArgumentError(f"profile {self.name!r} repeats a power mode name: {names}.")
        if self.power_mode is not None and self.power_mode not in names:
            raise InvalidArgumentError(f"profile {self.name!r}: `power_mode` {self.power_mode!r} is not one of its "
                                       f"`power_modes` {names}.")
        if self.power_derating is not None and self.power_derating.mode not in names:
            raise InvalidArgumentError(f"profile {self.name!r}: `power_derating.mode` {self.power_derating.mode!r} "
                                       f"is not one of its `power_modes` {names}.")

    # Equality compares every field; the hash uses only the identifying facts, which equal profiles share.
    def __hash__(self) -> int:
        return hash(self.fingerprint)

    @property
    def fingerprint(self) -> str:
        """Short stable hash of the identifying hardware facts, not of the measured numbers.

        RAM is rounded to whole GiB so that kernels reserving slightly different amounts agree.
        """
        return fingerprint_of(self.cpu, self.gpus, self.board)

    def default_unit(self) -> ComputeUnit:
        """The unit work goes to by default: the first GPU if any, else the CPU (else the first unit)."""
        for kind in ("gpu", "cpu"):
            for unit in self.units:
                if unit.kind == kind:
                    return unit
        return self.units[0]

    def unit(self, name: str) -> ComputeUnit:
        """Return the unit called ``name`` (``"cpu"``, ``"cuda:0"``, ``"dla:0"``); ``"cuda"`` means ``"cuda:0"``."""
        wanted = "cuda:0" if name == "cuda" else name
        for unit in self.units:
            if unit.name == wanted:
                return unit
        raise InvalidArgumentError(
            f"`unit` {name!r} is not in profile {self.name!r}; its units are {[u.name for u in self.units]}."
        )

    def at_power_cap(self, watts: float) -> HardwareProfile:
        """This profile in the fastest mode whose envelope fits ``watts`` (``autosurgeon.hardware.power_cap.at_power_cap``)."""
        from autosurgeon.hardware.power_cap import at_power_cap  # lazy: import cycle (power_cap imports profile)

        return at_power_cap(self, watts)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        return dataclasses.asdict(self)

    def to_json(self, *, indent: int | None = 2) -> str:
        """Versioned JSON text; ``from_json`` reads it back to an equal profile."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, origin: str = "profile") -> HardwareProfile:
        """Build a profile from its dict form, checking the schema version and required fields.

        Args:
            data: The parsed JSON object.
            origin: Where the data came from, named in error messages (a path or preset name).

        Raises:
            ProfileFormatError: Unknown or newer ``schema_version``, a missing field, or a field of the wrong type.
        """
        if not isinstance(data, Mapping):
            raise ProfileFormatError(f"{origin}: a hardware profile must be a JSON object, got {type(data).__name__}.")
        version = data.get("schema_version")
        if version is None:
            raise ProfileFormatError(f"{origin}: missing `schema_version`; this code reads version {SCHEMA_VERSION}.")
        if not isinstance(version, int) or version < 1:
            raise ProfileFormatError(f"{origin}: `schema_version` must be a positive integer, got {version!r}.")
        if version > SCHEMA_VERSION:
            raise ProfileFormatError(
                f"{origin}: `schema_version` {version} is newer than this code reads ({SCHEMA_VERSION}); "
                "upgrade autosurgeon or re-create the profile with `autosurgeon profile`."
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ProfileFormatError(f"{origin}: unknown field(s) {unknown}; known: {sorted(known)}.")
        try:
            profile = cls(
                schema_version=version,
                name=_required(data, "name", origin),
                measured=bool(_required(data, "measured", origin)),
                cpu=_build(CpuInfo, _required(data, "cpu", origin), f"{origin}: cpu"),
                gpus=tuple(_build(GpuInfo, g, f"{origin}: gpus[{i}]") for i, g in enumerate(data.get("gpus", ()))),
                units=tuple(
                    _build(ComputeUnit, u, f"{origin}: units[{i}]")
                    for i, u in enumerate(_required(data, "units", origin))
                ),
                links=dict(data.get("links", {})),
                power=dict(data.get("power", {})),
                power_modes=tuple(_build(PowerMode, m, f"{origin}: power_modes[{i}]")
                                  for i, m in enumerate(data.get("power_modes", ()))),
                power_mode=data.get("power_mode"),
                power_derating=(None if data.get("power_derating") is None else
                                _build(PowerDerating, data["power_derating"], f"{origin}: power_derating")),
                board=data.get("board"),
                method=dict(data.get("method", {})),
                sources=dict(data.get("sources", {})),
                notes=tuple(data.get("notes", ())),
                dispatch=dict(data.get("dispatch", {})),
            )
        except ProfileFormatError:
            raise
        except (InvalidArgumentError, TypeError, ValueError, AttributeError) as exc:
            raise ProfileFormatError(f"{origin}: invalid hardware profile: {exc}") from exc

        problems = profile_problems(profile)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ProfileFormatError(f"{origin}: {problems[0]}{more}; fix the profile or re-create it with "
                                     "`autosurgeon profile`.")
        return profile

    @classmethod
    def from_json(cls, text: str, *, origin: str = "profile") -> HardwareProfile:
        """Parse ``to_json`` output (see ``from_dict`` for the checks and errors)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProfileFormatError(f"{origin}: not valid JSON ({exc}).") from exc
        except RecursionError:
            raise ProfileFormatError(f"{origin}: JSON nested too deeply to be a hardware profile.") from None
        return cls.from_dict(data, origin=origin)


def fingerprint_of(cpu: CpuInfo, gpus: tuple[GpuInfo, ...], board: str | None) -> str:
    """The fingerprint of a machine from its detected facts alone (see ``HardwareProfile.fingerprint``).

    Lets the cache find a machine's profile before anything is measured.
    """
    facts = {
        "cpu": [cpu.model, cpu.arch, cpu.physical_cores, cpu.logical_cores],
        "ram_gib": round(cpu.memory_bytes / 2**30),
        "gpus": [[g.name, round(g.memory_bytes / 2**30)] for g in gpus],
        "board": board,
    }
    blob = json.dumps(facts, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _required(data: Mapping[str, Any], key: str, origin: str) -> Any:
    if key not in data:
        raise ProfileFormatError(f"{origin}: missing required field `{key}`.")
    return data[key]


def _build(cls: type, data: Any, origin: str) -> Any:
    """Construct a nested dataclass, naming missing and unknown fields instead of a bare TypeError."""
    if not isinstance(data, Mapping):
        raise ProfileFormatError(f"{origin}: expected a JSON object, got {type(data).__name__}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ProfileFormatError(f"{origin}: unknown field(s) {unknown}; known: {sorted(fields)}.")
    missing = [
        name
        for name, f in fields.items()
        if name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ProfileFormatError(f"{origin}: missing required field(s) {missing}.")
    kwargs = dict(data)
    if cls is CpuInfo and "isa" in kwargs:
        kwargs["isa"] = tuple(kwargs["isa"])
    if cls is PowerDerating and "kinds" in kwargs:
        kwargs["kinds"] = tuple(kwargs["kinds"])
    return cls(**kwargs)
