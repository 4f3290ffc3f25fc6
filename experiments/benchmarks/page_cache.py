"""Page-cache and page-size tools for the CPU streaming benchmarks: drop a folder's cached pages and check that the
drop was real (``mincore``), measure the disk's cold read bandwidth (the bound of a cold row), and put a model's
weights on huge pages (the in-RAM baseline on the page size the runtime's mapped units get).
"""
from __future__ import annotations

import copy
import mmap
import os
import time
import warnings

import torch
from torch import nn

from runtime.mapped import MappedFiles, PageRange, advise_huge, file_resident_fraction


def drop_file_cache(folder: str) -> int:
    """Evict the page cache of every file under ``folder`` (``fsync``, then ``posix_fadvise DONTNEED``: dirty pages
    are written back first, since the advice skips them); returns the bytes. Pages some mapping still maps stay
    cached: check with :func:`folder_resident_fraction`."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                total += os.fstat(fd).st_size
            finally:
                os.close(fd)
    return total


def folder_resident_fraction(folder: str) -> float:
    """Fraction of the bytes of every file under ``folder`` that the page cache holds now (``mincore``), weighted
    by file size: ~0 after a real drop; a cold row whose files stay resident is not cold."""
    held = total = 0.0
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            size = os.path.getsize(path)
            held += file_resident_fraction(path) * size
            total += size
    return held / total if total else 0.0


def disk_read_bandwidth(folder: str, nbytes: int = 256 * 2**20) -> dict[str, float]:
    """Cold read bandwidth (bytes/s) of the disk holding ``folder``, three ways: a file written there, synced and
    evicted from the page cache before each, then read with 8 MiB ``preadv`` calls (``preadv``), with 8 MiB
    ``O_DIRECT`` reads into one aligned buffer (``o_direct``: no page cache, no readahead), and through a mapping
    as the streamer reads it (``populate``: ``MADV_HUGEPAGE`` + ``MADV_POPULATE_READ``, the kernel's readahead).
    The bound of a cold row is the fastest of them."""
    path = os.path.join(folder, "bandwidth-probe.bin")
    with open(path, "wb") as fh:
        chunk = min(nbytes, 16 * 2**20)
        fh.writelines(os.urandom(chunk) for _ in range(nbytes // chunk))
        fh.flush()
        os.fsync(fh.fileno())
    out: dict[str, float] = {}
    try:
        for method in ("preadv", "o_direct", "populate"):
            drop_file_cache(folder)
            if folder_resident_fraction(folder) > 0.01:
                out[method] = float("nan")  # not cold: no figure rather than a wrong one
                continue
            start = time.perf_counter()
            done = _read_probe(path, nbytes, method)
            out[method] = done / (time.perf_counter() - start)
    finally:
        os.unlink(path)
    return out


def _read_probe(path: str, nbytes: int, method: str) -> int:
    chunk = 8 * 2**20
    if method == "populate":
        with open(path, "rb") as fh:
            mapping = mmap.mmap(fh.fileno(), nbytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            anchor = torch.frombuffer(mapping, dtype=torch.uint8)
        mf = MappedFiles(None)
        rng = PageRange(anchor.data_ptr(), nbytes)
        advise_huge(rng)
        mf.populate(rng)
        mf.drop(rng)
        del anchor
        mapping.close()
        return nbytes
    flags = os.O_RDONLY | (os.O_DIRECT if method == "o_direct" else 0)
    fd = os.open(path, flags)
    buf = mmap.mmap(-1, chunk)  # page-aligned, as O_DIRECT needs
    try:
        done = 0
        while done < nbytes:
            n = os.preadv(fd, [buf], done)
            if n <= 0:
                break
            done += n
        return done
    finally:
        buf.close()
        os.close(fd)


def on_huge_pages(model: nn.Module) -> tuple[nn.Module, float]:
    """A copy of ``model`` whose parameters and buffers live in one anonymous ``MADV_HUGEPAGE`` arena (the in-RAM
    baseline on the page size our mapped units get), and the fraction of the arena the kernel backed with huge
    pages (``AnonHugePages`` in smaps; NaN where unreadable)."""
    m = copy.deepcopy(model)
    tensors = [*m.parameters(), *m.buffers()]
    sizes = [-(-t.numel() * t.element_size() // 64) * 64 for t in tensors]
    huge = 2 * 2**20
    arena = mmap.mmap(-1, sum(sizes) + huge, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # shared would be shmem
    anchor = torch.frombuffer(arena, dtype=torch.uint8)  # the tensors keep the mapping alive
    off = start = (-anchor.data_ptr()) % huge
    advise_huge(PageRange(anchor.data_ptr() + start, len(arena) - start))  # its own VMA from here on
    for t, n in zip(tensors, sizes):
        view = anchor[off:off + t.numel() * t.element_size()].view(t.dtype).view(t.shape)
        view.copy_(t.data)
        t.data = view
        off += n
    kb = smaps_kb(anchor.data_ptr() + start, "AnonHugePages:")
    return m, (min(1.0, kb * 1024 / (len(arena) - start)) if kb is not None else float("nan"))


def smaps_kb(addr: int, field: str) -> int | None:
    """A field (kB) of the mapping holding ``addr`` in /proc/self/smaps."""
    try:
        with open("/proc/self/smaps") as fh:
            inside = False
            for line in fh:
                head = line.split()[0]
                if "-" in head and not head.endswith(":"):
                    lo, hi = (int(x, 16) for x in head.split("-"))
                    inside = lo <= addr < hi
                elif inside and head == field:
                    return int(line.split()[1])
    except OSError:
        return None
    return None
