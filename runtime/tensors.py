"""Unified tensor store: every weight has a home tier, every byte on every tier is accounted.

Tiers are ``"gpu"`` (device memory), ``"cpu"`` (host RAM, page-locked where a GPU exists so host-to-device
copies run at DMA speed) and ``"disk"`` (safetensors files). A weight is *registered* once with its home
tier; the executor then *fetches* it to an execution device, into a staging buffer it reserved from the
store, and lets go of it when the block has run. Quantized weights are simply the tensors (buffers) of a
quantized module: they are stored, moved and counted compressed, and dequantized only by the kernel.

Accounting is exact and conservative: a tier's usage is the bytes of the home copies living on it plus
every staging buffer reserved on it (reserved buffers count whether or not they hold data at the moment),
so the sum can never be below what is really resident. A request that would take a tier past its budget
raises :class:`~runtime.errors.BudgetExceededError` naming the tier, the budget, the need and the largest
holder on that tier, before anything is allocated.

Disk-tier tensors reach memory two ways. :meth:`TensorStore.map` maps one group's bytes of the (plain
safetensors) file, populated up front and unmapped after use: no copy, the kernel's page cache is the
source, and the mapped pages count towards the process' RSS only while mapped — the streamer reserves those
bytes on the ``cpu`` budget. :meth:`TensorStore.fetch` copies them with ``os.preadv`` into a caller's buffer
(needed on the way to a GPU, through page-locked staging). A mapping that stays open (np.memmap-style, as
accelerate's disk offload does) would instead grow RSS towards the whole file as pages are touched.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from runtime._log import get_logger
from runtime.errors import BudgetExceededError, JalapenoError
from runtime.sizes import format_bytes

logger = get_logger(__name__)

TIERS: tuple[str, ...] = ("gpu", "cpu", "disk")
# Every tensor carved out of a staging buffer starts on this boundary: cuBLAS and vectorised CPU kernels
# want at least 16-byte alignment, and 256 keeps each tensor on its own cache lines / DMA bursts.
ALIGN = 256


def tier_of(device: str | torch.device) -> str:
    """The tier a device's memory belongs to: ``"gpu"`` for CUDA devices, ``"cpu"`` for the host."""
    kind = torch.device(device).type
    if kind == "cuda":
        return "gpu"
    if kind == "cpu":
        return "cpu"
    raise JalapenoError(f"device {str(device)!r} has no memory tier; use 'cpu' or 'cuda[:N]'.")


def aligned(nbytes: int) -> int:
    """Round ``nbytes`` up to the staging alignment."""
    return (nbytes + ALIGN - 1) // ALIGN * ALIGN


def tensor_nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@dataclass(frozen=True)
class Entry:
    """Where one registered tensor lives and what it looks like."""

    name: str
    tier: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    nbytes: int
    path: str | None = None  # disk tier: the safetensors file
    offset: int = 0  # disk tier: byte offset of the data in that file


_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _safetensors_layout(path: str) -> dict[str, tuple[int, int]]:
    """Absolute (offset, nbytes) of every tensor in a safetensors file, from its JSON header."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    base = 8 + header_len
    return {
        name: (base + info["data_offsets"][0], info["data_offsets"][1] - info["data_offsets"][0])
        for name, info in header.items()
        if name != "__metadata__"
    }


def _pin_in_place(t: torch.Tensor) -> bool:
    """Page-lock an existing host tensor with cudaHostRegister (exact size; torch's pinned allocator
    rounds every block up to a power of two, which would waste up to half the host budget)."""
    try:
        # cudaHostRegisterPortable (1): pinned for every GPU's context, so each GPU copies from it at DMA speed
        # (a model streamed into several GPUs reads one host arena per unit, whichever GPU runs it).
        rc = torch.cuda.cudart().cudaHostRegister(t.data_ptr(), tensor_nbytes(t), 1)
    except (RuntimeError, AttributeError):  # no CUDA runtime in this build
        return False
    return int(rc) == 0


class TensorStore:
    """One store for every weight: home tiers, per-tier budgets, fetch/release and byte accounting.

    Args:
        budgets: tier -> byte budget; a tier missing or ``None`` is unbounded (still accounted).
        offload_dir: where disk-tier files go; ``None`` makes a temporary directory removed on ``close()``.
        pin_memory: page-lock the ``cpu`` tier; ``None`` pins exactly when a CUDA GPU is visible.
    """

    def __init__(
        self,
        *,
        budgets: Mapping[str, int | None] | None = None,
        offload_dir: str | os.PathLike | None = None,
        pin_memory: bool | None = None,
    ) -> None:
        budgets = dict(budgets or {})
        for tier, value in budgets.items():
            if tier not in TIERS:
                raise JalapenoError(f"budget tier {tier!r} is unknown; use one of {', '.join(TIERS)}.")
            if value is not None and value < 0:
                raise JalapenoError(f"budget for tier {tier!r} must be >= 0 bytes, got {value}.")
        self.budgets: dict[str, int | None] = {tier: budgets.get(tier) for tier in TIERS}
        self._entries: dict[str, Entry] = {}
        self._home: dict[str, torch.Tensor] = {}  # gpu/cpu tiers: the home copy
        # Tensors registered in place (copy=False) that share memory (a head tied to its embedding): one
        # charge per (tier, address, bytes), held while any of the names sharing it stays registered.
        self._sharers: dict[tuple[str, int, int], list[str]] = {}
        self._shared_key: dict[str, tuple[str, int, int]] = {}
        self._holders: dict[str, dict[str, int]] = {tier: {} for tier in TIERS}  # tier -> label -> bytes
        self._used = dict.fromkeys(TIERS, 0)
        self._peak = dict.fromkeys(TIERS, 0)
        self._lock = threading.Lock()
        self._fds: dict[str, int] = {}
        self._registered_host: list[torch.Tensor] = []  # arenas we cudaHostRegister'ed, to unregister
        self._pin = torch.cuda.is_available() if pin_memory is None else pin_memory
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        self._offload_dir = None if offload_dir is None else os.fspath(offload_dir)
        self._file_count = 0

    # ---------------------------------------------------------------- accounting
    def _charge(self, tier: str, nbytes: int, label: str) -> None:
        with self._lock:
            budget = self.budgets[tier]
            if budget is not None and self._used[tier] + nbytes > budget:
                holders = self._holders[tier]
                if holders:
                    top = max(holders, key=holders.__getitem__)
                    offender = f"largest holder {top!r} ({format_bytes(holders[top])})"
                else:
                    offender = "nothing else is held there"
                raise BudgetExceededError(
                    f"tier {tier!r} budget {format_bytes(budget)} ({budget} B) cannot take {label!r}: it needs "
                    f"{format_bytes(nbytes)} more on top of {format_bytes(self._used[tier])} in use; {offender}. "
                    f"Raise the {tier!r} budget to at least {format_bytes(self._used[tier] + nbytes)}, or home "
                    f"more weights on a slower tier."
                )
            self._used[tier] += nbytes
            self._peak[tier] = max(self._peak[tier], self._used[tier])
            self._holders[tier][label] = self._holders[tier].get(label, 0) + nbytes

    def _uncharge(self, tier: str, nbytes: int, label: str) -> None:
        with self._lock:
            self._used[tier] -= nbytes
            left = self._holders[tier].get(label, 0) - nbytes
            if left > 0:
                self._holders[tier][label] = left
            else:
                self._holders[tier].pop(label, None)

    def charge(self, tier: str, nbytes: int, *, label: str) -> None:
        """Count ``nbytes`` held elsewhere (e.g. a kernel's packed weight copy) on ``tier`` under ``label``,
        checked against the budget like everything else; ``uncharge`` gives them back."""
        self._charge(tier, nbytes, label)

    def uncharge(self, tier: str, nbytes: int, *, label: str) -> None:
        self._uncharge(tier, nbytes, label)

    def used(self, tier: str) -> int:
        """Bytes held on ``tier`` right now (home copies plus reserved staging)."""
        return self._used[tier]

    def peak(self, tier: str) -> int:
        """Most bytes ever held on ``tier`` at one moment since creation or ``reset_peaks()``."""
        return self._peak[tier]

    def usage(self) -> dict[str, dict[str, int | None]]:
        """Per tier: ``used``, ``peak`` and ``budget`` bytes."""
        return {t: {"used": self._used[t], "peak": self._peak[t], "budget": self.budgets[t]} for t in TIERS}

    def reset_peaks(self) -> None:
        with self._lock:
            self._peak = dict(self._used)

    # ---------------------------------------------------------------- registration
    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise JalapenoError(f"tensor {name!r} is not registered in this store.") from None

    def register(self, tensors: Mapping[str, torch.Tensor], tier: str, *, label: str | None = None,
                 copy: bool = True) -> None:
        """Give each tensor a home on ``tier`` (one call = one group that is stored and fetched together).

        ``gpu``/``cpu``: with ``copy`` the tensors are copied into one fresh arena on that tier (page-locked
        for ``cpu`` when pinning is on), else the given tensors themselves become the home copies (they must
        already be on that tier). ``disk``: written to one new safetensors file. The group is charged to the
        tier under ``label`` (default: the first name) and checked against its budget first. In place
        (``copy=False``), a tensor whose memory is already registered (a tied weight) is charged once.
        """
        if tier not in TIERS:
            raise JalapenoError(f"tier {tier!r} is unknown; use one of {', '.join(TIERS)}.")
        if not tensors:
            return
        for name in tensors:
            if name in self._entries:
                raise JalapenoError(f"tensor {name!r} is already registered; unregister it first.")
        label = label or next(iter(tensors))
        if tier == "disk":
            total = sum(tensor_nbytes(t) for t in tensors.values())
            self._charge(tier, total, label)
            self._write_disk(tensors)
            return
        if copy:
            total = sum(aligned(tensor_nbytes(t)) for t in tensors.values())
        else:
            keys = {name: (tier, t.data_ptr(), tensor_nbytes(t)) for name, t in tensors.items()}
            new = {key for key in keys.values() if key not in self._sharers}  # each address once
            total = sum(key[2] for key in new)
        self._charge(tier, total, label)
        if not copy:
            for name, key in keys.items():
                self._sharers.setdefault(key, []).append(name)
                self._shared_key[name] = key
        if copy:
            device = torch.device("cuda") if tier == "gpu" else torch.device("cpu")
            arena = torch.empty(total, dtype=torch.uint8, device=device)
            homes = carve(arena, [(t.shape, t.dtype) for t in tensors.values()])
            for home, t in zip(homes, tensors.values()):
                home.copy_(t)
            if tier == "cpu" and self._pin and _pin_in_place(arena):
                self._registered_host.append(arena)
        else:
            homes = list(tensors.values())
            want = "cuda" if tier == "gpu" else "cpu"
            for name, t in tensors.items():
                if t.device.type != want:
                    raise JalapenoError(f"tensor {name!r} is on {t.device}, not on tier {tier!r}; pass copy=True.")
        for (name, t), home in zip(tensors.items(), homes):
            self._entries[name] = Entry(name, tier, tuple(t.shape), t.dtype, tensor_nbytes(t))
            self._home[name] = home

    def _write_disk(self, tensors: Mapping[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file  # local: keeps `import runtime` light

        if self._offload_dir is None:
            self._tmpdir = self._tmpdir or tempfile.TemporaryDirectory(prefix="jalapeno-offload-")
            directory = self._tmpdir.name
        else:
            directory = self._offload_dir
            os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"store-{os.getpid()}-{id(self):x}-{self._file_count:05d}.safetensors")
        self._file_count += 1
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, path)
        layout = _safetensors_layout(path)
        fd = self._fds[path] = os.open(path, os.O_RDONLY)
        # Written back now, once: clean pages are what a page-cache drop (cold measurement, memory pressure) can
        # evict and what runtime.mapped refolds into huge pages; dirty ones would stay, and cost a writeback later.
        os.fsync(fd)
        for name, t in tensors.items():
            offset, nbytes = layout[name]
            self._entries[name] = Entry(name, "disk", tuple(t.shape), t.dtype, nbytes, path, offset)

    def home(self, name: str) -> torch.Tensor:
        """The home copy of a ``gpu``/``cpu``-tier tensor (disk-tier tensors have none in memory)."""
        entry = self.entry(name)
        if entry.tier == "disk":
            raise JalapenoError(f"tensor {name!r} lives on disk; fetch it to a device instead.")
        return self._home[name]

    def load(self, name: str) -> torch.Tensor:
        """A fresh host copy of ``name`` that the store does not account (for handing weights back to a
        caller, e.g. when a streamer detaches and restores the model)."""
        entry = self.entry(name)
        if entry.tier != "disk":
            return self._home[name].to("cpu", copy=True)
        out = torch.empty(entry.shape, dtype=entry.dtype)
        self._read(entry, out)
        return out

    # ---------------------------------------------------------------- staging and fetch
    def group_nbytes(self, names: Sequence[str]) -> int:
        """Bytes a staging buffer needs to hold ``names`` together (each tensor aligned)."""
        return sum(aligned(self.entry(n).nbytes) for n in names)

    def allocate(self, tier: str, nbytes: int, *, label: str, device: str | torch.device | None = None,
                 pin: bool | None = None) -> torch.Tensor:
        """Reserve and allocate a staging byte buffer on ``tier`` (charged until ``free(label)``)."""
        self._charge(tier, nbytes, label)
        device = torch.device(device or ("cuda" if tier == "gpu" else "cpu"))
        buf = torch.empty(nbytes, dtype=torch.uint8, device=device)
        if tier == "cpu" and (self._pin if pin is None else pin) and _pin_in_place(buf):
            self._registered_host.append(buf)
        return buf

    def free(self, buf: torch.Tensor, *, tier: str, label: str) -> None:
        """Give back a buffer from ``allocate`` (the caller drops its references)."""
        self._unpin(buf)
        self._uncharge(tier, tensor_nbytes(buf), label)

    def fetch(self, names: Sequence[str], device: str | torch.device, *, out: torch.Tensor | None = None,
              non_blocking: bool = True) -> list[torch.Tensor]:
        """Return ``names`` as tensors on ``device``.

        A tensor whose home is already on the device's tier comes back as the home copy itself (no copy,
        no charge). Otherwise it is copied into ``out`` (a byte buffer from :meth:`allocate`, at least
        :meth:`group_nbytes` long) — host-to-device copies are issued on the *current* CUDA stream and are
        asynchronous when the source is page-locked. Without ``out``, a buffer is allocated and charged
        under the label ``"fetch:<first name>"``; hand the result to :meth:`release` when done.
        """
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        tier = tier_of(device)
        entries = [self.entry(n) for n in names]
        if all(e.tier == tier for e in entries):
            return [self._home[e.name] for e in entries]
        if out is None:
            out = self.allocate(tier, self.group_nbytes(names), label=f"fetch:{names[0]}", device=device)
        views = carve(out, [(e.shape, e.dtype) for e in entries])
        for entry, view in zip(entries, views):
            if entry.tier == tier:
                view.copy_(self._home[entry.name], non_blocking=non_blocking)
            elif entry.tier == "disk":
                self._read(entry, view)
            else:
                view.copy_(self._home[entry.name], non_blocking=non_blocking)
        return views

    def map(self, names: Sequence[str]) -> tuple[list[torch.Tensor], Any]:
        """Map disk-tier tensors of one group (one file) into memory, populated; returns the views and the
        mapping to hand to :meth:`unmap` once no view is referenced any more.

        Nothing is charged here: the caller reserves the bytes in flight (the pages count towards RSS while
        mapped). Views are read-only in effect (the mapping is ``PROT_READ``); writing to them faults.
        """
        import mmap
        import warnings

        entries = [self.entry(n) for n in names]
        paths = {e.path for e in entries}
        if len(paths) != 1 or None in paths:
            raise JalapenoError(f"map() takes disk-tier tensors of one group, got {list(names)}.")
        path = entries[0].path
        start = min(e.offset for e in entries)
        end = max(e.offset + e.nbytes for e in entries)
        base = start // mmap.ALLOCATIONGRANULARITY * mmap.ALLOCATIONGRANULARITY
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)  # populate: no page faults in the GEMM
        mapping = mmap.mmap(self._fds[path], end - base, flags=flags, prot=mmap.PROT_READ, offset=base)
        views = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "buffer is not writable": weights are only read
            for e in entries:
                numel = e.nbytes // e.dtype.itemsize
                t = torch.frombuffer(mapping, dtype=e.dtype, count=numel, offset=e.offset - base) if numel else \
                    torch.empty(0, dtype=e.dtype)
                views.append(t.view(e.shape))
        return views, mapping

    @staticmethod
    def unmap(mapping: Any) -> None:
        """Unmap what :meth:`map` mapped (deferred to garbage collection if a view is still alive)."""
        try:
            mapping.close()
        except BufferError:  # a view escaped (e.g. kept by the caller): the mapping dies with it
            pass

    def release(self, views: Sequence[torch.Tensor], names: Sequence[str]) -> None:
        """Give back what a ``fetch`` without ``out`` allocated (a no-op for home copies)."""
        if not views or any(v is self._home.get(n) for v, n in zip(views, names)):
            return
        buf = views[0]
        base = buf._base if buf._base is not None else buf
        self._uncharge(tier_of(base.device), tensor_nbytes(base), f"fetch:{names[0]}")

    def _read(self, entry: Entry, view: torch.Tensor) -> None:
        """Read one disk-tier tensor into ``view`` (through a host bounce buffer for device targets)."""
        assert entry.path is not None
        if view.device.type == "cpu":
            target = view
        else:
            target = torch.empty(entry.shape, dtype=entry.dtype)  # pageable bounce, then synchronous copy
        flat = target.view(-1).view(torch.uint8) if target.numel() else target.view(torch.uint8)
        mem = memoryview(flat.numpy())
        fd, done = self._fds[entry.path], 0
        while done < entry.nbytes:  # preadv may return short reads for very large requests
            n = os.preadv(fd, [mem[done:]], entry.offset + done)
            if n <= 0:
                raise JalapenoError(f"short read of {entry.name!r} from {entry.path}: file truncated?")
            done += n
        if target is not view:
            view.copy_(target)

    # ---------------------------------------------------------------- teardown
    def unregister(self, names: Iterable[str], *, label: str) -> None:
        """Forget tensors registered under ``label`` and give back their bytes."""
        for name in list(names):
            entry = self._entries.pop(name)
            home = self._home.pop(name, None)
            nbytes = entry.nbytes if entry.tier == "disk" or home is None else aligned(entry.nbytes)
            key = self._shared_key.pop(name, None)
            if key is not None:
                sharers = self._sharers[key]
                sharers.remove(name)
                if sharers:  # still held under another name (tied): its one charge stays
                    continue
                del self._sharers[key]
                nbytes = entry.nbytes  # in place: charged exact, not aligned (was over-returned before)
            self._uncharge(entry.tier, nbytes, label)

    def _unpin(self, buf: torch.Tensor) -> None:
        for i, arena in enumerate(self._registered_host):
            if arena.data_ptr() == buf.data_ptr():
                torch.cuda.cudart().cudaHostUnregister(arena.data_ptr())
                del self._registered_host[i]
                return

    def close(self) -> None:
        """Close files, un-pin host memory and delete temporary offload files."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        for arena in self._registered_host:
            torch.cuda.cudart().cudaHostUnregister(arena.data_ptr())
        self._registered_host.clear()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None


def carve(buf: torch.Tensor, layout: Sequence[tuple[Sequence[int], torch.dtype]]) -> list[torch.Tensor]:
    """Views of ``buf`` (a flat uint8 buffer) with the given shapes and dtypes, each ``ALIGN``-aligned."""
    views, offset = [], 0
    for shape, dtype in layout:
        numel = 1
        for s in shape:
            numel *= int(s)
        nbytes = numel * dtype.itemsize
        if offset + nbytes > buf.numel():
            raise JalapenoError(f"staging buffer of {buf.numel()} B is too small for the group it was given.")
        views.append(buf[offset:offset + nbytes].view(dtype).view(tuple(shape)))
        offset += aligned(nbytes)
    return views
