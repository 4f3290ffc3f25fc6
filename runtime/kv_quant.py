"""Codecs for KV-cache storage: the model's float dtype, int8, or fp8 (e4m3), each per head and per token.

One scale per (batch row, head, token) keeps the error of a token independent of every other token's range
(keys have a few large channels per head, and their magnitudes drift along the sequence), and it makes a
token's stored bytes final the moment it is written: appending never re-quantizes anything (unlike a per-channel
scheme, which must wait for a group of tokens). Scales are float16: 2 bytes per head-token on top of ``head_dim``
bytes, so int8 at head_dim 64 stores 66 bytes where bfloat16 stores 128 (1.94x) and float32 256 (3.9x).
"""
from __future__ import annotations

import torch

from runtime.errors import JalapenoError

PRECISIONS: tuple[str, ...] = ("float", "int8", "fp8")
_INT8_MAX = 127.0
# float16 scales: the smallest normal float16, so a scale never flushes to zero (an all-zero token gets it).
_MIN_SCALE = 2.0 ** -14


def fp8_dtype() -> torch.dtype | None:
    """torch's float8 e4m3 dtype where this build has one (CPU tensors can hold it too), else ``None``."""
    return getattr(torch, "float8_e4m3fn", None)


class KVCodec:
    """Encode KV states ``(B, H, T, D)`` for storage and decode them back to the compute dtype.

    Args:
        precision: ``"float"`` (stored as ``dtype``, lossless), ``"int8"`` or ``"fp8"``.
        dtype: the model's compute dtype (what ``decode`` returns).
    """

    def __init__(self, precision: str, dtype: torch.dtype) -> None:
        if precision not in PRECISIONS:
            raise JalapenoError(f"`precision` must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
        self.precision = precision
        self.dtype = dtype
        if precision == "float":
            self.store_dtype = dtype
        elif precision == "int8":
            self.store_dtype = torch.int8
        else:
            fp8 = fp8_dtype()
            if fp8 is None:
                raise JalapenoError("precision 'fp8' needs torch.float8_e4m3fn, which this torch lacks; use 'int8'.")
            self.store_dtype = fp8
        self.scaled = precision != "float"
        self._qmax = _INT8_MAX if precision == "int8" else (torch.finfo(self.store_dtype).max if self.scaled else 1.0)

    def bytes_per_token(self, batch: int, heads: int, head_dim: int) -> int:
        """Stored bytes of one token's key *and* value in one layer (scales included)."""
        per_head = head_dim * self.store_dtype.itemsize + (2 if self.scaled else 0)
        return 2 * batch * heads * per_head

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(q, scale)``: ``q`` in the storage dtype, ``scale`` ``(B, H, T, 1)`` float16 (None for float)."""
        if not self.scaled:
            return x.to(self.store_dtype), None
        xf = x.float()
        # Rounded *up* to float16 (the 2^-10 nudge), so amax / scale never exceeds qmax: no clipping error.
        scale = (xf.abs().amax(dim=-1, keepdim=True) / self._qmax * (1 + 2 ** -10)).clamp(min=_MIN_SCALE)
        scale = scale.to(torch.float16)
        y = xf / scale.float()
        if self.precision == "int8":
            return y.round_().clamp_(-_INT8_MAX, _INT8_MAX).to(torch.int8), scale
        return y.clamp_(-self._qmax, self._qmax).to(self.store_dtype), scale

    def decode(self, q: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
        """The compute-dtype tensor ``q`` stands for."""
        if scale is None:
            return q.to(self.dtype)
        return (q.float() * scale.float()).to(self.dtype)
