"""CUDA kernels: torch's tinygemm int4 and int8 weight-only kernels, and fp8 ``_scaled_mm`` where the GPU has it.

All compute in bf16 with fp32 accumulation inside the library kernels. Nothing here touches CUDA at import;
``available`` asks ``torch.cuda`` only when a caller asks about a CUDA device.

* ``cuda-int8pack``: ``torch._weight_int8pack_mm`` reads the canonical int8 (N, K) codes directly.
* ``cuda-int4-tinygemm``: ``torch._weight_int4pack_mm``; ``prepare`` repacks the canonical nibbles into
  tinygemm's tiled layout on the GPU (``_convert_weight_to_int4pack``) with torch's zero convention
  ``w = (q - 8) * s + zero``. Needs N % 8 == 0 and Kp % 128 == 0; other shapes fall back to ``dequant-bf16``.
* ``cuda-fp8``: weights in float8_e4m3fn with per-channel scales, activations quantized per row at run time,
  ``torch._scaled_mm`` with row-wise scales (compute capability >= 8.9). Needs K and N multiples of 16.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from runtime.kernels._registry import Kernel, register
from runtime.kernels.formats import QuantizedWeight, unpack_int4
from runtime.kernels.portable import dequant_bf16_run

_TINYGEMM_INNER_K_TILES = 8  # tinygemm's K tiling: Kp must be a multiple of 16 * this


def _cuda() -> bool:
    return torch.cuda.is_available()


def _capability_at_least(major: int, minor: int) -> bool:
    return _cuda() and torch.cuda.get_device_capability() >= (major, minor)


def int8pack_cuda_run(x: torch.Tensor, qw: QuantizedWeight, prepared: Any = None) -> torch.Tensor:
    y = torch._weight_int8pack_mm(x.to(torch.bfloat16).contiguous(), qw.qweight, qw.scales.to(torch.bfloat16))
    return y.to(x.dtype)


def tinygemm_prepare(qw: QuantizedWeight, inner_k_tiles: int = _TINYGEMM_INNER_K_TILES,
                     ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Repack into tinygemm's layout on the weight's device; None when the shape does not fit it.

    ``inner_k_tiles`` (2, 4 or 8) is tinygemm's K tiling; the kernel benchmark times each on decode shapes."""
    kp = qw.padded_in_features
    if qw.out_features % 8 or kp % (16 * inner_k_tiles) or qw.group_size not in (32, 64, 128, 256):
        return None
    q = unpack_int4(qw.qweight)  # (N, Kp) uint8 codes
    std = (q[:, ::2] << 4) | q[:, 1::2]  # torch's packing: even k in the high nibble
    packed = torch._convert_weight_to_int4pack(std.contiguous(), inner_k_tiles)
    assert qw.offsets is not None
    zeros = qw.offsets + 8.0 * qw.scales
    sz = torch.stack([qw.scales, zeros], dim=2).transpose(0, 1).contiguous().to(torch.bfloat16)  # (G, N, 2)
    return packed, sz


def tinygemm_run(x: torch.Tensor, qw: QuantizedWeight, prepared: Any) -> torch.Tensor:
    if prepared is None:
        prepared = tinygemm_prepare(qw)
    if prepared is None:
        return dequant_bf16_run(x, qw)
    packed, sz = prepared
    xb = x.to(torch.bfloat16)
    kp = qw.padded_in_features
    if kp != qw.in_features:
        xb = F.pad(xb, (0, kp - qw.in_features))
    return torch._weight_int4pack_mm(xb.contiguous(), packed, qw.group_size, sz).to(x.dtype)


def fp8_run(x: torch.Tensor, qw: QuantizedWeight, prepared: Any = None) -> torch.Tensor:
    m, k = x.shape
    n = qw.out_features
    if k % 16 or n % 16:
        return dequant_bf16_run(x, qw)
    mp = -(-m // 16) * 16  # _scaled_mm wants M padded to 16 too
    xf = x.to(torch.float32)
    if mp != m:
        xf = F.pad(xf, (0, 0, 0, mp - m))
    x_scale = (xf.abs().amax(dim=1, keepdim=True) / 448.0).clamp_min(torch.finfo(torch.float32).tiny)
    x8 = (xf / x_scale).to(torch.float8_e4m3fn)
    y = torch._scaled_mm(x8, qw.qweight.t(), scale_a=x_scale, scale_b=qw.scales.view(1, n).float(),
                         out_dtype=torch.bfloat16)
    return y[:m].to(x.dtype)


register(Kernel(
    name="cuda-int8pack", formats=("int8",), device_type="cuda", run=int8pack_cuda_run,
    available=lambda: _capability_at_least(8, 0), tolerance=1.5e-2,
    description="torch _weight_int8pack_mm on CUDA (bf16 activations)"))
register(Kernel(
    name="cuda-int4-tinygemm", formats=("int4",), device_type="cuda", run=tinygemm_run, prepare=tinygemm_prepare,
    available=lambda: _capability_at_least(8, 0), tolerance=1.5e-2,
    description="torch tinygemm _weight_int4pack_mm (bf16 activations, repacked once by prepare)"))
register(Kernel(
    name="cuda-fp8", formats=("fp8",), device_type="cuda", run=fp8_run, quantizes_activations=True,
    available=lambda: _capability_at_least(8, 9), tolerance=8e-2,
    description="torch._scaled_mm fp8 e4m3 with row-wise scales (activations quantized per row)"))
