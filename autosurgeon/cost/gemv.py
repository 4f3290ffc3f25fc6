"""Decode-shaped (GEMV) rates per format x kernel x shape, measured robustly and cached with a spot check.

A decode step multiplies ``batch x 1`` tokens by each weight: a GEMV, bound on small models by kernel and
dispatch work rather than by bytes at a bandwidth roofline (on this project's 2-core CPU int4 weight-only is
SLOWER than float32 for such GEMVs: /work/shared/ANCHORS.md). So the analytic cost model prices a linear leaf at
decode with the measured seconds of its format and kernel AT ITS OWN SHAPE (``GemvTable.seconds``), and the
per-op dispatch cost of the rest of the step is measured apart (``measure_launch``).

Measure what will run, found by instrumenting tiny-llama (a zoo model: per leaf, the v1 table against the same
leaf inside a real pass, and uniform plans on the runtime in interleaved rounds):
* an entry is the module the runtime calls: for kernel "auto" the ``QuantizedLinear`` with no kernel named, which
  resolves the runtime's per-device default on every call — v1 took "auto" as the fastest named kernel (int8
  256x256 at load ~2: cpu-avx2 named 41 us, the same kernel as the runtime runs it 122 us; the difference is the
  default's per-call resolution in ``QuantizedLinear.forward``);
* each call reads its weights as a pass does, from beyond L2: an entry rotates through copies of the layer
  totalling ``cold_bytes`` (at most ``MAX_COPIES``; a layer alone in a loop reads hot from L2 — up to 3x faster
  for float32 there);
* the aten ops one call dispatches are counted (``ops``), so the step's op count is not charged twice;
* a kernel that packs its weight (fbgemm's int8-dynamic, torch's int4 pack) has its packing timed too
  (``prepare_s``: a call after ``release_prepared`` minus a warm call): a streamed layer gets new tensors on every
  use and packs again each step. Priced before as the packed bytes read and written once at memory bandwidth, it
  was 50-100x low (tiny-llama's 256x256 int8-dynamic, 1 thread, load 4.7: prepack 636 us against ~13 us priced),
  a main reason random plans (streamed quantized layers with named kernels) were priced 20-50 % low;
* the per-op cost is that of a small eager block at decode widths (``_OpMix``: norm, views, rotary-like
  slicing, softmax attention over a short cache, activation, residual) over its op count — v1 timed ``x + 1``
  on 8 floats, the cheapest op torch has, and priced a real step's ops ~2x low.

Timing (MEASURING.md): on the process CPU clock (``time.process_time``: the work done, which other tenants of a
shared machine stretch far less than wall time; the entries run on the calling thread, ``threads`` as the
runtime uses), every (format, kernel, shape) entry is timed in interleaved rounds (each round visits the
entries in a rotated order), the figure is the median over rounds with its IQR/median; an entry above
``NOISY`` dispersion is re-measured once and, if it stays, labelled ``noisy``. Tables are keyed by device
fingerprint + torch version + threads, carry the load average they were taken under, and on load a cheap spot
check re-times one entry: a table whose spot check disagrees by more than ``STALE`` (or that is mostly noisy)
is re-measured instead of trusted. Writes are atomic with unique temp names, merging the entries on disk, so two
processes never overwrite each other's work with a partial file.
"""
from __future__ import annotations

import copy
import json
import os
import statistics
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autosurgeon._logging import get_logger
from autosurgeon.cost.base import count_ops
from autosurgeon.cost.profiled import variant
from autosurgeon.cost.profiled_trust import tables_as_is
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.models.cache import cache_root
from runtime.kernels import available_kernels
from runtime.kernels.linear import QuantizedLinear

logger = get_logger(__name__)

NOISY = 0.15  # IQR/median above which an entry is re-measured, then labelled noisy
STALE = 0.5  # spot check off by more than this fraction: the table is re-measured
VERSION = 3  # v2: "auto" entries as the runtime runs them, cold-cache rotation, op counts, op-mix launch;
# v3: a packing kernel's prepare cost per entry (``prepare_s``)
# Cap on the layer copies an entry rotates through: bounds a table's first measurement (every copy is called each
# round); 16 copies of a layer of >= 64 KiB already exceed a 1 MiB L2 (tiny-llama's 29 linears: rotating 4 MiB
# and 16 MiB priced them alike within that run's noise, 1.9-2.6 vs 2.3-2.8 ms).
MAX_COPIES = 16
GROUP = 8  # entries measured (and held in memory) together, interleaved
FLOATS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def entry_key(precision: str, kernel: str, in_features: int, out_features: int, batch: int) -> str:
    return f"{precision}|{kernel}|{in_features}x{out_features}|b{batch}"


def _module(precision: str, kernel: str, in_f: int, out_f: int, group_size: int) -> nn.Module:

    torch.manual_seed(0)
    return variant(nn.Linear(in_f, out_f), precision, group_size, kernel).eval()


def kernels_for(precision: str) -> list[str]:
    """Kernel names that run ``precision`` here: "auto" (the runtime's default, as it runs it) and, for weight-only
    formats, every named CPU kernel of the runtime."""
    if precision in FLOATS or precision == "int8-dynamic":
        return ["auto"]

    return ["auto"] + [k for k in available_kernels(precision, "cpu") if k != "int8-dynamic"]


def _ops(module: nn.Module, x: torch.Tensor) -> int:
    """Aten ops one call of ``module`` dispatches (``cost.base.count_ops``)."""
    return count_ops(lambda x: module(x), {"x": x})


@torch.no_grad()
def measure_entries(specs: Sequence[tuple[str, str, int, int]], *, batch: int = 1, rounds: int = 7,
                    calls: int = 10, group_size: int = 32, cold_bytes: int = 0) -> dict[str, dict[str, Any]]:
    """Time each ``(precision, kernel, in, out)`` GEMV in interleaved rounds; median + IQR/median per entry.

    ``cold_bytes`` > 0: each entry rotates through copies of its layer totalling at least that many bytes (at most
    ``MAX_COPIES``), so every call reads its weights from beyond the caches that size covers, as in a pass.
    """
    if rounds < 3:
        raise InvalidArgumentError(f"`rounds` must be >= 3 (an IQR needs them), got {rounds}.")
    if cold_bytes < 0:
        raise InvalidArgumentError(f"`cold_bytes` must be >= 0, got {cold_bytes}.")
    out: dict[str, dict[str, Any]] = {}
    for start in range(0, len(specs), GROUP):  # a group's copies at a time (memory), its entries interleaved
        out.update(_measure_group(specs[start:start + GROUP], batch, rounds, calls, group_size, cold_bytes))
    return out


def _measure_group(specs: Sequence[tuple[str, str, int, int]], batch: int, rounds: int, calls: int,
                   group_size: int, cold_bytes: int) -> dict[str, dict[str, Any]]:
    prepared = []
    for precision, kernel, in_f, out_f in specs:
        g = group_size if in_f % group_size == 0 else 32
        module = _module(precision, kernel, in_f, out_f, g)
        x = torch.randn(1, batch, in_f)  # (1, rows, in): batch x 1 at decode, the prompt's tokens otherwise
        nbytes = max(1, sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()]))
        copies = [module] + [copy.deepcopy(module) for _ in range(min(MAX_COPIES, -(-cold_bytes // nbytes)) - 1)]
        for m in copies:
            for _ in range(3 if m is module else 1):  # warm: the first call of a shape can select or pack
                m(x)
        prepared.append((entry_key(precision, kernel, in_f, out_f, batch), copies, x, _ops(module, x)))
    samples: dict[str, list[float]] = {k: [] for k, _, _, _ in prepared}
    for r in range(rounds):
        shift = r % max(1, len(prepared))
        for key, copies, x, _ in prepared[shift:] + prepared[:shift]:
            n = max(calls, len(copies))  # every copy once per round at least
            t0 = time.process_time()
            for i in range(n):
                copies[i % len(copies)](x)
            samples[key].append((time.process_time() - t0) / n)
    out = {}
    for (key, copies, x, ops) in prepared:
        values = samples[key]
        q = statistics.quantiles(values, n=4)
        median = statistics.median(values)
        out[key] = {"median_s": median, "dispersion": (q[2] - q[0]) / median if median > 0 else 0.0,
                    "rounds": rounds, "calls": calls, "copies": len(copies), "ops": ops}
        prepare = prepare_seconds(copies[0], x, rounds=rounds)
        if prepare is not None:
            out[key]["prepare_s"] = prepare
    return out


def prepare_seconds(module: nn.Module, x: torch.Tensor, *, rounds: int) -> float | None:
    """Seconds a packing kernel spends building its packed copy (a call after ``release_prepared`` minus a warm
    call, medians over ``rounds``); None when ``module`` runs no packing kernel."""
    if not isinstance(module, QuantizedLinear) or module.resolve_kernel(x.device).prepare is None:
        return None
    cold, warm = [], []
    for _ in range(rounds):
        module.release_prepared()
        t0 = time.process_time()
        module(x)
        t1 = time.process_time()
        module(x)
        cold.append(t1 - t0)
        warm.append(time.process_time() - t1)
    return max(0.0, statistics.median(cold) - statistics.median(warm))


class _Norm(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


class _Attention(nn.Module):
    """Single-token attention over a short cache, without projections (those are GEMV entries)."""

    def __init__(self, heads: int, head_dim: int, cached: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.k = torch.randn(1, heads, cached, head_dim)
        self.v = torch.randn(1, heads, cached, head_dim)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        b, t, _ = q.shape
        q = q.view(b, t, self.heads, self.head_dim).transpose(1, 2)  # (B, nh, 1, hs)
        half = self.head_dim // 2
        q = torch.cat((-q[..., half:], q[..., :half]), dim=-1) * 0.5 + q * 0.5  # rotary-like
        k, v = torch.cat((self.k, q), dim=2), torch.cat((self.v, q), dim=2)
        att = torch.softmax((q @ k.transpose(-2, -1)) * self.head_dim ** -0.5, dim=-1)
        return (att @ v).transpose(1, 2).reshape(b, t, -1)


class _OpMix(nn.Module):
    """A decoder block's non-GEMV work at decode widths: what every step dispatches besides its linears."""

    def __init__(self, width: int = 64, heads: int = 4, cached: int = 32, layers: int = 2) -> None:
        super().__init__()
        self.norms = nn.ModuleList(_Norm(width) for _ in range(2 * layers))
        self.attn = nn.ModuleList(_Attention(heads, width // heads, cached) for _ in range(layers))
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, attn in enumerate(self.attn):
            x = x + attn(self.norms[2 * i](x))
            h = self.norms[2 * i + 1](x)
            x = x + self.act(h) * h
        return x


@torch.no_grad()
def measure_launch(*, rounds: int = 7, calls: int = 50) -> dict[str, Any]:
    """Seconds per aten op of eager decode work besides the GEMVs (``_OpMix``: its time over its op count)."""
    torch.manual_seed(0)
    mix, x = _OpMix().eval(), torch.randn(1, 1, 64)
    ops = count_ops(lambda x: mix(x), {"x": x})
    for _ in range(3):
        mix(x)
    values = []
    for _ in range(rounds):
        t0 = time.process_time()
        for _ in range(calls):
            mix(x)
        values.append((time.process_time() - t0) / calls / ops)
    q = statistics.quantiles(values, n=4)
    median = statistics.median(values)
    return {"median_s": median, "dispersion": (q[2] - q[0]) / median, "rounds": rounds, "calls": calls,
            "ops": ops, "method": "_OpMix (2 norm/attention/activation blocks, width 64, 32 cached) / its ops"}


@dataclass
class GemvTable:
    """Measured GEMV seconds per entry (``entry_key``) on one machine, torch and thread count."""

    device: str
    torch_version: str
    threads: int
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    launch: dict[str, Any] = field(default_factory=dict)
    load_average: list[float] = field(default_factory=list)
    measured_at: str = ""
    cold_bytes: int = 0  # bytes of layer copies each entry rotated through (``measure_entries``)

    @property
    def launch_s(self) -> float:
        return float(self.launch.get("median_s", 0.0))

    def noisy_share(self) -> float:
        if not self.entries:
            return 0.0
        return sum(bool(e.get("noisy")) for e in self.entries.values()) / len(self.entries)

    def _entry(self, precision: str, kernel: str, in_features: int, out_features: int, batch: int) -> dict[str, Any]:
        kernel = "auto" if precision in FLOATS or precision == "int8-dynamic" else kernel
        key = entry_key(precision, kernel, in_features, out_features, batch)
        if key not in self.entries:
            raise KeyError(key)
        return self.entries[key]

    def seconds(self, precision: str, kernel: str, in_features: int, out_features: int, batch: int = 1) -> float:
        """Measured seconds of one call of the layer as the runtime runs it (kernel "auto": the runtime's default
        kernel, resolved per call as the runtime does; not the fastest named kernel). KeyError if not measured."""
        return float(self._entry(precision, kernel, in_features, out_features, batch)["median_s"])

    def prepare_seconds(self, precision: str, kernel: str, in_features: int, out_features: int,
                        batch: int = 1) -> float | None:
        """Measured seconds the entry's kernel spends packing its weight (paid again on every use of a streamed
        layer); None for a kernel that does not pack. KeyError if the entry was not measured."""
        value = self._entry(precision, kernel, in_features, out_features, batch).get("prepare_s")
        return None if value is None else float(value)

    def ops(self, precision: str, kernel: str, in_features: int, out_features: int, batch: int = 1) -> int | None:
        """Aten ops one call dispatches (None in an entry that did not count them)."""
        ops = self._entry(precision, kernel, in_features, out_features, batch).get("ops")
        return None if ops is None else int(ops)

    def to_json(self) -> str:
        return json.dumps({"_type": "GemvTable", "_version": VERSION,
                           "_data": {"device": self.device, "torch": self.torch_version, "threads": self.threads,
                                     "entries": self.entries, "launch": self.launch,
                                     "load_average": self.load_average, "measured_at": self.measured_at,
                                     "cold_bytes": self.cold_bytes}},
                          indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> GemvTable:
        obj = json.loads(text)
        if obj.get("_type") != "GemvTable" or obj.get("_version") != VERSION:
            raise InvalidArgumentError(f"not a GemvTable v{VERSION} file (got {obj.get('_type')} "
                                       f"v{obj.get('_version')}); delete it and it is re-measured.")
        d = obj["_data"]
        return cls(device=d["device"], torch_version=d["torch"], threads=int(d["threads"]), entries=d["entries"],
                   launch=d["launch"], load_average=list(d.get("load_average", [])),
                   measured_at=d.get("measured_at", ""), cold_bytes=int(d.get("cold_bytes", 0)))


def table_path(device: str, threads: int, cache_dir: str | os.PathLike[str] | None = None) -> Path:

    torch_tag = torch.__version__.replace("+", "_")
    return cache_root(cache_dir) / "gemv" / f"{device}-torch{torch_tag}-t{threads}.json"


def _measure_robust(specs: Sequence[tuple[str, str, int, int]], batch: int,
                    cold_bytes: int) -> dict[str, dict[str, Any]]:
    found = measure_entries(specs, batch=batch, cold_bytes=cold_bytes)
    again = [s for s in specs if found[entry_key(*s, batch)]["dispersion"] > NOISY]
    if again:
        logger.info("re-measuring %d noisy GEMV entries", len(again))
        second = measure_entries(again, batch=batch, cold_bytes=cold_bytes)
        for s in again:
            key = entry_key(*s, batch)
            best = min((found[key], second[key]), key=lambda e: e["dispersion"])
            found[key] = {**best, "noisy": best["dispersion"] > NOISY, "remeasured": True}
    return found


def _write_merged(path: Path, table: GemvTable) -> None:
    """Merge with what is on disk now, then replace atomically (unique temp name per writer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        try:
            disk = GemvTable.from_json(path.read_text())
            if disk.cold_bytes == table.cold_bytes:  # entries taken another way are replaced, not merged
                for key, entry in disk.entries.items():
                    table.entries.setdefault(key, entry)
        except (OSError, ValueError, KeyError, InvalidArgumentError):
            pass  # an unreadable file is replaced
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(table.to_json())
    os.replace(tmp, path)


def gemv_table(device: str, shapes: Iterable[tuple[int, int]], precisions: Iterable[str], *, batch: int = 1,
               threads: int | None = None, cache_dir: str | os.PathLike[str] | None = None,
               use_cache: bool = True, cold_bytes: int = 0) -> GemvTable:
    """The GEMV table for these shapes and precisions on this machine: from the cache after a spot check, the
    missing entries measured (module docstring). ``device`` is the profile fingerprint (keys the file);
    ``cold_bytes`` the bytes each entry rotates through (a table taken with another figure is re-measured)."""
    threads = threads or torch.get_num_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        specs = sorted({(p, k, i, o) for p in precisions for k in kernels_for(p) for i, o in shapes})
        path = table_path(device, threads, cache_dir)
        table = None
        if use_cache and path.is_file():
            try:
                table = GemvTable.from_json(path.read_text())
            except (OSError, ValueError, KeyError, InvalidArgumentError) as exc:
                logger.warning("GEMV table %s unreadable (%s): re-measuring", path, exc)
        if (table is not None and table.torch_version == torch.__version__ and table.entries
                and table.cold_bytes == cold_bytes):
            # A sweep's Dask workers (``cached_tables_as_is``) take the coordinator's table as it is.
            table = table if tables_as_is() else _spot_check(table, specs, batch)
        else:
            table = None
        if table is None:
            table = GemvTable(device=device, torch_version=torch.__version__, threads=threads, cold_bytes=cold_bytes)
        missing = [s for s in specs if entry_key(*s, batch) not in table.entries]
        if missing or not table.launch:
            table.load_average = list(os.getloadavg())
            table.measured_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            if missing:
                table.entries.update(_measure_robust(missing, batch, cold_bytes))
            table.launch = measure_launch()
            if use_cache:
                _write_merged(path, table)
        return table
    finally:
        torch.set_num_threads(previous)


def _spot_check(table: GemvTable, specs: Sequence[tuple[str, str, int, int]], batch: int) -> GemvTable | None:
    """Re-time the largest float32 entry cheaply; None (re-measure all) when it is off by > STALE or the table
    is mostly noisy."""
    if table.noisy_share() > 0.5:
        logger.info("GEMV table mostly noisy: re-measuring")
        return None
    cached = [s for s in specs if s[0] == "float32" and entry_key(*s, batch) in table.entries]
    if not cached:
        return table
    spec = max(cached, key=lambda s: s[2] * s[3])
    now = measure_entries([spec], batch=batch, rounds=3, calls=5,
                          cold_bytes=table.cold_bytes)[entry_key(*spec, batch)]["median_s"]
    then = table.entries[entry_key(*spec, batch)]["median_s"]
    if abs(now / then - 1.0) > STALE:
        logger.info("GEMV spot check %.1f us vs cached %.1f us: stale, re-measuring", now * 1e6, then * 1e6)
        return None
    return table
