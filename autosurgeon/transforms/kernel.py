"""Kernel transform: which runtime kernel a quantized linear runs.

``"auto"`` leaves the choice to the runtime's per-device default (``runtime.kernels.default_kernel``:
weight-only numerics, no benchmark at apply time); any other name must be a registered kernel that reads
the layer's format and runs on its execution device *here* (only the named kernel is asked, so naming a
portable kernel does not compile the AVX-512 extension). A layer quantized at ``int8-dynamic`` keeps its
``int8-dynamic`` kernel under ``"auto"`` and refuses any other.
"""
from __future__ import annotations

import torch
from torch import nn

from autosurgeon.errors import InvalidArgumentError, UnsupportedTransformError
from autosurgeon.knobs import KERNEL_AUTO
from autosurgeon.transforms.configs import KernelConfig
from autosurgeon.transforms.modules import ConcatLinear, LinearAct
from autosurgeon.transforms.registry import TransformContext, register_transform
from runtime.errors import JalapenoError
from runtime.kernels import QuantizedLinear, all_kernels, get_kernel

DYNAMIC = "int8-dynamic"


def check_kernel(name: str | None, fmt: str, device: torch.device, *, fqn: str) -> str | None:
    """``name`` validated for ``fmt`` on ``device`` (None for ``"auto"``/None); raises naming layer and kernel."""

    if name is None or name == KERNEL_AUTO:
        return None
    try:
        kernel = get_kernel(name)
    except JalapenoError:
        known = ", ".join(k.name for k in all_kernels())
        raise InvalidArgumentError(
            f"{fqn}: `kernel` {name!r} is not a runtime kernel; known kernels: {known}.") from None
    if not kernel.supports(fmt, device):
        readers = [k.name for k in all_kernels() if fmt in k.formats and k.device_type in ("any", device.type)]
        raise UnsupportedTransformError(
            f"{fqn}: `kernel` {name!r} cannot run {fmt} weights on {device} here (it reads "
            f"{', '.join(kernel.formats)} on {kernel.device_type}"
            f"{'' if kernel.device_type not in ('any', device.type) else ', and is not available on this machine'}); "
            f"kernels for {fmt} on {device.type}: {', '.join(readers) or 'none'}, or 'auto'.")
    return name


def quantized_target(module: nn.Module) -> QuantizedLinear | None:
    """The QuantizedLinear that ``module`` is or wraps (a fused linear's inner one), else None."""
    inner = module.linear if isinstance(module, (ConcatLinear, LinearAct)) else module
    return inner if isinstance(inner, QuantizedLinear) else None


@register_transform(KernelConfig)
def set_kernel(module: nn.Module, config: KernelConfig, *, fqn: str, context: TransformContext) -> nn.Module:
    """Set ``.kernel`` of the quantized linear at ``fqn`` (see the module docstring)."""
    target = quantized_target(module)
    if target is None:
        raise InvalidArgumentError(f"{fqn}: `kernel` applies to quantized linears; {fqn} is a "
                                   f"{type(module).__name__} (give it an int8/int4/fp8 precision first).")
    device = context.device_of(fqn)
    if target.kernel == DYNAMIC:
        if config.name not in (KERNEL_AUTO, DYNAMIC):
            raise InvalidArgumentError(f"{fqn}: precision int8-dynamic runs only the {DYNAMIC!r} kernel, got "
                                       f"`kernel` {config.name!r}; use 'auto' or choose precision int8.")
        name: str | None = DYNAMIC
    else:
        name = check_kernel(config.name, target.fmt, device, fqn=fqn)
    if target.kernel == name:
        context.skipped(fqn, config)
        return module
    target.kernel = name
    target.release_prepared()
    return module


__all__ = ["check_kernel", "quantized_target", "set_kernel"]
