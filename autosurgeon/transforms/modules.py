"""Modules the transforms install: dtype-boundary casts, concatenated linears and their output slices.

They subclass the torch module they replace where they can (``SurgeryLinear`` is an ``nn.Linear``), so
parameter names, ``state_dict`` keys and ``isinstance`` checks stay those of the original model, and each
is a new *instance* built from the old one's tensors: no class or forward is patched.
"""
from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class SurgeryLinear(nn.Linear):
    """An ``nn.Linear`` whose weights are stored in another float dtype than its neighbours compute in.

    The input is cast to the weight dtype and the output cast back to the input's dtype, so a bfloat16
    layer in a float32 model hands float32 on (and vice versa).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias).to(x.dtype)


class _SurgeryConv:
    """Mixin of the conv replacements: float-cast boundary and (Conv2d) channels_last input."""

    channels_last: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_dtype = x.dtype
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return super().forward(x.to(self.weight.dtype)).to(out_dtype)  # type: ignore[misc]


class SurgeryConv1d(_SurgeryConv, nn.Conv1d):
    """``nn.Conv1d`` with a float-cast boundary (see :class:`SurgeryLinear`)."""


class SurgeryConv2d(_SurgeryConv, nn.Conv2d):
    """``nn.Conv2d`` with a float-cast boundary and an optional channels_last input (``.channels_last``)."""


class SurgeryConv3d(_SurgeryConv, nn.Conv3d):
    """``nn.Conv3d`` with a float-cast boundary."""


SURGERY_CONV: dict[type, type] = {nn.Conv1d: SurgeryConv1d, nn.Conv2d: SurgeryConv2d, nn.Conv3d: SurgeryConv3d}


class SurgeryEmbedding(nn.Embedding):
    """An ``nn.Embedding`` stored in another float dtype; its rows are handed on in ``output_dtype``."""

    output_dtype: torch.dtype = torch.float32

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids).to(self.output_dtype)


def is_conv1d(module: nn.Module) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2 and kin): a linear whose weight is stored transposed, ``(in, out)``."""
    weight = getattr(module, "weight", None)
    return (type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.dim() == 2
            and getattr(module, "nf", None) == weight.shape[1])


def linear_from_conv1d(module: nn.Module) -> nn.Linear:
    """The ``nn.Linear`` that computes what a ``Conv1D`` does (``x @ W + b`` = ``F.linear(x, W.T, b)``), holding a
    contiguous transposed copy of its weight, so every linear transform (casts, quantized kernels) applies."""
    weight = module.weight.detach().t().contiguous()  # (out, in)
    bias = getattr(module, "bias", None)
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    new.weight = _param(weight, module.weight)
    if bias is not None:
        new.bias = _param(bias.detach(), module.weight)
    return new.train(module.training)


def cast_output(module: nn.Module, args: Any, output: Any, *, dtype: torch.dtype) -> Any:
    """Forward hook: hand a cast embedding subclass's output on in the model's float ``dtype`` (the boundary
    ``SurgeryEmbedding`` keeps, for a subclass whose own forward cannot be rebuilt, e.g. OPT's learned positions)."""
    return output.to(dtype) if isinstance(output, torch.Tensor) and output.is_floating_point() else output


def _param(t: torch.Tensor, like: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=like.requires_grad)


def rebuild_linear(linear: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None, *,
                   cls: type = nn.Linear) -> nn.Linear:
    """A new ``cls`` instance (an ``nn.Linear`` subclass) holding ``weight`` and ``bias``."""
    new = cls(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    new.weight = _param(weight, linear.weight)
    if bias is not None:
        new.bias = _param(bias, linear.weight)
    return new.train(linear.training)


def rebuild_conv(conv: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, *,
                 cls: type | None = None) -> nn.Module:
    """A conv of the same geometry as ``conv`` (class ``cls``, default ``type(conv)``) holding new tensors."""
    cls = cls or type(conv)
    new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
              dilation=conv.dilation, groups=conv.groups, bias=bias is not None, padding_mode=conv.padding_mode,
              device="meta")
    new.weight = _param(weight, conv.weight)
    if bias is not None:
        new.bias = _param(bias, conv.weight)
    if getattr(conv, "channels_last", False):
        new.channels_last = True
    return new.train(conv.training)


def conv_base(conv: nn.Module) -> type:
    """The torch conv class (Conv1d/2d/3d) a conv module is, or raises TypeError."""
    for base in _CONVS:
        if isinstance(conv, base):
            return base
    raise TypeError(f"{type(conv).__name__} is not a Conv1d/2d/3d")


class ConcatLinear(nn.Module):
    """One linear whose output is the concatenation of several original linears' outputs.

    ``linear`` (an ``nn.Linear``, or what quantization made of it) computes all parts in one matmul;
    :class:`SplitOutput` modules stand where the originals were and hand each caller its slice. The
    fused output of one input is computed once and served to every part (kept until each part has taken
    its slice, keyed by the identity and version of the input tensor), so a caller that feeds the same
    hidden states to q, k and v runs one matmul instead of three.
    """

    def __init__(self, linear: nn.Module, sizes: tuple[int, ...]) -> None:
        super().__init__()
        self.linear = linear
        self.sizes = tuple(int(s) for s in sizes)
        self.offsets = tuple(sum(self.sizes[:i]) for i in range(len(self.sizes)))
        self._cache: tuple[Any, int, torch.Tensor, set[int]] | None = None

    @classmethod
    def from_linears(cls, linears: list[nn.Linear]) -> ConcatLinear:
        """Concatenate the weights (and biases: zeros for a part without one) of linears sharing one input."""
        first = linears[0]
        if any(lin.in_features != first.in_features or lin.weight.dtype != first.weight.dtype
               or lin.weight.device != first.weight.device for lin in linears):
            raise ValueError("linears to concatenate must share in_features, dtype and device")
        weight = torch.cat([lin.weight.detach() for lin in linears], dim=0)
        bias = None
        if any(lin.bias is not None for lin in linears):
            bias = torch.cat([lin.bias.detach() if lin.bias is not None else
                              torch.zeros(lin.out_features, dtype=first.weight.dtype, device=first.weight.device)
                              for lin in linears])
        cls_ = SurgeryLinear if any(isinstance(lin, SurgeryLinear) for lin in linears) else nn.Linear
        fused = rebuild_linear(first, weight, bias, cls=cls_)
        return cls(fused, tuple(lin.out_features for lin in linears))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    def part(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Output slice ``index`` of ``self(x)``, computing ``self(x)`` once per input (see the class doc)."""
        cached = self._cache
        version = _version(x)
        if cached is None or cached[0]() is not x or cached[1] != version or index in cached[3]:
            cached = (weakref.ref(x), version, self(x), set())
            self._cache = cached
        cached[3].add(index)
        out = cached[2].narrow(-1, self.offsets[index], self.sizes[index]).contiguous()
        if len(cached[3]) == len(self.sizes):
            self._cache = None  # every part served: do not keep activations alive between calls
        return out

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}"


def _version(t: torch.Tensor) -> int:
    """In-place version counter of ``t``; -1 for inference-mode tensors, which keep none."""
    try:
        return t._version
    except RuntimeError:
        return -1


class SplitOutput(nn.Module):
    """Stands where one of a :class:`ConcatLinear`'s original linears was: returns its slice of the output.

    Holds no tensors; the ConcatLinear is referenced, not registered (it is registered once, in the parent).
    """

    def __init__(self, source: ConcatLinear, index: int) -> None:
        super().__init__()
        self.__dict__["source"] = source  # not a submodule: one owner, many views
        self.index = index
        self.out_features = source.sizes[index]
        self.in_features = getattr(source.linear, "in_features", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.source.part(x, self.index)

    def extra_repr(self) -> str:
        return f"part={self.index}, out_features={self.out_features}"


class FusedAway(nn.Identity):
    """Stands where a module folded into its neighbour was (a BatchNorm after conv+bn folding, an activation
    after linear+activation fusion): passes its input through, and tells a second fusion it is done."""


class LinearAct(nn.Module):
    """``act(linear(x))`` as one module (one call instead of two; no fused kernel — see ``fuse.py``)."""

    def __init__(self, linear: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.linear, self.act = linear, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(x))


__all__ = ["ConcatLinear", "FusedAway", "LinearAct", "SURGERY_CONV", "SplitOutput", "SurgeryConv1d", "SurgeryConv2d",
           "SurgeryConv3d", "SurgeryEmbedding", "SurgeryLinear", "cast_output", "conv_base", "is_conv1d",
           "linear_from_conv1d", "rebuild_conv", "rebuild_linear"]
