"""What the Streamer manages: a unit (one module's tensors, where it runs, where they live), its staging slot,
the counters, the disk-I/O modes, and the small helpers that swap tensors in and out of a module.

Split from :mod:`runtime.streaming` (which re-exports every public name here) so that module holds the fetch and
release machinery only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from runtime.mapped import PageRange
from runtime.tensors import tier_of


@dataclass(eq=False)
class StreamUnit:
    """One module whose own tensors are managed together: where it runs and where its weights live."""

    name: str
    module: nn.Module
    device: torch.device
    home: str
    recurse: bool = False  # manage the tensors of all submodules too (a whole block as one unit)
    # filled by attach()
    uid: int = -1
    members: tuple[tuple[nn.Module, str, bool], ...] = ()  # (owner module, attribute, is a parameter)
    keys: tuple[str, ...] = ()
    nbytes: int = 0
    originals: list[torch.Tensor] = field(default_factory=list)
    devices_before: list[torch.device] = field(default_factory=list)
    placeholders: list[torch.Tensor] = field(default_factory=list)
    live: list[nn.Parameter | None] = field(default_factory=list)
    # streaming state
    slot: _Slot | None = None
    pending: Any = None  # Future (disk reads), a finished result, or a callable producing it
    bound: bool = False
    prepared: int = 0  # bytes of a kernel's packed copy charged for this (resident) unit
    mviews: list[torch.Tensor] | None = None  # persistent-mapping modes: views into the mapped file
    mrange: PageRange | None = None  # ... and the page range they span (populated before use, dropped after)
    fixed: bool = False  # bound to ``mviews`` between uses too (Streamer ``keep_bound``): no swap per use
    releases: tuple[Any, ...] = ()  # the members' ``release_prepared`` (a kernel's packed copy), called after use

    @property
    def streamed(self) -> bool:
        return self.home != tier_of(self.device)


@dataclass(eq=False)
class _Slot:
    buf: torch.Tensor | None  # None: a mapped-unit token (no buffer; see ``disk_io="mmap"``)
    last_use: Any = None  # CUDA event recorded on the compute stream after the last unit that used it
    mapping: Any = None  # the mmap a mapped unit's views live in, until released


@dataclass
class StreamStats:
    """Counters since attach (or the last ``reset``)."""

    fetches: int = 0
    misses: int = 0  # a unit started without having been prefetched
    bytes_fetched: int = 0


DISK_IO: tuple[str, ...] = ("mmap", "mmap-auto", "mmap-populate", "mmap-willneed", "mmap-sync", "remap", "read")
PERSISTENT_DISK_IO: tuple[str, ...] = ("mmap", "mmap-auto", "mmap-populate", "mmap-willneed", "mmap-sync")
# The default: warm units (in the page cache, by cachestat) get no handoff to the worker: one populate on the compute
# thread right before the unit runs, so its GEMM takes no page fault inside its parallel region (session 7: per
# block 8.96 vs 9.18 ms with the GEMM faulting; token by token ahead of mmap-auto in 3 of 3 runs at load 5-7, a tie
# in 3 runs at load 1-2); cold ones are populated ahead on the worker. "mmap-auto" (session 6's default) leaves warm units to the GEMM's faults; "mmap" always hands off.
# Measured in experiments/benchmarks/streaming_cpu.py and streaming_cpu_pairs.py (rows ours, ours-auto, ours-mmap).
DEFAULT_DISK_IO = "mmap-populate"


class _EmptyCache:
    """One zero-element tensor per (device, dtype): what a live Parameter holds between uses."""

    def __init__(self) -> None:
        self._cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def get(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (device, dtype)
        if key not in self._cache:
            self._cache[key] = torch.empty(0, dtype=dtype, device=device)
        return self._cache[key]


_EMPTY = _EmptyCache()


def _assign(module: nn.Module, attr: str, is_param: bool, value: torch.Tensor, *, keep_param: bool) -> None:
    if is_param and keep_param:
        module._parameters[attr].data = value
    elif is_param:
        module._parameters[attr] = nn.Parameter(value, requires_grad=False)
    else:
        module._buffers[attr] = value
