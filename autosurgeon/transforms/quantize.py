"""Quantize transform: a linear/conv/embedding's weights at another precision.

* Float precisions (``float32``/``bfloat16``/``float16``) cast the weights and keep the dtype boundary:
  the replacement (``SurgeryLinear``/``SurgeryConvNd``/``SurgeryEmbedding``) casts its input to the weight
  dtype and its output back to the input's dtype (the embedding: back to the model's float dtype), so
  neighbours see the dtype they had. Mixed precisions therefore need no model-wide cast, which
  ``runtime.Session`` refuses (one float format per session); the session is given ``weight_format=None``.
  A module already in the target dtype is left alone. A weight shared by several modules (a head tied to
  the embedding) is cast once and stays shared: every sharer gets the cast-boundary class.
* ``int8`` / ``int4`` (group-wise) / ``fp8`` replace an ``nn.Linear`` by
  ``runtime.kernels.QuantizedLinear.from_linear`` (weight-only; the output comes back in the input's dtype).
  ``int8-dynamic`` is int8 weights with fbgemm's activation-quantizing ``int8-dynamic`` kernel, where the
  runtime has it on the layer's execution device.
* Convs and embeddings take float precisions only: the runtime has no quantized conv or embedding kernel.
  An embedding subclass with its own forward (OPT's learned positions take ``(mask, past, position_ids)``)
  cannot be rebuilt as a ``SurgeryEmbedding``: it keeps its class, its weight is cast in place and a forward
  hook (``modules.cast_output``) hands its output on in the model's dtype.
* Hugging Face's ``Conv1D`` (GPT-2: a linear with its weight stored ``(in, out)``) becomes the equivalent
  ``nn.Linear`` (``modules.linear_from_conv1d``) before any cast or quantization, so it takes every
  precision a linear does; at its own precision it is left as it is.
A fused linear (``ConcatLinear``) quantizes as one matrix, which is why fusion runs before quantization.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from autosurgeon.errors import UnsupportedTransformError
from autosurgeon.transforms.configs import QuantizeConfig
from autosurgeon.transforms.kernel import DYNAMIC, check_kernel
from autosurgeon.transforms.modules import (
    SURGERY_CONV,
    ConcatLinear,
    LinearAct,
    SurgeryEmbedding,
    SurgeryLinear,
    cast_output,
    conv_base,
    is_conv1d,
    linear_from_conv1d,
    rebuild_conv,
    rebuild_linear,
)
from autosurgeon.transforms.registry import TransformContext, register_transform
from runtime.kernels import QuantizedLinear

FLOAT_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                                        "float16": torch.float16}
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@register_transform(QuantizeConfig)
def quantize(module: nn.Module, config: QuantizeConfig, *, fqn: str, context: TransformContext) -> nn.Module:
    """Return ``module`` at ``config.precision`` (see the module docstring); idempotent."""
    if isinstance(module, (ConcatLinear, LinearAct)):
        inner = quantize(module.linear, config, fqn=f"{fqn}.linear", context=context)
        if inner is not module.linear:
            module.linear = inner
        return module
    if isinstance(module, QuantizedLinear):
        return _requantize(module, config, fqn=fqn, context=context)
    if is_conv1d(module):
        if config.precision in FLOAT_DTYPES and module.weight.dtype == FLOAT_DTYPES[config.precision]:
            context.skipped(fqn, config)
            return module
        if _shared(module.weight, module, context):
            raise UnsupportedTransformError(
                f"{fqn}: its Conv1D weight is shared with another module (tied); turning it into a linear would "
                "untie it. Keep its own precision.")
        module = linear_from_conv1d(module)
    if config.precision in FLOAT_DTYPES:
        return _cast(module, FLOAT_DTYPES[config.precision], config, fqn=fqn, context=context)
    if type(module) is not nn.Linear and not isinstance(module, SurgeryLinear):
        raise UnsupportedTransformError(
            f"{fqn}: precision {config.precision!r} needs an nn.Linear (runtime.kernels.QuantizedLinear); "
            f"{fqn} is a {type(module).__name__}, and the runtime has no quantized kernel for it. "
            "Use a float precision (float32, bfloat16, float16).")
    return _quantize_linear(module, config, fqn=fqn, context=context)


def _quantize_linear(linear: nn.Linear, config: QuantizeConfig, *, fqn: str, context: TransformContext) -> nn.Module:
    device = context.device_of(fqn)
    if config.precision == DYNAMIC:
        if config.kernel not in (None, "auto", DYNAMIC):
            raise UnsupportedTransformError(f"{fqn}: precision int8-dynamic runs only the {DYNAMIC!r} kernel, got "
                                            f"`kernel` {config.kernel!r}.")
        kernel = check_kernel(DYNAMIC, "int8", device, fqn=fqn)
        fmt = "int8"
    else:
        fmt = config.precision
        kernel = check_kernel(config.kernel, fmt, device, fqn=fqn)
    if _shared(linear.weight, linear, context):
        raise UnsupportedTransformError(
            f"{fqn}: its weight is shared with another module (tied); quantizing it would untie and duplicate "
            "the weight. Keep a float precision for it.")
    return QuantizedLinear.from_linear(linear, fmt, group_size=config.group_size, kernel=kernel)


def _requantize(q: QuantizedLinear, config: QuantizeConfig, *, fqn: str, context: TransformContext) -> nn.Module:
    """A layer already quantized: fine if it is in the target state, else refuse (requantizing is lossy)."""
    fmt = "int8" if config.precision == DYNAMIC else config.precision
    same = q.fmt == fmt and (fmt != "int4" or q.group_size == config.group_size)
    if config.precision == DYNAMIC:
        same = same and q.kernel == DYNAMIC
    elif q.kernel == DYNAMIC:
        same = False
    if not same:
        group = f", group {q.group_size}" if q.group_size else ""
        raise UnsupportedTransformError(
            f"{fqn}: already quantized ({q.fmt}{group}, kernel {q.kernel or 'auto'}); it cannot be turned into "
            f"{config.precision!r} without the original weights. Apply plans to the unmodified model "
            "(apply_plan deep-copies it unless inplace=True).")
    if config.kernel not in (None, "auto") and q.kernel != config.kernel and config.precision != DYNAMIC:
        q.kernel = check_kernel(config.kernel, q.fmt, context.device_of(fqn), fqn=fqn)
        q.release_prepared()
        return q
    context.skipped(fqn, config)
    return q


def _shared(weight: torch.Tensor, owner: nn.Module, context: TransformContext) -> list[tuple[str, nn.Module]]:
    """Other modules of the model whose ``weight`` is this very tensor (tied weights)."""
    if context.root is None:
        return []
    return [(name, m) for name, m in context.root.named_modules(remove_duplicate=False)
            if m is not owner and getattr(m, "weight", None) is weight]


def _cast(module: nn.Module, dtype: torch.dtype, config: QuantizeConfig, *, fqn: str,
          context: TransformContext) -> nn.Module:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        raise UnsupportedTransformError(f"{fqn}: precision {config.precision!r} needs a module with a float "
                                        f"weight; {fqn} is a {type(module).__name__}.")
    if weight.dtype == dtype:
        context.skipped(fqn, config)
        return module
    new_weight = nn.Parameter(weight.detach().to(dtype), requires_grad=weight.requires_grad)
    sharers = _shared(weight, module, context)
    for name, other in sharers:  # tied: every sharer gets the cast boundary and the same new parameter
        parent_name, _, child = name.rpartition(".")
        parent = context.root.get_submodule(parent_name) if parent_name else context.root  # type: ignore[union-attr]
        setattr(parent, child, _cast_one(other, new_weight, dtype, fqn=name))
    return _cast_one(module, new_weight, dtype, fqn=fqn)


def _cast_one(module: nn.Module, weight: nn.Parameter, dtype: torch.dtype, *, fqn: str) -> nn.Module:
    bias = getattr(module, "bias", None)
    bias = None if bias is None else bias.detach().to(dtype)
    if isinstance(module, nn.Linear):
        return _with_weight(rebuild_linear(module, weight.detach(), bias, cls=SurgeryLinear), weight)
    if isinstance(module, _CONVS):
        return _with_weight(rebuild_conv(module, weight.detach(), bias, cls=SURGERY_CONV[conv_base(module)]), weight)
    if isinstance(module, nn.Embedding) and type(module).forward is not nn.Embedding.forward and not isinstance(
            module, SurgeryEmbedding):
        out_dtype = getattr(module, "output_dtype", module.weight.dtype)
        module.weight = weight  # cast in place: its own forward stays (module docstring)
        if not any(getattr(h, "func", None) is cast_output for h in module._forward_hooks.values()):
            module.register_forward_hook(functools.partial(cast_output, dtype=out_dtype))
        return module
    if isinstance(module, nn.Embedding):
        new = SurgeryEmbedding(module.num_embeddings, module.embedding_dim, padding_idx=module.padding_idx,
                               max_norm=module.max_norm, norm_type=module.norm_type,
                               scale_grad_by_freq=module.scale_grad_by_freq, sparse=module.sparse, device="meta")
        new.output_dtype = getattr(module, "output_dtype", module.weight.dtype)
        new.weight = weight
        return new.train(module.training)
    raise UnsupportedTransformError(f"{fqn}: float precision casts apply to Linear, Conv1d/2d/3d and Embedding "
                                    f"modules; {fqn} is a {type(module).__name__}.")


def _with_weight(module: nn.Module, weight: nn.Parameter) -> nn.Module:
    module.weight = weight  # the one shared Parameter object (keeps ties tied)
    return module


__all__ = ["FLOAT_DTYPES", "quantize"]
