"""The least memory budget an unplanned model can run in on its execution tier, per weight format.

``autosurgeon run`` and ``api.apply`` without a plan place blocks by ``default_placement.build_spec``. Below
some budget nothing can work: the modules outside the blocks (embeddings, head, final norm) and every block's
vectors (norms) stay resident on the execution device, and a streamed block still needs one staging slot as
large as its largest streamed module. That floor is reached with every block streamed from the slower tier
(pinned host memory or disk next to a GPU, disk next to a CPU; the disk is unbounded) and no lookahead. This
module computes it the way the runtime charges it (``runtime.session.Session._units`` and
``runtime.streaming.Streamer._reserve_slots``: resident tensors at their size, a staging slot as the sum of
its tensors each 256-byte aligned), for the model as it is and for each ``--weight-format`` it could be
given (``float*``: the whole model cast; ``int8``/``int4``: the blocks' linears quantized, int4 in groups of
128 or ``space.masks.default_group_size`` on narrower layers), so a
refusal names the real minimum rather than the next allocation that failed.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from autosurgeon.cost.footprint import FLOAT_ITEMSIZE, tensor_bytes
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.space.masks import default_group_size
from runtime.session import find_blocks
from runtime.sizes import format_bytes
from runtime.tensors import tier_of

FORMATS = ("float32", "bfloat16", "float16", "int8", "int4")  # runtime's weight formats (`run --weight-format`)
GROUP_SIZE = 128  # runtime.session.quantize_linears' default
_ALIGN = 256  # runtime.tensors.ALIGN


@dataclass(frozen=True)
class Floor:
    """The least bytes on the execution tier: ``resident`` (outside blocks + block vectors) + one ``slot``."""

    weight_format: str | None  # None: the model as it is
    resident: int
    slot: int
    reserve: int = 0

    @property
    def total(self) -> int:
        return self.resident + self.slot + self.reserve


def least_budget(model: Any, *, weight_format: str | None = None, exclude: Iterable[int] = (),
                 reserve: int = 0) -> Floor:
    """The floor (module docstring) for ``model`` as it is (``weight_format=None``) or in ``weight_format``.

    ``exclude``: ids of modules managed elsewhere (streamed experts); ``reserve``: bytes already spoken for
    on the execution tier (the expert cache)."""
    from torch import nn


    if weight_format is not None and weight_format not in FORMATS:
        raise InvalidArgumentError(f"`weight_format` must be one of {', '.join(FORMATS)}, got {weight_format!r}.")
    skip = set(exclude)
    path, blocks = find_blocks(model)
    prefix = path + "."
    nbytes = _tensor_bytes(weight_format)
    resident = slot = 0
    for name, module in model.named_modules():
        if id(module) in skip or name == path:
            continue
        tensors = [(t, module, attr) for attr, t in [*module._parameters.items(), *module._buffers.items()]
                   if t is not None]
        if not tensors:
            continue
        in_block = name.startswith(prefix)
        sizes = [part for t, mod, attr in tensors
                 for part in nbytes(t, mod, attr, in_block and isinstance(mod, nn.Linear))]
        if not in_block or all(t.dim() <= 1 for t, _, _ in tensors):
            resident += sum(sizes)  # resident units are charged at their size (registered in place)
        else:
            slot = max(slot, sum(_aligned(s) for s in sizes))  # a staging slot: each tensor aligned
    return Floor(weight_format, resident, slot, reserve)


def check_budget_floor(model: Any, *, device: str, budgets: dict[str, int], weight_format: str | None = None,
                       exclude: Iterable[int] = (), reserve: int = 0, name: str = "the model",
                       argument: str = "--memory-budget", format_argument: str | None = "--weight-format") -> None:
    """Refuse a budget on ``device``'s tier below the floor, naming the floor as asked and the least over formats.

    Raises:
        InvalidArgumentError: the budget cannot hold even the floor in the asked format.
    """

    tier = tier_of(device)
    budget = budgets.get(tier)
    if budget is None:
        return
    floor = least_budget(model, weight_format=weight_format, exclude=exclude, reserve=reserve)
    if budget >= floor.total:
        return
    shown = weight_format or "the weights as loaded"
    parts = (f"{format_bytes(floor.resident)} resident outside the blocks and in their norms + one staging slot of "
             f"{format_bytes(floor.slot)} for the largest streamed module"
             + (f" + {format_bytes(floor.reserve)} of expert cache" if floor.reserve else ""))
    message = (f"`{argument}` gives the {tier} tier {format_bytes(budget)} ({budget} B), below the least {name} can "
               f"run in there: {format_bytes(floor.total)} ({floor.total} B) with {shown}, every block streamed "
               f"from a slower tier and no lookahead ({parts}).")
    if format_argument is not None:
        others = [least_budget(model, weight_format=f, exclude=exclude, reserve=reserve) for f in FORMATS]
        best = min(others, key=lambda f: f.total)
        if best.total < floor.total:
            message += (f" The least over weight formats is {format_bytes(best.total)} ({best.total} B) with "
                        f"`{format_argument} {best.weight_format}`.")
            if budget >= best.total:
                message += f" Raise the {tier} budget to at least {format_bytes(floor.total)}, or use that format."
                raise InvalidArgumentError(message)
            message += (f" Raise the {tier} budget to at least {format_bytes(best.total)} with that format "
                        f"(or {format_bytes(floor.total)} as asked).")
            raise InvalidArgumentError(message)
    raise InvalidArgumentError(message + f" Raise the {tier} budget to at least {format_bytes(floor.total)}.")


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _tensor_bytes(weight_format: str | None) -> Callable[[Any, Any, str, bool], list[int]]:
    """Per tensor: its stored parts' bytes once the model is put in ``weight_format`` (None: as it is)."""

    def as_is(t: Any) -> int:
        return t.numel() * t.element_size()

    def nbytes(t: Any, module: Any, attr: str, quantizable: bool) -> list[int]:
        if weight_format is None:
            return [as_is(t)]
        if weight_format in FLOAT_ITEMSIZE:  # model.to(dtype): floating tensors cast, others kept
            return [t.numel() * FLOAT_ITEMSIZE[weight_format] if t.is_floating_point() else as_is(t)]
        if not quantizable:
            return [as_is(t)]
        if attr == "weight":  # codes, scales (and offsets); the bias is counted on its own, in float32
            out = t.shape[0]
            return tensor_bytes(t.numel(), out, weight_format, default_group_size(t.shape[-1], GROUP_SIZE))
        if attr == "bias":
            return [4 * t.numel()]
        return [as_is(t)]

    return nbytes
