"""Persistent read-only mappings of disk-tier files: mapped once, pages populated before use, dropped after.

The disk tier's host path maps a unit's bytes instead of copying them (the page cache is the source). Mapping
and unmapping per use costs a VMA and fresh tensor views every token; here each file is mapped once, its views
are built once, and a use costs two ``madvise`` calls on the unit's page range:

* ``populate``: ``MADV_POPULATE_READ`` (Linux >= 5.14) installs the page-table entries (reading from disk on a
  cold cache), so the GEMM that follows takes no page faults. ``MADV_WILLNEED`` instead only starts readahead
  into the page cache; the GEMM then maps pages by faulting (measured against populate in
  ``experiments/benchmarks/streaming.py``).
* ``resident``: ``cachestat`` says whether every page of the range is in the page cache (one syscall), so a
  caller can skip the populate handoff when nothing needs reading: warm pages are mapped by the GEMM's own
  faults, a few per MiB where the cache holds large folios.
* ``drop``: ``MADV_DONTNEED`` removes the entries again. The pages stay in the page cache (clean, shared,
  reclaimable) but leave this process' resident set, so at most the units in flight count towards RSS.

``madvise`` goes through ctypes, which releases the GIL: a populate that reads from a cold disk does not stall
the compute thread. Where ``MADV_POPULATE_READ`` is missing (older kernels: ``EINVAL``) the range is touched
one byte per page instead, which faults the same pages in.

Huge pages: a populate costs one page-table entry per 4 KiB page (~1.1 ms for a 49 MiB block here, most of the
streamer's per-token CPU work). Each mapping is advised ``MADV_HUGEPAGE``, and a file of at least
``HUGE_MIN_BYTES`` that the store just wrote is written back and its page cache dropped once at open
(``fsync`` + ``POSIX_FADV_DONTNEED``; ``refold``): the first populate then reads it into 2 MiB folios, which every
later populate maps with one PMD entry each (0.14 ms per 49 MiB block here). Where the kernel has no THP
(``/sys/kernel/mm/transparent_hugepage/enabled`` is ``never`` or missing) nothing changes.
``file_resident_fraction`` (``mincore`` on a fresh mapping) says how much of a file the page cache holds: what a
cold measurement checks after dropping it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from runtime.errors import JalapenoError

MADV_WILLNEED = 3
MADV_DONTNEED = 4
MADV_HUGEPAGE = 14
MADV_POPULATE_READ = 22
PAGE = mmap.PAGESIZE
HUGE_MIN_BYTES = 4 * 2**20  # smaller files are not refolded into huge folios (at most one 2 MiB folio to gain)

_libc: Any = None


def _load_libc() -> Any:
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        libc.madvise.restype = ctypes.c_int
        libc.syscall.restype = ctypes.c_long
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        libc.mincore.restype = ctypes.c_int
        _libc = libc
    return _libc


def _madvise_fn() -> Any:
    return _load_libc().madvise


_SYS_CACHESTAT = 451  # the same number on every architecture (a generic syscall since Linux 6.5)


class _CacheStatRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _CacheStat(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("nr_cache", "nr_dirty", "nr_writeback", "nr_evicted",
                                               "nr_recently_evicted")]


@dataclass(frozen=True)
class PageRange:
    """A page-aligned address range inside one mapping (what ``populate``/``drop`` act on)."""

    addr: int
    length: int


class MappedFiles:
    """Each disk-tier file mapped once (``PROT_READ``, shared); views and page ranges per group of tensors.

    Args:
        store: the :class:`~runtime.tensors.TensorStore` whose disk-tier entries are mapped.
        huge_pages: advise each mapping ``MADV_HUGEPAGE`` and refold a large file's page cache into huge folios
            at open (see the module docstring); ``False`` keeps the kernel's defaults.
    """

    def __init__(self, store: Any, *, huge_pages: bool = True) -> None:
        self.store = store
        self.huge_pages = huge_pages and thp_available()
        self._maps: dict[str, tuple[mmap.mmap, int, torch.Tensor]] = {}  # path -> (mapping, base address, anchor)
        self._populate_ok = True
        self._fds: dict[int, int] = {}  # base address -> an open descriptor of its file (for cachestat)
        self._cachestat_ok = True
        self._stat_args: dict[PageRange, tuple[int, _CacheStatRange, int]] = {}  # per range: fd, span, pages

    def views(self, names: Sequence[str]) -> tuple[list[torch.Tensor], PageRange]:
        """Tensors viewing ``names`` (disk-tier tensors of one file) in place, and the page range they span."""
        entries = [self.store.entry(n) for n in names]
        paths = {e.path for e in entries}
        if len(paths) != 1 or None in paths:
            raise JalapenoError(f"views() takes disk-tier tensors of one file, got {list(names)}.")
        path = entries[0].path
        mapping, base, anchor = self._open(path)
        views = []
        for e in entries:
            numel = e.nbytes // e.dtype.itemsize
            if numel:
                views.append(anchor[e.offset:e.offset + e.nbytes].view(e.dtype).view(e.shape))
            else:
                views.append(torch.empty(e.shape, dtype=e.dtype))
        start = min(e.offset for e in entries) // PAGE * PAGE
        end = -(-max(e.offset + e.nbytes for e in entries) // PAGE) * PAGE
        end = min(end, -(-len(mapping) // PAGE) * PAGE)
        return views, PageRange(base + start, end - start)

    def _open(self, path: str) -> tuple[mmap.mmap, int, torch.Tensor]:
        if path not in self._maps:
            size = os.path.getsize(path)
            huge = self.huge_pages and size >= HUGE_MIN_BYTES
            if huge:
                refold(path)
            with open(path, "rb") as fh:
                mapping = mmap.mmap(fh.fileno(), size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "buffer is not writable": weights are only read
                anchor = torch.frombuffer(mapping, dtype=torch.uint8)
            self._maps[path] = (mapping, anchor.data_ptr(), anchor)
            self._fds[anchor.data_ptr()] = os.open(path, os.O_RDONLY)
            whole = PageRange(anchor.data_ptr(), -(-size // PAGE) * PAGE)
            if huge:
                advise_huge(whole)
            self._advise(whole, MADV_DONTNEED)
        return self._maps[path]

    # ---------------------------------------------------------------- per use
    def populate(self, rng: PageRange) -> None:
        """Install the range's page-table entries now (reads from disk where the page cache lacks them)."""
        if self._populate_ok and self._advise(rng, MADV_POPULATE_READ, check=False) == 0:
            return
        self._populate_ok = False
        _touch(rng)

    def willneed(self, rng: PageRange) -> None:
        """Start readahead of the range into the page cache and return (no page-table entries)."""
        self._advise(rng, MADV_WILLNEED)

    def resident(self, rng: PageRange) -> bool:
        """True when every page of the range is in the page cache now; False if any is not, or if this kernel
        cannot say cheaply (the caller then reads, which is always correct).

        ``cachestat`` (Linux >= 6.5) counts a file range's cached pages folio by folio: ~6 us for 49 MiB here.
        ``mincore`` is not used: on a range whose entries were dropped it looks pages up one by one (1.2 ms).
        """
        if not self._cachestat_ok or rng.length <= 0:
            return rng.length <= 0
        args = self._stat_args.get(rng)
        if args is None:  # once per range: which file, and where in it
            for mapping, base, _ in self._maps.values():
                if base <= rng.addr < base + len(mapping):
                    span = _CacheStatRange(rng.addr - base, min(rng.length, base + len(mapping) - rng.addr))
                    args = self._stat_args[rng] = (self._fds[base], span, -(-span.len // PAGE))
                    break
            else:
                return False
        fd, span, pages = args
        out = _CacheStat()
        if _load_libc().syscall(_SYS_CACHESTAT, fd, ctypes.byref(span), ctypes.byref(out), 0) != 0:
            self._cachestat_ok = False  # ENOSYS (older kernel) or a seccomp filter: stop asking
            return False
        return out.nr_cache >= pages

    def drop(self, rng: PageRange) -> None:
        """Remove the range's page-table entries (the pages stay cached; RSS goes down)."""
        self._advise(rng, MADV_DONTNEED)

    @staticmethod
    def _advise(rng: PageRange, advice: int, *, check: bool = True) -> int:
        if rng.length <= 0:
            return 0
        rc = _madvise_fn()(rng.addr, rng.length, advice)
        if rc != 0 and check:
            err = ctypes.get_errno()
            raise JalapenoError(f"madvise({advice}) on {rng.length} B failed: {os.strerror(err)}.")
        return rc

    def close(self) -> None:
        """Unmap every file (views built from them must be gone; a live view keeps its mapping until freed)."""
        for mapping, _, _ in self._maps.values():
            try:
                mapping.close()
            except BufferError:  # a view escaped: the mapping dies with it
                pass
        self._maps.clear()
        self._stat_args.clear()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def advise_huge(rng: PageRange) -> bool:
    """Ask for huge pages on a mapping's range (``MADV_HUGEPAGE``); False where the kernel refuses (EINVAL: no THP
    for this mapping, 4 KiB pages it is)."""
    return MappedFiles._advise(rng, MADV_HUGEPAGE, check=False) == 0


def thp_available() -> bool:
    """Whether this kernel maps huge pages at all (transparent huge pages not ``never``)."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as fh:
            return "[never]" not in fh.read()
    except OSError:
        return False


def refold(path: str) -> None:
    """Write ``path`` back and drop its page cache (clean, unmapped pages only), so that the next read through a
    ``MADV_HUGEPAGE`` mapping brings it in as huge folios. Meant for files this process wrote itself."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def file_resident_fraction(path: str) -> float:
    """Fraction of ``path``'s pages in the page cache now: ``mincore`` over a fresh read-only mapping of the file
    (which installs no page-table entries of its own, so it reports the page cache, not this mapping)."""
    size = os.path.getsize(path)
    if size == 0:
        return 0.0
    with open(path, "rb") as fh:
        mapping = mmap.mmap(fh.fileno(), size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            anchor = torch.frombuffer(mapping, dtype=torch.uint8)
        pages = -(-size // PAGE)
        vec = (ctypes.c_ubyte * pages)()
        rc = _load_libc().mincore(anchor.data_ptr(), size, vec)
        del anchor
        if rc != 0:
            raise JalapenoError(f"mincore on {path!r} failed: {os.strerror(ctypes.get_errno())}.")
        return sum(b & 1 for b in bytes(vec)) / pages
    finally:
        mapping.close()


def _touch(rng: PageRange) -> None:
    """Fault a range in by reading one byte per page (fallback for kernels without MADV_POPULATE_READ)."""
    buf = (ctypes.c_char * rng.length).from_address(rng.addr)
    view = memoryview(buf).cast("B")
    sum(view[::PAGE])
