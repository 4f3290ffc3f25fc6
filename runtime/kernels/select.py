"""Which kernels work here, the accuracy check, and the per-layer choice by micro-benchmark.

``choose_kernel`` times every candidate on the real shape (warm-up, then ``repeats`` interleaved rounds, median)
and returns the fastest one
whose error against a float64 reference stays within the kernel's stated tolerance. Results are cached only in a
:class:`KernelSelector` the caller holds (no hidden global cache).
"""
from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from runtime._log import get_logger
from runtime.errors import JalapenoError
from runtime.kernels._registry import Kernel, all_kernels, get_kernel
from runtime.kernels.formats import FORMATS, QuantizedWeight, dequantize
from runtime.telemetry import measure_latency

logger = get_logger(__name__)

# Default kernel per (device type, format) when nobody benchmarked: first available wins. Chosen from the
# committed benchmark (experiments/benchmarks/results/kernels_*.md); weight-only kernels only, so the default
# keeps weight-only numerics.
_PREFERENCE: dict[tuple[str, str], tuple[str, ...]] = {
    ("cpu", "int8"): ("cpu-avx512", "cpu-avx2", "torch-dequant"),
    ("cpu", "int4"): ("cpu-avx512", "cpu-avx2", "torch-dequant"),
    ("cpu", "fp8"): ("torch-dequant",),
    ("cuda", "int8"): ("cuda-triton", "dequant-bf16", "cuda-int8pack"),
    ("cuda", "int4"): ("cuda-int4-tinygemm", "cuda-int4-gemv", "cuda-triton", "dequant-bf16"),
    ("cuda", "fp8"): ("cuda-fp8", "dequant-bf16"),
}


def _check_fmt(fmt: str) -> None:
    if fmt not in FORMATS:
        raise JalapenoError(f"`fmt` must be one of {FORMATS}, got {fmt!r}.")


def available_kernels(fmt: str, device: torch.device | str = "cpu") -> list[str]:
    """Names of the kernels that read ``fmt`` and run on ``device`` here (may compile the CPU extension)."""
    _check_fmt(fmt)
    return [k.name for k in all_kernels() if k.supports(fmt, device)]


def default_kernel(fmt: str, device: torch.device | str = "cpu") -> Kernel:
    """The kernel used when none is named: the first available of a fixed per-device preference list."""
    _check_fmt(fmt)
    dev = torch.device(device)
    for name in _PREFERENCE.get((dev.type, fmt), ("torch-dequant",)):
        kernel = get_kernel(name)
        if kernel.supports(fmt, dev):
            return kernel
    return get_kernel("torch-dequant")


def unpacked_kernel(fmt: str, device: torch.device | str) -> Kernel | None:
    """The first available kernel of the device's preference for ``fmt`` that keeps no packed copy, if any.

    Why: a streamed weight arrives in new buffers on every fetch, so a packing kernel (tinygemm) repacks it on
    every token and holds a second copy while it is resident; a kernel that reads the canonical codes as they
    are does neither (measured: ``results/streaming_gpu_gemv.md``).
    """
    _check_fmt(fmt)
    dev = torch.device(device)
    for name in _PREFERENCE.get((dev.type, fmt), ()):
        kernel = get_kernel(name)
        if kernel.prepare is None and not kernel.quantizes_activations and kernel.supports(fmt, dev):
            return kernel
    return None


def kernel_error(kernel: Kernel | str, qw: QuantizedWeight, *, batch: int = 1, seed: int = 0,
                 dtype: torch.dtype = torch.float32) -> float:
    """‖y − ref‖ / ‖ref‖ of ``kernel`` against float64 ``x @ dequantize(qw).T`` on fresh random ``x``.

    ``x`` is drawn from N(0, 1) with an explicit seed on the weight's device; the reference uses the same
    (already rounded) ``x``, so the error is the kernel's own arithmetic, not the weight quantization.
    """
    k = get_kernel(kernel) if isinstance(kernel, str) else kernel
    gen = torch.Generator(device=qw.device).manual_seed(seed)
    x = torch.randn(batch, qw.in_features, generator=gen, device=qw.device).to(dtype)
    prepared = k.prepare(qw) if k.prepare is not None else None
    y = k.run(x, qw, prepared).double()
    if not torch.isfinite(y).all():
        return float("inf")
    ref = x.double() @ dequantize(qw, torch.float64).t()
    return float((y - ref).norm() / ref.norm().clamp_min(1e-300))


@dataclass(frozen=True)
class KernelChoice:
    """Outcome of one micro-benchmark: the winner and what every candidate measured."""

    name: str
    median_s: dict[str, float]
    errors: dict[str, float]
    rejected: dict[str, str] = field(default_factory=dict)


def choose_kernel(qw: QuantizedWeight, *, batch: int = 1, dtype: torch.dtype = torch.float32,
                  candidates: list[str] | None = None, allow_activation_quant: bool = True,
                  warmup: int = 3, repeats: int = 10, seed: int = 0) -> KernelChoice:
    """Fastest kernel for ``qw`` at ``batch`` rows on ``qw``'s device among those passing their accuracy check.

    Args:
        qw: the real weight (its shape and device are what is timed).
        batch: rows of the activation (1 for decode).
        dtype: activation dtype.
        candidates: kernel names to try; default: :func:`available_kernels` for the format and device.
        allow_activation_quant: include kernels that also quantize activations (int8-dynamic, cuda-fp8).
        warmup, repeats: passed to :func:`runtime.telemetry.measure_latency` (median is compared).
        seed: seed of the random activations used for the accuracy check and the timing.
    """
    if batch < 1:
        raise JalapenoError(f"`batch` must be >= 1, got {batch}.")
    names = candidates if candidates is not None else available_kernels(qw.fmt, qw.device)
    calls: dict[str, Callable[[], torch.Tensor]] = {}
    errors: dict[str, float] = {}
    rejected: dict[str, str] = {}
    gen = torch.Generator(device=qw.device).manual_seed(seed)
    x = torch.randn(batch, qw.in_features, generator=gen, device=qw.device).to(dtype)
    for name in names:
        k = get_kernel(name)
        if not k.supports(qw.fmt, qw.device):
            rejected[name] = f"does not run {qw.fmt} on {qw.device}"
            continue
        if k.quantizes_activations and not allow_activation_quant:
            rejected[name] = "quantizes activations (allow_activation_quant=False)"
            continue
        err = kernel_error(k, qw, batch=batch, seed=seed + 1, dtype=dtype)
        errors[name] = err
        if not err <= k.tolerance:
            rejected[name] = f"error {err:.2e} > tolerance {k.tolerance:.1e}"
            continue
        prepared = k.prepare(qw) if k.prepare is not None else None
        calls[name] = lambda k=k, p=prepared: k.run(x, qw, p)
    # Interleaved rounds (every candidate once per round) so load from other processes or clock changes fall
    # on all candidates alike rather than on whichever was timed during a burst.
    for fn in calls.values():
        measure_latency(fn, warmup=max(warmup - 1, 0), repeats=1, device=qw.device)
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            samples[name].append(measure_latency(fn, warmup=0, repeats=1, device=qw.device).median_s)
    times = {name: statistics.median(ts) for name, ts in samples.items()}
    if not times:
        raise JalapenoError(f"no kernel for {qw.fmt} on {qw.device} passed its check: {rejected}")
    best = min(times, key=times.__getitem__)
    logger.info("kernel for %s %dx%d batch %d on %s: %s (%s)", qw.fmt, qw.out_features, qw.in_features, batch,
                qw.device, best, {n: f"{t * 1e3:.3f} ms" for n, t in times.items()})
    return KernelChoice(best, times, errors, rejected)


class KernelSelector:
    """Holds ``choose_kernel`` results per (format, shape, group size, batch, dtype, device) for reuse.

    The cache lives in this object (one per session, say), never in a module global.
    """

    def __init__(self, *, warmup: int = 3, repeats: int = 10, allow_activation_quant: bool = True) -> None:
        self.warmup, self.repeats, self.allow_activation_quant = warmup, repeats, allow_activation_quant
        self.cache: dict[tuple[object, ...], KernelChoice] = {}

    def choose(self, qw: QuantizedWeight, *, batch: int = 1, dtype: torch.dtype = torch.float32) -> KernelChoice:
        key = (qw.fmt, qw.out_features, qw.in_features, qw.group_size, batch, dtype, str(qw.device))
        if key not in self.cache:
            self.cache[key] = choose_kernel(qw, batch=batch, dtype=dtype, warmup=self.warmup, repeats=self.repeats,
                                            allow_activation_quant=self.allow_activation_quant)
        return self.cache[key]
