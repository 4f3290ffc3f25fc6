"""Run a model with some linear/conv units at another precision, then put the originals back.

Used to MEASURE (sensitivity, quality of a plan), not to deploy (that is ``transforms/``): each unit is
swapped for a module that computes with the runtime's real numerics, and the original module object is
put back afterwards, untouched, so the model's ``state_dict`` is bit-identical after the ``with`` block.

Numerics per precision:
  * ``bfloat16`` / ``float16``: cast input, weight and bias, compute, cast the output back;
  * Hugging Face's ``Conv1D`` (GPT-2) is measured as the ``nn.Linear`` it equals
    (``transforms.modules.linear_from_conv1d``), as the quantize transform deploys it;
  * ``int8`` / ``int4`` on ``nn.Linear``: ``runtime.kernels.QuantizedLinear.from_linear`` with the
    device's default weight-only kernel (the exact module a plan deploys);
  * ``int8-dynamic`` on ``nn.Linear``: the same module with the fbgemm w8a8 kernel ``"int8-dynamic"``
    (activations quantized too), only where the runtime has it (:func:`supported_precisions`);
  * ``int8`` / ``int4`` on convs: the runtime has no quantized conv kernel, so the conv runs in float on
    ``runtime.kernels.dequantize(quantize_weight(W as (out, in*kh*kw)))``: the runtime's format numerics,
    float arithmetic (which is what a dequantizing conv kernel would compute).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from autosurgeon.errors import InvalidArgumentError
from autosurgeon.transforms.modules import is_conv1d, linear_from_conv1d
from runtime.kernels import QuantizedLinear, available_kernels, dequantize, quantize_weight

FLOAT_CASTS: dict[str, torch.dtype] = {"bfloat16": torch.bfloat16, "float16": torch.float16}
INT_FORMATS = ("int8", "int4")
MEASURABLE = ("float32", "bfloat16", "float16", "int8", "int4", "int8-dynamic")
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_unit(module: nn.Module) -> bool:
    """Whether ``module`` is a precision unit: an ``nn.Linear`` (or a ``Conv1D``) or an ``nn.Conv{1,2,3}d`` leaf."""
    return isinstance(module, (nn.Linear, *_CONVS)) or is_conv1d(module)


def precision_units(model: nn.Module) -> list[str]:
    """FQNs of every linear/conv leaf, in module order."""
    return [name for name, module in model.named_modules() if name and is_unit(module)]


def supported_precisions(module: nn.Module) -> tuple[str, ...]:
    """The precisions :func:`swapped` can give ``module`` here (``int8-dynamic``: linears, where fbgemm is)."""
    if not is_unit(module):
        return ()
    base = ("float32", "bfloat16", "float16", "int8", "int4")
    device = module.weight.device
    if (isinstance(module, nn.Linear) or is_conv1d(module)) and "int8-dynamic" in available_kernels("int8", device):
        return (*base, "int8-dynamic")
    return base


class _CastUnit(nn.Module):
    """Computes the wrapped linear/conv in ``dtype``: cast input and weights, compute, cast the output back."""

    def __init__(self, unit: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.unit, self.dtype = unit, dtype

    @property
    def weight(self) -> torch.Tensor:  # models read it (ViT casts its pixels to the projection's dtype)
        return self.unit.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.unit.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.unit.weight.detach().to(self.dtype)
        b = None if self.unit.bias is None else self.unit.bias.detach().to(self.dtype)
        if isinstance(self.unit, nn.Linear):
            y = F.linear(x.to(self.dtype), w, b)
        else:
            y = self.unit._conv_forward(x.to(self.dtype), w, b)
        return y.to(x.dtype)


class _DequantConv(nn.Module):
    """A conv whose weight went through the runtime's int8/int4 format (quantize then dequantize)."""

    def __init__(self, conv: nn.Module, fmt: str, group_size: int) -> None:
        super().__init__()
        self.conv = conv
        self.register_buffer("weight_q", quantized_copy(conv.weight, fmt, group_size=group_size))

    @property
    def weight(self) -> torch.Tensor:  # as _CastUnit: the model may read its conv's weight
        return self.conv.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv._conv_forward(x, self.weight_q.to(x.dtype), self.conv.bias)


def quantized_copy(weight: torch.Tensor, precision: str, *, group_size: int = 128) -> torch.Tensor:
    """``Q(W)``: the weight as the runtime stores it for ``precision``, back in ``weight``'s dtype.

    Weights of more than two dimensions (convs) are quantized as ``(out, in * kh * kw)``. ``int8-dynamic``
    stores its weight as ``int8`` (its activation rounding is not a weight change).
    """
    w = weight.detach()
    if precision == "float32":
        return w.clone()
    if precision in FLOAT_CASTS:
        return w.to(FLOAT_CASTS[precision]).to(w.dtype)
    fmt = "int8" if precision == "int8-dynamic" else precision
    if fmt not in INT_FORMATS:
        raise InvalidArgumentError(f"`precision` must be one of {MEASURABLE}, got {precision!r}.")
    w2 = w.reshape(w.shape[0], -1).float()
    qw = quantize_weight(w2, fmt, group_size=group_size)
    return dequantize(qw).reshape(w.shape).to(w.dtype)


def weight_perturbation(module: nn.Module, precision: str, *, group_size: int = 128) -> float:
    """``||Q(W) - W||^2`` (squared Frobenius norm) of ``module``'s weight under ``precision``."""
    w = module.weight.detach()
    if is_conv1d(module):
        w = w.t()  # (out, in): quantized per output channel, as the deployed linear is
    return float((quantized_copy(w, precision, group_size=group_size).double() - w.double()).pow(2).sum())


def replacement(module: nn.Module, precision: str, *, group_size: int = 128, name: str = "unit") -> nn.Module:
    """The module that computes ``module`` at ``precision`` (``module`` itself for ``float32``)."""
    allowed = supported_precisions(module)
    if precision not in allowed:
        raise InvalidArgumentError(
            f"unit {name!r} ({type(module).__name__}) cannot be measured at precision {precision!r} here; "
            f"choose one of {allowed}."
        )
    if precision == "float32":
        return module
    if is_conv1d(module):
        module = linear_from_conv1d(module)
    if precision in FLOAT_CASTS:
        return _CastUnit(module, FLOAT_CASTS[precision])
    if isinstance(module, nn.Linear):
        if precision == "int8-dynamic":
            return QuantizedLinear.from_linear(module, "int8", kernel="int8-dynamic")
        return QuantizedLinear.from_linear(module, precision, group_size=group_size)
    return _DequantConv(module, precision, group_size)


def _parent(model: nn.Module, fqn: str) -> tuple[nn.Module, str]:
    parent_name, _, child = fqn.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


@contextlib.contextmanager
def swapped(model: nn.Module, decisions: Mapping[str, str], *, group_size: int = 128) -> Iterator[nn.Module]:
    """Within the block, ``model`` computes each ``{fqn: precision}`` unit at that precision.

    All replacements are built before any is installed (a bad FQN or precision changes nothing), and the
    original module objects are restored on exit, also on error.

    Raises:
        InvalidArgumentError: an FQN is not a linear/conv unit of ``model``, or a precision is unsupported.
    """
    plan: list[tuple[nn.Module, str, nn.Module, nn.Module]] = []
    for fqn, precision in decisions.items():
        try:
            module = model.get_submodule(fqn)
        except AttributeError:
            raise InvalidArgumentError(
                f"unit {fqn!r} is not a module of the model; see precision_units(model).") from None
        if not is_unit(module):
            raise InvalidArgumentError(f"unit {fqn!r} is a {type(module).__name__}, not a linear/conv unit.")
        new = replacement(module, precision, group_size=group_size, name=fqn)
        if new is not module:
            parent, child = _parent(model, fqn)
            plan.append((parent, child, module, new))
    try:
        for parent, child, _old, new in plan:
            setattr(parent, child, new)
        yield model
    finally:
        for parent, child, old, _new in reversed(plan):
            setattr(parent, child, old)
