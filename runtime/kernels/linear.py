"""QuantizedLinear: an ``nn.Linear`` replacement whose weight lives as quantized BUFFERS.

Buffers (not parameters) so that ``module.to(device)``, a tensor store or a streaming hook moves ``qweight``,
``scales``, ``offsets`` and ``bias`` like any other tensors; ``state_dict`` holds exactly them. The kernel runs
on whatever device the buffers are on when ``forward`` is called.

A kernel that needs a packed form (fbgemm, tinygemm) gets it from ``prepare`` once; the module keeps it in
``self._prepared`` keyed by the identity of the buffers (data pointer, device, version), so when streaming
replaces or moves the buffers the packed form is rebuilt on the next call and the stale one dropped.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from runtime.errors import JalapenoError
from runtime.kernels._registry import Kernel, get_kernel
from runtime.kernels.formats import FORMATS, QuantizedWeight, check_group_size, quantize_weight
from runtime.kernels.select import KernelSelector, default_kernel, unpacked_kernel


class QuantizedLinear(nn.Module):
    """``y = x @ dequantize(W).T + b`` with W held quantized.

    Args:
        in_features: K (the real one; int4 pads internally).
        out_features: N.
        fmt: "int8" (per-channel), "int4" (group-wise) or "fp8".
        group_size: int4 group size along K (multiple of 32).
        bias: whether a bias buffer exists.
        kernel: a registered kernel name, or None for the default on the device of the buffers at call time
            (see :func:`runtime.kernels.default_kernel`); set ``.kernel`` later, e.g. from ``choose_kernel``.
        device: where to allocate the (empty) buffers.
    """

    def __init__(self, in_features: int, out_features: int, *, fmt: str = "int8", group_size: int = 128,
                 bias: bool = True, kernel: str | None = None, device: torch.device | str | None = None) -> None:
        super().__init__()
        if fmt not in FORMATS:
            raise JalapenoError(f"`fmt` must be one of {FORMATS}, got {fmt!r}.")
        if in_features <= 0 or out_features <= 0:
            raise JalapenoError(f"`in_features` and `out_features` must be >= 1, got {in_features}, {out_features}.")
        self.in_features, self.out_features, self.fmt = in_features, out_features, fmt
        self.group_size: int | None = None
        if fmt == "int4":
            check_group_size(group_size)
            self.group_size = group_size
            kp = -(-in_features // group_size) * group_size
            self.register_buffer("qweight", torch.zeros(out_features, kp // 2, dtype=torch.uint8, device=device))
            self.register_buffer("scales", torch.ones(out_features, kp // group_size, device=device))
            self.register_buffer("offsets", torch.zeros(out_features, kp // group_size, device=device))
        else:
            dtype = torch.int8 if fmt == "int8" else torch.float8_e4m3fn
            self.register_buffer("qweight", torch.zeros(out_features, in_features, device=device).to(dtype))
            self.register_buffer("scales", torch.ones(out_features, device=device))
            self.offsets = None
        self.register_buffer("bias", torch.zeros(out_features, device=device) if bias else None)
        self.kernel = kernel
        self._prepared: tuple[tuple[Any, ...], weakref.ref[torch.Tensor], Any] | None = None
        self._resolved: tuple[tuple[Any, ...], str] | None = None  # (kernel name, device) -> resolved name
        # Called whenever the packed copy is built or dropped (the Streamer charges it on the tier): an event, not
        # a forward hook, because a hook on every call costs ~4 us of Python per GEMV (~10 % of a small int8 one)
        # even where the kernel never packs.
        self.on_prepared: Callable[[], None] | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, fmt: str = "int8", *, group_size: int = 128,
                    kernel: str | None = None) -> QuantizedLinear:
        """Quantize ``linear``'s weight (on its device); the bias is kept in float32."""
        if not isinstance(linear, nn.Linear):
            raise JalapenoError(f"`linear` must be an nn.Linear, got {type(linear).__name__}.")
        qw = quantize_weight(linear.weight, fmt, group_size=group_size)
        bias = None if linear.bias is None else linear.bias.detach().to(torch.float32)
        return cls.from_quantized(qw, bias=bias, kernel=kernel)

    @classmethod
    def from_quantized(cls, qw: QuantizedWeight, *, bias: torch.Tensor | None = None,
                       kernel: str | None = None) -> QuantizedLinear:
        """Wrap an existing :class:`QuantizedWeight` (tensors are shared, not copied)."""
        mod = cls(qw.in_features, qw.out_features, fmt=qw.fmt, group_size=qw.group_size or 128,
                  bias=bias is not None, kernel=kernel, device="meta")
        mod.qweight, mod.scales = qw.qweight, qw.scales
        if qw.fmt == "int4":
            mod.offsets = qw.offsets
        if bias is not None:
            mod.bias = bias.detach().to(device=qw.qweight.device, dtype=torch.float32)
        return mod

    def quantized_weight(self) -> QuantizedWeight:
        """The current buffers as a :class:`QuantizedWeight` record (views, no copy).

        ``module.to(dtype)`` casts floating buffers; scales/offsets are brought back to float32 here (a copy
        only in that case), and an fp8 weight cast away from float8 is refused rather than misread.
        """
        if self.fmt == "fp8" and self.qweight.dtype != torch.float8_e4m3fn:
            raise JalapenoError(f"fp8 `qweight` was cast to {self.qweight.dtype} (module.to(dtype)?); reload it.")
        offsets = None if self.offsets is None else self.offsets.float()
        return QuantizedWeight(self.fmt, self.qweight, self.scales.float(), offsets, self.in_features,
                               self.out_features, self.group_size)

    def release_prepared(self) -> None:
        """Drop the packed copy a packing kernel built (streaming calls this when it releases the block)."""
        self._drop_prepared()

    def _drop_prepared(self) -> None:
        had = getattr(self, "_prepared", None) is not None
        self._prepared = None
        if had and getattr(self, "on_prepared", None) is not None:
            self.on_prepared()

    def _apply(self, fn: Any, recurse: bool = True) -> QuantizedLinear:
        # ``.to()`` / ``.cuda()`` / ``.cpu()`` give the module new buffers: a packed copy built from the old ones
        # would otherwise stay alive on the old device (it is only replaced by the next forward of a packing
        # kernel, so never once the module runs a kernel that does not pack, e.g. after streaming took it over).
        self._drop_prepared()
        return super()._apply(fn, recurse)

    @property
    def prepared_nbytes(self) -> int:
        """Bytes held by the packed copy (tensors only; fbgemm's opaque pack counts as the int8 weight size)."""
        if self._prepared is None:
            return 0
        obj = self._prepared[2]
        parts = obj if isinstance(obj, (tuple, list)) else (obj,)
        tensors = [t for t in parts if isinstance(t, torch.Tensor)]
        if not tensors:
            return self.qweight.numel() * self.qweight.element_size()
        return sum(t.numel() * t.element_size() for t in tensors)

    def resolve_kernel(self, device: torch.device | None = None) -> Kernel:
        """The kernel ``forward`` will use on ``device`` (default: where the buffers are)."""
        device = device or self.qweight.device
        # Resolved once per (name, device): the default's availability checks cost ~0.1 ms a call, which a
        # streamed decode paid on every linear of every token.
        # Only the name is kept (a module stays picklable; the lookup is a dict access).
        key = (self.kernel, device.type, device.index)
        cached = getattr(self, "_resolved", None)  # absent on modules unpickled from before this attribute
        if cached is not None and cached[0] == key:
            return get_kernel(cached[1])
        kernel = get_kernel(self.kernel) if self.kernel is not None else default_kernel(self.fmt, device)
        self._resolved = (key, kernel.name)
        return kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise JalapenoError(f"input's last dimension must be in_features={self.in_features}, got {x.shape[-1]}.")
        kernel = self.resolve_kernel()
        qw = self.quantized_weight()
        prepared = None
        if kernel.prepare is not None:
            # Valid while it is the same tensor object (weakref: a freed-and-reallocated buffer at the same
            # address is a new object), unchanged in place (_version) and at the same address and device.
            key = (kernel.name, self.qweight._version, self.qweight.data_ptr(), self.qweight.device)
            cached = self._prepared
            if cached is None or cached[0] != key or cached[1]() is not self.qweight:
                self._prepared = None  # drop the stale packed copy before building the new one
                self._prepared = (key, weakref.ref(self.qweight), kernel.prepare(qw))
                if self.on_prepared is not None:
                    self.on_prepared()
            prepared = self._prepared[2]
        x2 = x.reshape(-1, self.in_features)
        y = kernel.run(x2, qw, prepared)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        g = f", group_size={self.group_size}" if self.group_size else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, fmt={self.fmt}{g}, "
                f"bias={self.bias is not None}, kernel={self.kernel}")


def quantized_linear(x: torch.Tensor, qw: QuantizedWeight, *, bias: torch.Tensor | None = None,
                     kernel: str | None = None) -> torch.Tensor:
    """Functional form: ``x @ dequantize(qw).T (+ bias)``; packs afresh each call (hold a module to reuse)."""
    k = get_kernel(kernel) if kernel is not None else default_kernel(qw.fmt, qw.device)
    prepared = k.prepare(qw) if k.prepare is not None else None
    y = k.run(x.reshape(-1, x.shape[-1]), qw, prepared)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.reshape(*x.shape[:-1], qw.out_features)


def use_unpacked_kernels(module: nn.Module, device: torch.device | str) -> dict[str, str]:
    """Give every QuantizedLinear under ``module`` that has no kernel set and whose default on ``device`` packs
    its weight the first kernel that reads the codes as they are (the streamed-weight rule, see
    :func:`runtime.kernels.select.unpacked_kernel`). Returns ``{module name: kernel name}`` of what it set."""
    chosen: dict[str, str] = {}
    for name, sub in module.named_modules():
        if isinstance(sub, QuantizedLinear) and sub.kernel is None and default_kernel(sub.fmt, device).prepare:
            kernel = unpacked_kernel(sub.fmt, device)
            if kernel is not None:
                sub.kernel = chosen[name] = kernel.name
                sub.release_prepared()
    return chosen


def choose_kernels(model: nn.Module, *, batch: int = 1, dtype: torch.dtype = torch.float32,
                   selector: KernelSelector | None = None) -> dict[str, str]:
    """Set ``.kernel`` of every QuantizedLinear in ``model`` by micro-benchmark on its real shape and device.

    Layers of equal (format, shape, device) are timed once through ``selector`` (a fresh
    :class:`KernelSelector` if None; pass your own to reuse choices across models or to refuse
    activation-quantizing kernels with ``KernelSelector(allow_activation_quant=False)``).
    Returns ``{module name: kernel name}``.
    """
    selector = selector if selector is not None else KernelSelector()
    chosen: dict[str, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantizedLinear) and module.qweight.device.type != "meta":
            module.kernel = selector.choose(module.quantized_weight(), batch=batch, dtype=dtype).name
            module.release_prepared()
            chosen[name] = module.kernel
    return chosen
