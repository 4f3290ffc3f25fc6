"""Device hooks for a block whose execution device differs from the rest of the model's (e.g. a block computed on
the host next to GPU blocks): its inputs are moved there and its outputs back. Re-exported by
:mod:`runtime.streaming`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


def move_to(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor inside (tuples, lists, dicts) moved to ``device``."""
    if isinstance(value, torch.Tensor):
        if value.device == device:
            return value
        # Asynchronous only host->device: a non-blocking device->host copy may land in pinned memory the
        # host reads before the copy finished.
        return value.to(device, non_blocking=device.type == "cuda")
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(move_to(v, device) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(move_to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: move_to(v, device) for k, v in value.items()}
    return value


def attach_device_hooks(block: nn.Module, device: torch.device, return_device: torch.device) -> list[Any]:
    """Run ``block`` on ``device``: move its inputs there and its outputs back to ``return_device``.

    Returns the hook handles (``handle.remove()`` detaches). Used for blocks whose execution device
    differs from the rest of the model's (e.g. a block computed on the host next to GPU blocks).
    """
    def pre(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return move_to(args, device), move_to(kwargs, device)

    def post(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        return move_to(output, return_device)

    return [block.register_forward_pre_hook(pre, with_kwargs=True),
            block.register_forward_hook(post, with_kwargs=True)]
