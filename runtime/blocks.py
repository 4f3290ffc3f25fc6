"""Where a model's blocks are and what they hold: the block list, in-place linear quantization, tensor bytes.

Split from ``runtime.session`` (which re-exports every name) so the Session file holds the Session only.
"""
from __future__ import annotations

from torch import nn

from runtime.errors import JalapenoError


def find_blocks(model: nn.Module, path: str | None = None) -> tuple[str, nn.ModuleList]:
    """The model's list of blocks: ``path`` if given, else the ModuleList holding the most parameters."""
    if path is not None:
        try:
            blocks = model.get_submodule(path)
        except AttributeError:
            raise JalapenoError(f"`block_path` {path!r} names no submodule of {type(model).__name__}.") from None
        if not isinstance(blocks, (nn.ModuleList, nn.Sequential)):
            raise JalapenoError(f"`block_path` {path!r} is a {type(blocks).__name__}, not a ModuleList.")
        return path, blocks  # type: ignore[return-value]
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module):
            size = sum(p.numel() for p in module.parameters())
            if best is None or size > best[0]:
                best = (size, name, module)
    if best is None:
        raise JalapenoError(f"{type(model).__name__} has no nn.ModuleList of blocks; pass `block_path`.")
    return best[1], best[2]


def quantize_linears(block: nn.Module, fmt: str, group_size: int = 128) -> int:
    """Replace each nn.Linear in ``block`` by a QuantizedLinear; returns how many were replaced."""
    try:
        from runtime.kernels import QuantizedLinear  # lazy: the kernels package is optional at this layer's import
    except ImportError as exc:  # the kernels package is optional at this layer's import time
        raise JalapenoError(f"weight_format {fmt!r} needs runtime.kernels.QuantizedLinear: {exc}") from exc
    count = 0
    for name, child in list(block.named_children()):
        if isinstance(child, nn.Linear):
            setattr(block, name, QuantizedLinear.from_linear(child, fmt, group_size=group_size))
            count += 1
        else:
            count += quantize_linears(child, fmt, group_size)
    return count


def own_bytes(module: nn.Module) -> int:
    """Bytes of the tensors ``module`` owns directly (not its submodules')."""
    return sum(t.numel() * t.element_size() for t in [*module._parameters.values(), *module._buffers.values()]
               if t is not None)


def module_bytes(module: nn.Module) -> int:
    """Bytes of every tensor in ``module`` and its submodules."""
    return sum(own_bytes(m) for m in module.modules())


__all__ = ["find_blocks", "module_bytes", "own_bytes", "quantize_linears"]
