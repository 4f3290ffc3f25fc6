"""The precision table: what each weight precision is, asked by every consumer instead of its own list.

One row per precision a plan may name. The plan vocabulary (``knobs.PRECISIONS``), the search space's masks
and repair distance (``space.masks``), the byte formula (``cost.footprint``), the cost models' compute dtype
(``cost.base``) and the transforms (which precisions quantize, which take a group size or a kernel) all read
it, so adding a format is a row here plus its runtime kernel and its mask rule.

Columns:
    bits: stored bits per weight element (the search space's distance between precisions).
    itemsize: bytes per element of a float precision (None for a quantized one).
    runtime_format: the ``runtime.kernels`` weight format that stores it (None: a float dtype).
    grouped: one scale per group of ``group_size`` elements (a ``group_size`` knob applies), else per channel.
    compute_dtype: what the matrix product multiplies in (weight-only formats dequantize to float32
        activations; int8-dynamic multiplies int8 x int8; fp8 multiplies in float8).
    activation_quant: activations are quantized per call too (w8a8).
    code_bits: bits per stored code (quantized formats).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class Precision:
    """One row of the table (module docstring: columns)."""

    name: str
    bits: int
    itemsize: int | None = None
    runtime_format: str | None = None
    grouped: bool = False
    compute_dtype: str = "float32"
    activation_quant: bool = False

    @property
    def is_float(self) -> bool:
        return self.runtime_format is None

    @property
    def quantized(self) -> bool:
        return self.runtime_format is not None


_ROWS = (
    Precision("float32", 32, itemsize=4, compute_dtype="float32"),
    Precision("bfloat16", 16, itemsize=2, compute_dtype="bfloat16"),
    Precision("float16", 16, itemsize=2, compute_dtype="float16"),
    Precision("int8", 8, runtime_format="int8"),
    Precision("int4", 4, runtime_format="int4", grouped=True),
    Precision("int8-dynamic", 8, runtime_format="int8", compute_dtype="int8", activation_quant=True),
    Precision("fp8", 8, runtime_format="fp8", compute_dtype="float8_e4m3fn"),
)

TABLE: Mapping[str, Precision] = MappingProxyType({p.name: p for p in _ROWS})
# Plan vocabulary order (index 0 of a precision variable is the layer's own; this is the order of the rest).
NAMES: tuple[str, ...] = tuple(TABLE)
FLOAT_PRECISIONS: tuple[str, ...] = tuple(p.name for p in _ROWS if p.is_float)
QUANTIZED_PRECISIONS: frozenset[str] = frozenset(p.name for p in _ROWS if p.quantized)
GROUPED_PRECISIONS: frozenset[str] = frozenset(p.name for p in _ROWS if p.grouped)
FLOAT_ITEMSIZE: Mapping[str, int] = MappingProxyType({p.name: p.itemsize for p in _ROWS if p.itemsize})
PRECISION_BITS: Mapping[str, int] = MappingProxyType({p.name: p.bits for p in _ROWS})
PRECISION_FORMAT: Mapping[str, str | None] = MappingProxyType({p.name: p.runtime_format for p in _ROWS})


def precision(name: str) -> Precision:
    """The row of ``name``; KeyError lists the known precisions."""
    try:
        return TABLE[name]
    except KeyError:
        raise KeyError(f"unknown precision {name!r}; known: {', '.join(NAMES)}") from None


__all__ = ["FLOAT_ITEMSIZE", "FLOAT_PRECISIONS", "GROUPED_PRECISIONS", "NAMES", "PRECISION_BITS", "PRECISION_FORMAT",
           "Precision", "QUANTIZED_PRECISIONS", "TABLE", "precision"]
