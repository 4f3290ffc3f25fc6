"""Layout transform: ``channels_last`` for a Conv2d, ``packed`` for a streamed block.

* ``channels_last`` (Conv2d only; PyTorch's channels_last is a 4-D memory format): the conv becomes a
  ``SurgeryConv2d`` whose weight is stored channels_last and which converts its input to channels_last
  (a no-op when the previous conv already produced it). Its output stays channels_last, as PyTorch's
  conv produces it, so a chain of convs converts once; shapes and values are unchanged (a ``.view`` over
  such an output would need ``.reshape``; torch's ``flatten`` handles it).
* ``packed``: the block's weights stream as one unit — one contiguous region of the tensor store and one
  transfer per block (``SessionSpec(granularity="block")``) instead of one per linear. The runtime sets
  granularity for a whole session, so every streamed block must agree (``place.build_session_spec``
  refuses a mix with a clear error), and a resident block cannot be packed (it does not stream).
* ``default``: leaves a conv's layout and a block's streaming granularity as they are.
"""
from __future__ import annotations

import torch
from torch import nn

from autosurgeon.errors import InvalidArgumentError, UnsupportedTransformError
from autosurgeon.transforms.configs import LayoutConfig
from autosurgeon.transforms.modules import SurgeryConv2d, rebuild_conv
from autosurgeon.transforms.registry import TransformContext, register_transform


@register_transform(LayoutConfig)
def set_layout(module: nn.Module, config: LayoutConfig, *, fqn: str, context: TransformContext) -> nn.Module:
    """Give ``module`` the layout ``config`` names (see the module docstring); idempotent."""
    if config.layout == "default":
        context.skipped(fqn, config)
        return module
    if config.layout == "channels_last":
        if not isinstance(module, nn.Conv2d):
            raise UnsupportedTransformError(f"{fqn}: channels_last applies to Conv2d modules (a 4-D memory format); "
                                            f"{fqn} is a {type(module).__name__}.")
        if getattr(module, "channels_last", False):
            context.skipped(fqn, config)
            return module
        weight = module.weight.detach().contiguous(memory_format=torch.channels_last)
        bias = None if module.bias is None else module.bias.detach()
        cls = type(module) if isinstance(module, SurgeryConv2d) else SurgeryConv2d
        new = rebuild_conv(module, weight, bias, cls=cls)
        new.channels_last = True
        return new
    # packed
    if fqn not in context.placements:
        raise InvalidArgumentError(f"{fqn}: layout 'packed' applies to blocks with a placement; apply a PlaceConfig "
                                   "to it first (apply_plan does).")
    placement, spec = context.placements[fqn]
    if not spec.streamed:
        raise UnsupportedTransformError(f"{fqn}: layout 'packed' applies to streamed blocks; it is placed "
                                        f"{placement!r} (resident). Stream it (e.g. 'gpu<-cpu') or use 'default'.")
    if fqn in context.packed:
        context.skipped(fqn, config)
    context.packed.add(fqn)
    return module


__all__ = ["set_layout"]
