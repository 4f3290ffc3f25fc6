"""Decode-shaped (GEMV) rates per format x kernel x shape, measured robustly and cached with a spot check.

A decode step multiplies ``batch x 1`` tokens by each weight: a GEMV, bound on small models by kernel and
dispatch work rather than by bytes at a bandwidth roofline (on this project's 2-core CPU int4 weight-only is
SLOWER than float32 for such GEMVs: /work/shared/ANCHORS.md). So the analytic cost model prices a linear leaf at
decode with the measured seconds of its format and kernel AT ITS OWN SHAPE (``GemvTable.seconds``), and the
per-op launch cost is measured apart (a tiny elementwise op), as is nothing else.

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
from autosurgeon.cost.profiled import variant
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.models.cache import cache_root
from runtime.kernels import available_kernels

logger = get_logger(__name__)

NOISY = 0.15  # IQR/median above which an entry is re-measured, then labelled noisy
STALE = 0.5  # spot check off by more than this fraction: the table is re-measured
VERSION = 1
FLOATS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def entry_key(precision: str, kernel: str, in_features: int, out_features: int, batch: int) -> str:
    return f"{precision}|{kernel}|{in_features}x{out_features}|b{batch}"


def _module(precision: str, kernel: str, in_f: int, out_f: int, group_size: int) -> nn.Module:

    torch.manual_seed(0)
    return variant(nn.Linear(in_f, out_f), precision, group_size, kernel).eval()


def kernels_for(precision: str) -> list[str]:
    """Kernel names that run ``precision`` here ("auto" for floats; the runtime's CPU kernels otherwise)."""
    if precision in FLOATS or precision == "int8-dynamic":
        return ["auto"]

    return [k for k in available_kernels(precision, "cpu") if k != "int8-dynamic"]


@torch.no_grad()
def measure_entries(specs: Sequence[tuple[str, str, int, int]], *, batch: int = 1, rounds: int = 7,
                    calls: int = 10, group_size: int = 32) -> dict[str, dict[str, Any]]:
    """Time each ``(precision, kernel, in, out)`` GEMV in interleaved rounds; median + IQR/median per entry."""
    if rounds < 3:
        raise InvalidArgumentError(f"`rounds` must be >= 3 (an IQR needs them), got {rounds}.")
    prepared = []
    for precision, kernel, in_f, out_f in specs:
        g = group_size if in_f % group_size == 0 else 32
        module = _module(precision, kernel, in_f, out_f, g)
        x = torch.randn(1, batch, in_f)  # (1, rows, in): batch x 1 at decode, the prompt's tokens otherwise
        for _ in range(3):  # warm: the first call of a shape can select or pack
            module(x)
        prepared.append((entry_key(precision, kernel, in_f, out_f, batch), module, x))
    samples: dict[str, list[float]] = {k: [] for k, _, _ in prepared}
    for r in range(rounds):
        shift = r % max(1, len(prepared))
        for key, module, x in prepared[shift:] + prepared[:shift]:
            t0 = time.process_time()
            for _ in range(calls):
                module(x)
            samples[key].append((time.process_time() - t0) / calls)
    out = {}
    for key, values in samples.items():
        q = statistics.quantiles(values, n=4)
        median = statistics.median(values)
        out[key] = {"median_s": median, "dispersion": (q[2] - q[0]) / median if median > 0 else 0.0,
                    "rounds": rounds, "calls": calls}
    return out


def measure_launch(*, rounds: int = 7, calls: int = 200) -> dict[str, Any]:
    """Seconds of one tiny eager op (``x + 1`` on 8 floats): the per-op dispatch cost."""
    x = torch.zeros(8)
    values = []
    for _ in range(3):
        x + 1
    for _ in range(rounds):
        t0 = time.process_time()
        for _ in range(calls):
            x + 1
        values.append((time.process_time() - t0) / calls)
    q = statistics.quantiles(values, n=4)
    median = statistics.median(values)
    return {"median_s": median, "dispersion": (q[2] - q[0]) / median, "rounds": rounds, "calls": calls}


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

    @property
    def launch_s(self) -> float:
        return float(self.launch.get("median_s", 0.0))

    def noisy_share(self) -> float:
        if not self.entries:
            return 0.0
        return sum(bool(e.get("noisy")) for e in self.entries.values()) / len(self.entries)

    def seconds(self, precision: str, kernel: str, in_features: int, out_features: int, batch: int = 1) -> float:
        """Measured seconds of one GEMV; kernel "auto" is the fastest kernel measured for the format (what the
        runtime's per-shape selection picks)."""
        kernels = kernels_for(precision) if kernel == "auto" or precision in FLOATS else [kernel]
        found = [self.entries[k]["median_s"] for k in
                 (entry_key(precision, kn, in_features, out_features, batch) for kn in kernels) if k in self.entries]
        if not found:
            raise KeyError(entry_key(precision, kernel, in_features, out_features, batch))
        return min(found)

    def to_json(self) -> str:
        return json.dumps({"_type": "GemvTable", "_version": VERSION,
                           "_data": {"device": self.device, "torch": self.torch_version, "threads": self.threads,
                                     "entries": self.entries, "launch": self.launch,
                                     "load_average": self.load_average, "measured_at": self.measured_at}},
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
                   measured_at=d.get("measured_at", ""))


def table_path(device: str, threads: int, cache_dir: str | os.PathLike[str] | None = None) -> Path:

    torch_tag = torch.__version__.replace("+", "_")
    return cache_root(cache_dir) / "gemv" / f"{device}-torch{torch_tag}-t{threads}.json"


def _measure_robust(specs: Sequence[tuple[str, str, int, int]], batch: int) -> dict[str, dict[str, Any]]:
    found = measure_entries(specs, batch=batch)
    again = [s for s in specs if found[entry_key(*s, batch)]["dispersion"] > NOISY]
    if again:
        logger.info("re-measuring %d noisy GEMV entries", len(again))
        second = measure_entries(again, batch=batch)
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
            for key, entry in disk.entries.items():
                table.entries.setdefault(key, entry)
        except (OSError, ValueError, KeyError, InvalidArgumentError):
            pass  # an unreadable file is replaced
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(table.to_json())
    os.replace(tmp, path)


def gemv_table(device: str, shapes: Iterable[tuple[int, int]], precisions: Iterable[str], *, batch: int = 1,
               threads: int | None = None, cache_dir: str | os.PathLike[str] | None = None,
               use_cache: bool = True) -> GemvTable:
    """The GEMV table for these shapes and precisions on this machine: from the cache after a spot check, the
    missing entries measured (module docstring). ``device`` is the profile fingerprint (keys the file)."""
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
        if table is not None and table.torch_version == torch.__version__ and table.entries:
            table = _spot_check(table, specs, batch)
        else:
            table = None
        if table is None:
            table = GemvTable(device=device, torch_version=torch.__version__, threads=threads)
        missing = [s for s in specs if entry_key(*s, batch) not in table.entries]
        if missing or not table.launch:
            table.load_average = list(os.getloadavg())
            table.measured_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            if missing:
                table.entries.update(_measure_robust(missing, batch))
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
    now = measure_entries([spec], batch=batch, rounds=3, calls=5)[entry_key(*spec, batch)]["median_s"]
    then = table.entries[entry_key(*spec, batch)]["median_s"]
    if abs(now / then - 1.0) > STALE:
        logger.info("GEMV spot check %.1f us vs cached %.1f us: stale, re-measuring", now * 1e6, then * 1e6)
        return None
    return table
