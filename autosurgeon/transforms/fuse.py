"""Fuse transform: conv+BatchNorm folding, q/k/v and gate/up concatenation, linear+activation.

* ``conv-bn`` (target: the conv). The BatchNorm registered right after the conv in the same parent (the
  pairing the search space's fusion groups use) is folded into the conv, in float64 then cast back:
  ``W' = W * g / sqrt(var + eps)``, ``b' = (b - mean) * g / sqrt(var + eps) + beta``. Exact math for an
  eval-mode BatchNorm (running statistics), so a BatchNorm in training mode is refused. The BatchNorm's
  place is taken by ``FusedAway`` (an identity).
* ``qkv`` / ``gate-up`` (target: the attention / MLP module). One linear with the members' weights
  concatenated along the output dimension (``ConcatLinear``, registered as ``qkv_proj`` / ``gate_up_proj``
  before the first member), and a ``SplitOutput`` in each member's place returning that member's slice.
  The model's own forward (transformers reads ``self.q_proj`` etc.) runs unchanged: one matmul serves the
  three calls on the same hidden states. Outputs equal the separate linears' up to float rounding of a
  differently blocked matmul. Fusion must run before quantization so the fused matrix quantizes as one
  (per-channel int8 scales are per output row, so they equal the members'; int4 groups run along K, so
  those are unchanged too).
* ``linear-act`` (target: a linear in an ``nn.Sequential`` whose next module is an activation): one
  ``LinearAct`` module computing ``act(linear(x))``. In eager PyTorch this saves one module call, not a
  kernel's memory round trip (there is no fused linear-activation kernel in the runtime); it is limited
  to ``nn.Sequential`` because only there does module order equal data flow.
"""
from __future__ import annotations

import torch
from torch import nn

from autosurgeon.errors import InvalidArgumentError, UnsupportedTransformError
from autosurgeon.transforms.configs import FuseConfig
from autosurgeon.transforms.modules import ConcatLinear, FusedAway, LinearAct, SplitOutput, rebuild_conv
from autosurgeon.transforms.registry import TransformContext, register_transform

# Fused linear's attribute name and the members it replaces, per concatenation kind.
CONCAT_GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "qkv": ("qkv_proj", ("q_proj", "k_proj", "v_proj")),
    "gate-up": ("gate_up_proj", ("gate_proj", "up_proj")),
}
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Hardswish,
               nn.Mish)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@register_transform(FuseConfig)
def fuse(module: nn.Module, config: FuseConfig, *, fqn: str, context: TransformContext) -> nn.Module:
    """Fuse the group ``fqn`` names (see the module docstring); idempotent."""
    if config.kind == "conv-bn":
        return _fold_conv_bn(module, config, fqn=fqn, context=context)
    if config.kind == "linear-act":
        return _linear_act(module, config, fqn=fqn, context=context)
    return _concat(module, config, fqn=fqn, context=context)


def _parent_and_next(fqn: str, context: TransformContext) -> tuple[nn.Module, str | None]:
    """The parent of ``fqn`` and the name of the child registered right after it (None if last)."""
    if context.root is None or not fqn:
        raise InvalidArgumentError("this fusion needs the model: call transform(model, config, fqn=...).")
    parent_name, _, name = fqn.rpartition(".")
    parent = context.root.get_submodule(parent_name) if parent_name else context.root
    names = list(parent._modules)
    i = names.index(name)
    return parent, (names[i + 1] if i + 1 < len(names) else None)


def _fold_conv_bn(conv: nn.Module, config: FuseConfig, *, fqn: str, context: TransformContext) -> nn.Module:
    if not isinstance(conv, _CONVS):
        raise InvalidArgumentError(f"{fqn}: conv-bn fusion targets the conv; {fqn} is a {type(conv).__name__}.")
    parent, nxt = _parent_and_next(fqn, context)
    bn = parent._modules.get(nxt) if nxt is not None else None
    if isinstance(bn, FusedAway):
        context.skipped(fqn, config)
        return conv
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise UnsupportedTransformError(f"{fqn}: conv-bn fusion needs a BatchNorm registered right after the conv; "
                                        f"the next module is {type(bn).__name__ if bn is not None else 'none'}.")
    name = f"{fqn.rpartition('.')[0]}.{nxt}".lstrip(".")
    if bn.training:
        raise UnsupportedTransformError(f"{name}: folding needs the BatchNorm in eval mode (running statistics); "
                                        "call model.eval() first.")
    if bn.running_mean is None or bn.running_var is None:
        raise UnsupportedTransformError(f"{name}: folding needs running statistics (track_running_stats=True).")
    if bn.num_features != conv.out_channels:
        raise UnsupportedTransformError(f"{name}: {bn.num_features} features, but {fqn} has {conv.out_channels} "
                                        "output channels.")
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(conv.out_channels, dtype=torch.float64,
                                                                              device=w.device)
    inv = torch.rsqrt(bn.running_var.detach().double() + bn.eps)
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(inv)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(inv)
    scale = gamma * inv
    w_new = (w * scale.view(-1, *[1] * (w.dim() - 1))).to(conv.weight.dtype)
    b_new = ((b - bn.running_mean.detach().double()) * scale + beta).to(conv.weight.dtype)
    if getattr(conv, "channels_last", False) and w_new.dim() == 4:
        w_new = w_new.contiguous(memory_format=torch.channels_last)
    setattr(parent, nxt, FusedAway())
    return rebuild_conv(conv, w_new, b_new)


def _concat(module: nn.Module, config: FuseConfig, *, fqn: str, context: TransformContext) -> nn.Module:
    fused_name, parts = CONCAT_GROUPS[config.kind]
    members = [getattr(module, p, None) for p in parts]
    if all(isinstance(m, SplitOutput) for m in members) and isinstance(getattr(module, fused_name, None), ConcatLinear):
        context.skipped(fqn, config)
        return module
    bad = [p for p, m in zip(parts, members) if not isinstance(m, nn.Linear)]
    if bad:
        kinds = ", ".join(f"{p}: {type(getattr(module, p, None)).__name__}" for p in bad)
        raise UnsupportedTransformError(
            f"{fqn}: {config.kind} fusion needs {', '.join(parts)} to be float nn.Linear modules ({kinds}); "
            "fuse before quantizing.")
    if fused_name in module._modules or hasattr(type(module), fused_name):
        raise UnsupportedTransformError(f"{fqn}: already has an attribute {fused_name!r}; cannot install the fused "
                                        "linear under that name.")
    try:
        fused = ConcatLinear.from_linears(members)  # type: ignore[arg-type]
    except ValueError as exc:
        raise UnsupportedTransformError(f"{fqn}: cannot concatenate {', '.join(parts)}: {exc}.") from None
    # Register the fused linear where the first member was, so module order (streaming and prefetch order)
    # still follows the data flow; each member's slot gets its output slice.
    children = list(module._modules.items())
    module._modules.clear()
    for name, child in children:
        if name == parts[0]:
            module._modules[fused_name] = fused
        module._modules[name] = child
    for i, p in enumerate(parts):
        setattr(module, p, SplitOutput(fused, i))
    return module


def _linear_act(linear: nn.Module, config: FuseConfig, *, fqn: str, context: TransformContext) -> nn.Module:
    if isinstance(linear, LinearAct):
        context.skipped(fqn, config)
        return linear
    if not isinstance(linear, nn.Linear):
        raise InvalidArgumentError(f"{fqn}: linear-act fusion targets a linear; {fqn} is a {type(linear).__name__}.")
    parent, nxt = _parent_and_next(fqn, context)
    act = parent._modules.get(nxt) if nxt is not None else None
    if not isinstance(parent, nn.Sequential) or not isinstance(act, ACTIVATIONS):
        raise UnsupportedTransformError(
            f"{fqn}: linear-act fusion needs the linear followed by an activation module inside an nn.Sequential "
            f"(where module order is data flow); its parent is a {type(parent).__name__} and the next module "
            f"is {type(act).__name__ if act is not None else 'none'}.")
    setattr(parent, nxt, FusedAway())
    return LinearAct(linear, act)


__all__ = ["ACTIVATIONS", "CONCAT_GROUPS", "fuse"]
