"""Weight formats: what a quantized weight is, how it is made and how it is turned back into floats.

Three formats, all "weight-only" (activations stay float; only the int8-dynamic *kernel* quantizes them):

``int8``  per-output-channel symmetric. ``qweight`` int8 (N, K), ``scales`` float32 (N,);
          ``w[n, k] = qweight[n, k] * scales[n]``, ``scales = amax(|w[n]|) / 127``.
``int4``  group-wise asymmetric along K, ``group_size`` a multiple of 32 (default 128).
          ``qweight`` uint8 (N, Kp // 2) with Kp = K rounded up to the group size, two 4-bit codes per byte;
          ``scales`` and ``offsets`` float32 (N, Kp // group_size);
          ``w[n, k] = q[n, k] * scales[n, g] + offsets[n, g]`` with g = k // group_size, q in [0, 15]
          (``offsets`` is the group minimum, i.e. ``-zero_point * scale``).
          Nibble layout (chosen so an AVX-512 lane loads 16 bytes and gets 32 consecutive k with one
          AND and one shift): within every 32-wide block of K, byte j (0 <= j < 16) holds k = j in its
          low nibble and k = j + 16 in its high nibble.
          K not divisible by the group size is PADDED with zero weights up to Kp (``in_features`` keeps
          the real K); kernels pad the activation with zeros, so results are exact for the real K.
``fp8``   float8_e4m3fn (N, K) with per-channel float32 ``scales`` (N,) = amax / 448 (for CUDA ``_scaled_mm``).

A :class:`QuantizedWeight` is a frozen record of plain tensors, so a tensor store or a streaming layer can move
its parts between tiers like any other tensor (``.to(device)`` returns a new record).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

from runtime.errors import JalapenoError

Format = Literal["int8", "int4", "fp8"]
FORMATS: tuple[str, ...] = ("int8", "int4", "fp8")

_INT4_BLOCK = 32  # K-block of the nibble layout; the group size must be a multiple of it.
_FP8_MAX = 448.0  # largest finite float8_e4m3fn


@dataclass(frozen=True)
class QuantizedWeight:
    """A quantized (N, K) weight: codes plus the floats that map them back.

    Attributes:
        fmt: "int8", "int4" or "fp8" (see the module docstring for each layout).
        qweight: the codes (int8 (N, K) | uint8 (N, Kp/2) | float8_e4m3fn (N, K)).
        scales: float32, (N,) for int8/fp8 and (N, Kp/group_size) for int4.
        offsets: float32 (N, Kp/group_size) for int4 (group minimum), None otherwise.
        in_features: the real K (before any int4 padding).
        out_features: N.
        group_size: int4 group size along K; None for per-channel formats.
    """

    fmt: str
    qweight: torch.Tensor
    scales: torch.Tensor
    offsets: torch.Tensor | None
    in_features: int
    out_features: int
    group_size: int | None = None

    @property
    def padded_in_features(self) -> int:
        """K after padding to a whole number of groups (equals ``in_features`` unless int4 padded)."""
        if self.fmt == "int4":
            return self.qweight.shape[1] * 2
        return self.in_features

    @property
    def device(self) -> torch.device:
        return self.qweight.device

    @property
    def nbytes(self) -> int:
        """Bytes a kernel must read for this weight (codes + scales + offsets)."""
        total = self.qweight.numel() * self.qweight.element_size() + self.scales.numel() * self.scales.element_size()
        if self.offsets is not None:
            total += self.offsets.numel() * self.offsets.element_size()
        return total

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> QuantizedWeight:
        """Return a copy of the record whose tensors live on ``device``."""
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return replace(self, qweight=move(self.qweight), scales=move(self.scales), offsets=move(self.offsets))


def _check_weight(w: torch.Tensor) -> None:
    if w.dim() != 2 or w.numel() == 0:
        raise JalapenoError(f"`w` must be a non-empty 2-D (out_features, in_features) tensor, got shape {tuple(w.shape)}.")
    if not w.is_floating_point():
        raise JalapenoError(f"`w` must be a floating-point tensor, got dtype {w.dtype}.")


def check_group_size(group_size: int) -> None:
    """Raise unless ``group_size`` is a positive multiple of 32 (the int4 nibble-layout block)."""
    if not isinstance(group_size, int) or group_size <= 0 or group_size % _INT4_BLOCK:
        raise JalapenoError(
            f"`group_size` must be a positive multiple of {_INT4_BLOCK} for int4, got {group_size!r}; "
            "use 32, 64, 128 or 256."
        )


def quantize_weight(w: torch.Tensor, fmt: str, *, group_size: int = 128) -> QuantizedWeight:
    """Quantize a float (N, K) weight into ``fmt`` ("int8", "int4" or "fp8"); see the module docstring.

    Rounding is round-to-nearest; the arithmetic runs in float32 on ``w``'s device.
    """
    _check_weight(w)
    n, k = w.shape
    w32 = w.detach().to(torch.float32)
    if fmt == "int8":
        scales = (w32.abs().amax(dim=1) / 127.0).clamp_min(torch.finfo(torch.float32).tiny)
        q = torch.round(w32 / scales[:, None]).clamp_(-127, 127).to(torch.int8)
        return QuantizedWeight("int8", q.contiguous(), scales.contiguous(), None, k, n, None)
    if fmt == "int4":
        check_group_size(group_size)
        kp = -(-k // group_size) * group_size
        if kp != k:  # zero-pad K to whole groups; padded inputs are zeros too, so they add nothing
            w32 = torch.nn.functional.pad(w32, (0, kp - k))
        g = w32.view(n, kp // group_size, group_size)
        lo, hi = g.amin(dim=2), g.amax(dim=2)
        scales = ((hi - lo) / 15.0).clamp_min(torch.finfo(torch.float32).tiny)
        q = torch.round((g - lo[..., None]) / scales[..., None]).clamp_(0, 15).to(torch.uint8).view(n, kp)
        return QuantizedWeight("int4", pack_int4(q), scales.contiguous(), lo.contiguous(), k, n, group_size)
    if fmt == "fp8":
        scales = (w32.abs().amax(dim=1) / _FP8_MAX).clamp_min(torch.finfo(torch.float32).tiny)
        q = (w32 / scales[:, None]).clamp_(-_FP8_MAX, _FP8_MAX).to(torch.float8_e4m3fn)
        return QuantizedWeight("fp8", q.contiguous(), scales.contiguous(), None, k, n, None)
    raise JalapenoError(f"`fmt` must be one of {FORMATS}, got {fmt!r}.")


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack uint8 codes (N, Kp) in [0, 15], Kp % 32 == 0, into the block nibble layout (N, Kp/2)."""
    n, kp = q.shape
    blocks = q.view(n, kp // _INT4_BLOCK, 2, _INT4_BLOCK // 2)  # (N, blocks, lo|hi half, 16)
    return (blocks[:, :, 0] | (blocks[:, :, 1] << 4)).reshape(n, kp // 2).contiguous()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: uint8 (N, Kp/2) -> uint8 codes (N, Kp)."""
    n, half = packed.shape
    b = packed.view(n, half // 16, 16)
    return torch.stack((b & 0xF, b >> 4), dim=2).reshape(n, half * 2)


def dequantize(qw: QuantizedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Float (N, K) weight that ``qw`` stands for (real K: int4 padding cut off), in ``dtype``."""
    if qw.fmt == "int8":
        w = qw.qweight.to(torch.float32) * qw.scales[:, None]
    elif qw.fmt == "int4":
        assert qw.offsets is not None and qw.group_size is not None
        q = unpack_int4(qw.qweight).to(torch.float32)
        n, kp = q.shape
        g = q.view(n, kp // qw.group_size, qw.group_size)
        w = (g * qw.scales[..., None] + qw.offsets[..., None]).view(n, kp)[:, : qw.in_features]
    elif qw.fmt == "fp8":
        w = qw.qweight.to(torch.float32) * qw.scales[:, None]
    else:  # pragma: no cover - the record is only built by quantize_weight
        raise JalapenoError(f"unknown format {qw.fmt!r}")
    return w.to(dtype)
