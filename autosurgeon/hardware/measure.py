"""Micro-benchmarks that measure (never look up) a machine's rates: GEMM per dtype, memory, links, disk.

Every timing is warm-up, then repeats, then the median; GPU timings synchronise before reading the
clock. Each function returns the rate together with how it was measured, so the profile can say so.
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autosurgeon._logging import get_logger
from autosurgeon.errors import InvalidArgumentError

logger = get_logger(__name__)

GEMM_DTYPES = ("float32", "bfloat16", "float16", "int8")


@dataclass(frozen=True, kw_only=True)
class MeasureConfig:
    """Sizes and repeat counts of the micro-benchmarks.

    Attributes:
        gemm_min_n / gemm_max_n: GEMM sides are square, grown by doubling from min towards max so that
            launch overhead and scheduling stalls do not dominate.
        gemm_max_n_accel: ``gemm_max_n`` for GPUs, whose tensor cores need large products to reach their rate.
        gemm_max_op_s: Longest predicted time of one product; growth stops before exceeding it (slow
            dtypes, e.g. float16 on most CPUs, stop at small sizes).
        memory_bytes: Size of the source tensor of the CPU copy test (the destination is as large); raised to
            ``memory_over_cache`` times the total L3 so the copy streams from DRAM, not from cache.
        memory_over_cache: See ``memory_bytes``; 0 turns the raise off.
        accel_memory_bytes: Size of the source tensor of the GPU copy test.
        transfer_bytes: Size of each host<->device copy.
        disk_bytes: Size of the temporary file read back from the cache directory's disk.
        warmup / repeats: Untimed and timed runs of each benchmark; the median of the repeats is kept.
        disk_repeats: Timed disk reads (each after dropping the file from the page cache).
    """

    gemm_min_n: int = 64
    gemm_max_n: int = 4096
    gemm_max_n_accel: int = 8192
    gemm_max_op_s: float = 1.0
    memory_bytes: int = 256 * 2**20
    memory_over_cache: float = 4.0
    accel_memory_bytes: int = 2**30
    transfer_bytes: int = 256 * 2**20
    disk_bytes: int = 256 * 2**20
    warmup: int = 2
    repeats: int = 10
    disk_repeats: int = 3

    def __post_init__(self) -> None:
        positive = ("gemm_min_n", "gemm_max_n", "gemm_max_n_accel", "memory_bytes", "accel_memory_bytes")
        for name in (*positive, "transfer_bytes", "disk_bytes", "repeats", "disk_repeats"):
            if getattr(self, name) < 1:
                raise InvalidArgumentError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        for name in ("gemm_max_n", "gemm_max_n_accel"):
            if getattr(self, name) < self.gemm_min_n:
                raise InvalidArgumentError(
                    f"`{name}` ({getattr(self, name)}) must be >= `gemm_min_n` ({self.gemm_min_n})."
                )
        if self.warmup < 0:
            raise InvalidArgumentError(f"`warmup` must be >= 0, got {self.warmup}.")

    @classmethod
    def full(cls) -> MeasureConfig:
        """About 30-60 s on a small machine: large sizes, 10 repeats."""
        return cls()

    @classmethod
    def quick(cls) -> MeasureConfig:
        """Under 10 s on 2 cores: small sizes, 5 repeats, one disk read."""
        return cls(
            gemm_max_n=1024,
            gemm_max_n_accel=4096,
            gemm_max_op_s=0.15,
            memory_bytes=64 * 2**20,
            accel_memory_bytes=256 * 2**20,
            transfer_bytes=64 * 2**20,
            disk_bytes=32 * 2**20,
            warmup=1,
            repeats=5,
            disk_repeats=1,
        )

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


def median_time(fn: Callable[[], Any], *, warmup: int, repeats: int, device: torch.device | None = None) -> float:
    """Median wall time of ``fn`` in seconds over ``repeats`` runs after ``warmup`` untimed ones.

    On a CUDA device the queue is drained before starting and before stopping each clock, so the time
    covers the kernels, not just their launch.
    """
    cuda = device is not None and device.type == "cuda"
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _gemm_fn(n: int, dtype: str, device: torch.device) -> tuple[Callable[[], Any], str]:
    """A callable computing one n x n x n product in ``dtype`` on ``device``, and the kernel's name.

    Raises whatever torch raises when the dtype has no kernel here (the caller omits that dtype).
    """
    gen = torch.Generator(device="cpu").manual_seed(0)
    if dtype == "int8":
        a = torch.randint(-128, 128, (n, n), dtype=torch.int8, generator=gen).to(device)
        b = torch.randint(-128, 128, (n, n), dtype=torch.int8, generator=gen).to(device)
        try:
            torch._int_mm(a, b)
            return (lambda: torch._int_mm(a, b)), "torch._int_mm (int8 x int8 -> int32)"
        except (RuntimeError, NotImplementedError) as exc:
            if device.type != "cpu":
                raise
            logger.info("torch._int_mm has no CPU kernel here (%s); trying fbgemm dynamic int8 linear.", exc)
        # fbgemm/onednn dynamic linear: quantizes the activation per call, int8 GEMM, float output (w8a8).
        x = torch.randn(n, n, generator=gen)
        w = torch.quantize_per_tensor(torch.randn(n, n, generator=gen), 0.05, 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(w, None)
        torch.ops.quantized.linear_dynamic(x, packed, True)
        kernel = "torch.ops.quantized.linear_dynamic (w8a8)"
        return (lambda: torch.ops.quantized.linear_dynamic(x, packed, True)), kernel
    torch_dtype = getattr(torch, dtype)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=torch_dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=torch_dtype)
    torch.matmul(a, b)
    return (lambda: torch.matmul(a, b)), "torch.matmul"


def measure_gemm(device: torch.device, dtype: str, config: MeasureConfig) -> tuple[float, dict[str, Any]] | None:
    """Dense GEMM ops/s (2·n³ per product) of ``dtype`` on ``device``; ``None`` when no kernel runs.

    The side n doubles from ``gemm_min_n`` while the next size's product is predicted (from the growth
    of the best-of-two times so far) to take at most ``gemm_max_op_s`` and n stays within ``gemm_max_n``;
    then the median over ``repeats`` is taken at that n. Slow dtypes (float16 on most CPUs) stop small.
    """
    max_n = config.gemm_max_n if device.type == "cpu" else config.gemm_max_n_accel
    n, previous = config.gemm_min_n, None
    try:
        while True:
            fn, kernel = _gemm_fn(n, dtype, device)
            # Best of two: one stall of a shared machine should not decide the size alone.
            one = min(median_time(fn, warmup=0, repeats=1, device=device) for _ in range(2))
            if n * 2 > max_n:
                break
            # Predict the next size's time from the growth seen so far: 8x when compute-bound, less
            # while launch overhead or scheduling stalls dominate (those sizes say little of the rate).
            growth = 8.0 if previous is None else min(8.0, max(2.0, one / previous))
            if one * growth > config.gemm_max_op_s and not (previous is None and one < config.gemm_max_op_s / 4):
                break
            n, previous = n * 2, one
        seconds = median_time(fn, warmup=config.warmup, repeats=config.repeats, device=device)
    except (RuntimeError, NotImplementedError, TypeError) as exc:
        logger.info("no %s GEMM on %s (%s); omitting it from the profile.", dtype, device, str(exc).splitlines()[0])
        return None
    rate = 2.0 * n**3 / seconds
    return rate, {"n": n, "kernel": kernel, "median_s": seconds, "warmup": config.warmup, "repeats": config.repeats}


def measure_memory_bandwidth(device: torch.device, nbytes: int, config: MeasureConfig) -> tuple[float, dict[str, Any]]:
    """Bytes/s of a copy of an ``nbytes`` tensor on ``device``, counting read + write bytes (2 x size).

    Write-allocate caches may move a third stream of bytes that is not counted, so this is the rate a
    copy-like kernel sees, a little under the bus peak.
    """
    numel = max(1, nbytes // 4)
    src = torch.ones(numel, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds = median_time(lambda: dst.copy_(src), warmup=config.warmup, repeats=config.repeats, device=device)
    nbytes = src.numel() * 4
    del src, dst
    return 2.0 * nbytes / seconds, {
        "bytes": nbytes,
        "counted": "read+write",
        "median_s": seconds,
        "warmup": config.warmup,
        "repeats": config.repeats,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
    }


def measure_transfers(device: torch.device, config: MeasureConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Host<->device copy bandwidths (bytes/s): pinned and pageable, both directions."""
    numel = config.transfer_bytes // 4
    gpu = torch.empty(numel, dtype=torch.float32, device=device)
    pinned = torch.ones(numel, dtype=torch.float32).pin_memory()
    pageable = torch.ones(numel, dtype=torch.float32)
    nbytes = numel * 4
    cases = {
        "h2d_pinned": lambda: gpu.copy_(pinned, non_blocking=True),
        "h2d_pageable": lambda: gpu.copy_(pageable),
        "d2h_pinned": lambda: pinned.copy_(gpu, non_blocking=True),
        "d2h_pageable": lambda: pageable.copy_(gpu),
    }
    rates, seconds = {}, {}
    for key, fn in cases.items():
        seconds[key] = median_time(fn, warmup=config.warmup, repeats=config.repeats, device=device)
        rates[key] = nbytes / seconds[key]
    return rates, {"bytes": nbytes, "median_s": seconds, "warmup": config.warmup, "repeats": config.repeats}


def filesystem_type(path: Path) -> str:
    """Filesystem type of ``path``'s mount (from /proc/mounts), or ``""`` when unknown."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return ""
    resolved, best, fstype = str(path.resolve()), "", ""
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3:
            point = parts[1].replace("\\040", " ")
            if (resolved == point or resolved.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                best, fstype = point, parts[2]
    return fstype


def measure_disk_read(directory: Path, config: MeasureConfig) -> tuple[float, dict[str, Any]]:
    """Sequential read bytes/s of a fresh temporary file in ``directory`` (the cache directory's disk).

    The file is written and fsync'ed, then dropped from the page cache with
    ``posix_fadvise(POSIX_FADV_DONTNEED)`` before each timed read so the read reaches the disk. Where
    that cannot be done (no fadvise, tmpfs) the result says ``page_cache_dropped: False`` and the rate
    is a memory rate, not a disk rate.
    """
    directory.mkdir(parents=True, exist_ok=True)
    chunk_size = min(8 * 2**20, config.disk_bytes)
    # Random bytes so compressing filesystems store (and read) every byte.
    chunk = np.random.default_rng(0).bytes(chunk_size)
    chunks = max(1, config.disk_bytes // chunk_size)
    _remove_dead_probes(directory)  # a profile killed mid-probe left up to disk_bytes behind
    path = directory / f".disk-probe-{os.getpid()}.tmp"
    fstype = filesystem_type(directory)
    can_drop = hasattr(os, "posix_fadvise") and fstype not in ("tmpfs", "ramfs")
    dropped = can_drop
    try:
        with open(path, "wb") as f:
            for _ in range(chunks):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        buffer = bytearray(chunk_size)
        times = []
        for _ in range(config.disk_repeats):
            with open(path, "rb", buffering=0) as f:
                if can_drop:
                    try:
                        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                    except OSError as exc:
                        logger.info("could not drop the probe file from the page cache (%s).", exc)
                        dropped = False
                start = time.perf_counter()
                view = memoryview(buffer)
                while f.readinto(view):
                    pass
                times.append(time.perf_counter() - start)
    finally:
        path.unlink(missing_ok=True)
    seconds = statistics.median(times)
    if not dropped:
        logger.info("disk read of %s may come from the page cache (filesystem %r).", directory, fstype or "unknown")
    return chunks * chunk_size / seconds, {
        "bytes": chunks * chunk_size,
        "median_s": seconds,
        "repeats": config.disk_repeats,
        "directory": str(directory),
        "filesystem": fstype,
        "page_cache_dropped": dropped,
        "drop_method": "posix_fadvise(POSIX_FADV_DONTNEED) after fsync" if dropped else None,
    }


def _remove_dead_probes(directory: Path) -> None:
    """Delete ``.disk-probe-<pid>.tmp`` files whose process is gone (this host's pids; others' are left)."""
    for probe in directory.glob(".disk-probe-*.tmp"):
        try:
            pid = int(probe.name[len(".disk-probe-"):-len(".tmp")])
            os.kill(pid, 0)
        except ValueError:
            continue
        except ProcessLookupError:
            probe.unlink(missing_ok=True)
        except PermissionError:
            continue
