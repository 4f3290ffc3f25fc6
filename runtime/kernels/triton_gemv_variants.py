"""Candidate one-row int4 GEMV kernels, timed against ``cuda-int4-gemv`` and tinygemm by the tile benchmark.

Why: ``cuda-int4-gemv`` reads at 25-35 % of the int4 bound on an H200. At the bound a GPU must turn ~8 nibbles
per byte-nanosecond into floats; an int-to-float conversion (I2F) issues at a quarter of the FMA rate on Hopper,
so converting every nibble with it caps the kernel near half the bound before any other work. Both candidates
convert with the exponent trick instead: OR the nibble into the mantissa of 2^23 (one LOP3 together with the
mask), reinterpret the bits as fp32 and subtract 2^23 (one exact FADD), which leaves ``q`` exactly.

* ``magic``: ``cuda-int4-gemv``'s one-row loop (dequantize with the group's scale and offset, accumulate
  element-wise, one reduction at the end) with the exponent-trick conversion.
* ``group``: multiply the codes by the activations as they are and apply each group's scale and offset once
  per (row, group): ``sum_k (q s + o) x = s sum_k q x + o sum_k x``; GPS whole groups per step.

Both read the canonical layout (no repack): byte j of a 32-wide K block holds k = j in its low nibble and
k = j + 16 in its high one. Not registered as kernels: the benchmark decides whether one replaces the current.
"""
from __future__ import annotations

import functools
from typing import Any

import torch

from runtime.kernels.formats import QuantizedWeight


@functools.cache
def build() -> dict[str, Any]:
    import triton  # lazy: optional GPU dependency, imported on first use only
    import triton.language as tl  # lazy: as above

    @triton.jit
    def int4_gemv1_magic(x_ptr, w_ptr, s_ptr, o_ptr, y_ptr, N, K, KP, G, stride_wn, stride_sn,
                         GS: tl.constexpr, BLOCK_N: tl.constexpr, NB: tl.constexpr):
        BPG: tl.constexpr = GS // 32
        pid_n = tl.program_id(0)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = rn < N
        blk = tl.arange(0, NB)
        j = tl.arange(0, 16)
        acc = tl.zeros((BLOCK_N, NB, 16), dtype=tl.float32)
        for b0 in range(0, KP // 32, NB):
            bb = b0 + blk
            bmask = bb < KP // 32
            byte = bb[:, None] * 16 + j[None, :]
            wb = tl.load(w_ptr + rn[:, None, None] * stride_wn + byte[None, :, :],
                         mask=nmask[:, None, None] & bmask[None, :, None], other=0).to(tl.int32)
            so = rn[:, None] * stride_sn + (bb // BPG)[None, :]
            smask = nmask[:, None] & bmask[None, :]
            s = tl.load(s_ptr + so, mask=smask, other=0.0)[:, :, None]
            o = tl.load(o_ptr + so, mask=smask, other=0.0)[:, :, None]
            k_lo = bb[:, None] * 32 + j[None, :]
            x_lo = tl.load(x_ptr + k_lo, mask=k_lo < K, other=0.0).to(tl.float32)
            x_hi = tl.load(x_ptr + k_lo + 16, mask=k_lo + 16 < K, other=0.0).to(tl.float32)
            # q | 2^23's bits, read as fp32, minus 2^23: exactly q, without an I2F
            q_lo = ((wb & 15) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
            q_hi = ((wb >> 4) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
            w_lo = q_lo * s + o
            w_hi = q_hi * s + o
            acc += w_lo * x_lo[None, :, :] + w_hi * x_hi[None, :, :]
        tl.store(y_ptr + rn, tl.sum(tl.sum(acc, axis=2), axis=1), mask=nmask)

    @triton.jit
    def int4_gemv1_group(x_ptr, w_ptr, s_ptr, o_ptr, y_ptr, N, K, KP, G, stride_wn, stride_sn,
                         GS: tl.constexpr, BLOCK_N: tl.constexpr, GPS: tl.constexpr):
        BPG: tl.constexpr = GS // 32
        NB: tl.constexpr = GPS * BPG
        pid_n = tl.program_id(0)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = rn < N
        blk = tl.arange(0, NB)
        j = tl.arange(0, 16)
        gi = tl.arange(0, GPS)
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for b0 in range(0, KP // 32, NB):
            bb = b0 + blk
            bmask = bb < KP // 32
            byte = bb[:, None] * 16 + j[None, :]
            wb = tl.load(w_ptr + rn[:, None, None] * stride_wn + byte[None, :, :],
                         mask=nmask[:, None, None] & bmask[None, :, None], other=0).to(tl.int32)
            k_lo = bb[:, None] * 32 + j[None, :]
            x_lo = tl.load(x_ptr + k_lo, mask=k_lo < K, other=0.0).to(tl.float32)  # (NB, 16)
            x_hi = tl.load(x_ptr + k_lo + 16, mask=k_lo + 16 < K, other=0.0).to(tl.float32)
            q_lo = ((wb & 15) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0  # exactly q (see above)
            q_hi = ((wb >> 4) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
            part = tl.sum(q_lo * x_lo[None, :, :] + q_hi * x_hi[None, :, :], axis=2)  # (BLOCK_N, NB)
            dots = tl.sum(tl.reshape(part, (BLOCK_N, GPS, BPG)), axis=2)  # (BLOCK_N, GPS)
            xs = tl.sum(tl.reshape(tl.sum(x_lo + x_hi, axis=1), (GPS, BPG)), axis=1)  # (GPS,)
            g = b0 // BPG + gi
            gmask = nmask[:, None] & (g < G)[None, :]
            s = tl.load(s_ptr + rn[:, None] * stride_sn + g[None, :], mask=gmask, other=0.0)
            o = tl.load(o_ptr + rn[:, None] * stride_sn + g[None, :], mask=gmask, other=0.0)
            acc += tl.sum(s * dots + o * xs[None, :], axis=1)
        tl.store(y_ptr + rn, acc, mask=nmask)

    return {"triton": triton, "magic": int4_gemv1_magic, "group": int4_gemv1_group}


def gemv1_variant(x: torch.Tensor, qw: QuantizedWeight, variant: str, *, block_n: int, steps: int,
                  num_warps: int = 4, num_stages: int = 2) -> torch.Tensor:
    """``x @ dequantize(qw).T`` in fp32 for one activation row by candidate ``variant`` ('magic' or 'group').

    ``steps`` is NB (blocks of 32 k per step) for 'magic' and GPS (whole groups per step) for 'group'."""
    kernels = build()
    if variant not in ("magic", "group"):
        raise ValueError(f"variant={variant!r}: expected 'magic' or 'group'")
    assert qw.offsets is not None and qw.group_size is not None
    if x.dim() != 2 or x.shape[0] != 1:
        raise ValueError(f"x.shape={tuple(x.shape)}: these candidates serve one activation row (1, K)")
    x = x.contiguous()
    n, kp = qw.out_features, qw.padded_in_features
    y = torch.empty(1, n, device=x.device, dtype=torch.float32)
    grid = (kernels["triton"].cdiv(n, block_n),)
    extra = {"NB": steps} if variant == "magic" else {"GPS": steps}
    kernels[variant][grid](x, qw.qweight, qw.scales, qw.offsets, y, n, qw.in_features, kp, kp // qw.group_size,
                           qw.qweight.stride(0), qw.scales.stride(0), GS=qw.group_size, BLOCK_N=block_n,
                           num_warps=num_warps, num_stages=num_stages, **extra)
    return y
