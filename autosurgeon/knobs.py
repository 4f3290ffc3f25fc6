"""The vocabulary of surgery decisions: knob names and the values each may take.

One place for it, because the plan format, the search space, the transforms and every proposer must agree
on the spelling of a decision ("int4", "gpu<-cpu", …); a plan written today names these strings.
Which values are *valid for one layer on one device* is the search space's business (``space.py``); this
module only says which values exist at all.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autosurgeon.errors import InvalidArgumentError

# Precision of a linear/conv's weights. "int8"/"int4" are weight-only (activations stay float);
# "int8-dynamic" quantizes activations per call too (fbgemm's w8a8 path); "fp8" needs a GPU that has it.
PRECISIONS: tuple[str, ...] = ("float32", "bfloat16", "float16", "int8", "int4", "int8-dynamic", "fp8")
QUANTIZED_PRECISIONS: frozenset[str] = frozenset({"int8", "int4", "int8-dynamic", "fp8"})

# Group size of int4 weights (elements sharing one scale).
GROUP_SIZES: tuple[int, ...] = (32, 64, 128, 256)

# Placement of a block, written "EXECUTES<-HOME": where it runs, and the slower tier its weights stream from.
# A bare "gpu"/"cpu" is resident on the device it runs on. "dla" exists on Jetson profiles (on paper).
PLACEMENTS: tuple[str, ...] = ("gpu", "gpu<-cpu", "gpu<-disk", "cpu", "cpu<-disk", "dla")

# Fusion of one fusible group (conv+bn fold, linear+activation, QKV / gate-up concatenation).
FUSIONS: tuple[str, ...] = ("none", "fuse")

# Memory layout: channels_last for convs; "packed" keeps a streamed block's weights in one contiguous buffer.
LAYOUTS: tuple[str, ...] = ("default", "channels_last", "packed")

# Kernel choice of a quantized layer: "auto" picks by micro-benchmark; any other value is a runtime kernel
# name (the runtime's registry is open, so the set is not closed here).
KERNEL_AUTO = "auto"

KNOB_VALUES: Mapping[str, tuple[Any, ...] | None] = {
    "precision": PRECISIONS,
    "group_size": GROUP_SIZES,
    "placement": PLACEMENTS,
    "fusion": FUSIONS,
    "layout": LAYOUTS,
    "kernel": None,  # open set: "auto" or a kernel name from runtime.kernels
}
KNOBS: tuple[str, ...] = tuple(KNOB_VALUES)


def placement_parts(placement: str) -> tuple[str, str | None]:
    """Split a placement into (execution unit kind, home tier or None for resident).

    >>> placement_parts("gpu<-disk")
    ('gpu', 'disk')
    """
    validate_decision("placement", placement)
    unit, _, home = placement.partition("<-")
    return unit, (home or None)


def validate_decision(knob: str, value: Any, *, where: str = "decision") -> None:
    """Raise ``InvalidArgumentError`` unless ``knob`` exists and ``value`` is one of its values."""
    if knob not in KNOB_VALUES:
        raise InvalidArgumentError(
            f"{where}: unknown knob {knob!r}; known knobs are {', '.join(KNOBS)}.")
    allowed = KNOB_VALUES[knob]
    if allowed is None:
        if not isinstance(value, str) or not value:
            raise InvalidArgumentError(
                f"{where}: `{knob}` must be a non-empty string ({KERNEL_AUTO!r} or a kernel name), got {value!r}.")
        return
    if value not in allowed:
        raise InvalidArgumentError(
            f"{where}: `{knob}` must be one of {', '.join(map(str, allowed))}, got {value!r}.")
