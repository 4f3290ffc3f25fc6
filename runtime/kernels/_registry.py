"""The kernel record and the registry of kernels (filled by cpu.py, cuda.py and portable.py at import).

A kernel computes ``x @ dequantize(qw).T`` (no bias) for a 2-D ``x`` of shape (M, K). It may need a
*prepared* form of the weight (an opaque packed object, e.g. fbgemm's); ``prepare`` builds it once per
weight and the caller (QuantizedLinear) keeps it. Registration happens at import and touches no device.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from runtime.errors import JalapenoError
from runtime.kernels.formats import QuantizedWeight

RunFn = Callable[[torch.Tensor, QuantizedWeight, Any], torch.Tensor]


@dataclass(frozen=True)
class Kernel:
    """One way to multiply by a quantized weight.

    Attributes:
        name: unique id, e.g. "cpu-avx512".
        formats: weight formats it reads ("int8", "int4", "fp8").
        device_type: "cpu", "cuda" or "any".
        run: ``run(x2d, qw, prepared) -> (M, N)`` in x's dtype.
        available: ``available() -> bool`` without side effects on CUDA/NVML unless asked for a CUDA kernel.
        tolerance: max ‖y − ref‖/‖ref‖ against a float64 reference on the same dequantized weight
            (fp32 activations), the number tests and :func:`choose_kernel` check.
        description: one line for tables and logs.
        prepare: optional ``prepare(qw) -> object`` run once per weight (packing); None if not needed.
        quantizes_activations: True when the kernel also rounds the activations (int8-dynamic, fp8):
            a different numeric contract from weight-only.
    """

    name: str
    formats: tuple[str, ...]
    device_type: str
    run: RunFn
    available: Callable[[], bool]
    tolerance: float
    description: str
    prepare: Callable[[QuantizedWeight], Any] | None = None
    quantizes_activations: bool = False

    def supports(self, fmt: str, device: torch.device | str) -> bool:
        """True when this kernel reads ``fmt`` and runs on ``device`` here (may compile on first ask)."""
        dev = torch.device(device)
        return fmt in self.formats and self.device_type in ("any", dev.type) and self.available()


_KERNELS: dict[str, Kernel] = {}


def register(kernel: Kernel) -> Kernel:
    if kernel.name in _KERNELS:
        raise JalapenoError(f"kernel {kernel.name!r} is registered twice")
    _KERNELS[kernel.name] = kernel
    return kernel


def get_kernel(name: str) -> Kernel:
    """The registered kernel ``name``; a clear error lists the registered names otherwise."""
    try:
        return _KERNELS[name]
    except KeyError:
        raise JalapenoError(f"`kernel` must be one of {sorted(_KERNELS)}, got {name!r}.") from None


def all_kernels() -> list[Kernel]:
    return list(_KERNELS.values())
