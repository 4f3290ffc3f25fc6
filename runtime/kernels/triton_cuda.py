"""``cuda-triton``: Triton weight-only int8 / int4 GEMV/GEMM reading the canonical layouts directly.

Why: torch's CUDA ``_weight_int8pack_mm`` runs at a few percent of the bandwidth bound for decode shapes
(committed benchmark), and tinygemm needs a repacked copy. Here each program loads a (BLOCK_N, BLOCK_K) tile of
codes, dequantizes it in registers (int8: exact in bf16, scale applied to the fp32 accumulator; int4: codes x
group scale + group offset, rounded to bf16) and multiplies with ``tl.dot`` against the activations padded to
16 rows (bf16 inputs, fp32 accumulate). Tile sizes are autotuned per (M, N, K) on first call.

Triton is imported only when the kernel is first used (never at import of the runtime).
"""
from __future__ import annotations

import functools
from typing import Any

import torch

from runtime.kernels._registry import Kernel, register
from runtime.kernels.formats import QuantizedWeight

_BLOCK_M = 16  # tl.dot's smallest M; decode batches (1..16) fit one row block


def _triton_ok() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)


@functools.cache
def _build() -> Any:
    import triton
    import triton.language as tl

    configs = [
        triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
        for bn, bk, w, s in [(16, 256, 4, 4), (32, 256, 4, 4), (64, 128, 4, 4), (16, 512, 4, 3), (32, 128, 4, 5),
                             (64, 256, 8, 3)]
    ]

    @triton.autotune(configs=configs, key=["M", "N", "K"])
    @triton.jit
    def int8_kernel(x_ptr, w_ptr, s_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_m = tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + rk
            x = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :],
                        mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
            w = tl.load(w_ptr + rn[:, None] * stride_wn + kk[None, :],
                        mask=(rn[:, None] < N) & (kk[None, :] < K), other=0)
            acc += tl.dot(x, tl.trans(w.to(tl.bfloat16)))  # (BM, BK) @ (BK, BN)
        s = tl.load(s_ptr + rn, mask=rn < N, other=0.0)
        acc = acc * s[None, :]
        tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :], acc, mask=(rm[:, None] < M) & (rn[None, :] < N))

    @triton.autotune(configs=configs, key=["M", "N", "K"])
    @triton.jit
    def int4_kernel(x_ptr, w_ptr, s_ptr, o_ptr, y_ptr, M, N, K, Kp, G, GS, stride_xm, stride_wn, stride_ym,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_m = tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        nmask = rn[:, None] < N
        for k0 in range(0, Kp, BLOCK_K):
            kk = k0 + rk
            kin = kk < Kp
            # block nibble layout: k = 32*blk + j + 16*h lives in byte 16*blk + j, nibble h
            byte = (kk // 32) * 16 + (kk % 16)
            shift = ((kk // 16) % 2) * 4
            b = tl.load(w_ptr + rn[:, None] * stride_wn + byte[None, :], mask=nmask & kin[None, :], other=0)
            q = ((b.to(tl.int32) >> shift[None, :]) & 15).to(tl.float32)
            g = kk // GS
            s = tl.load(s_ptr + rn[:, None] * G + g[None, :], mask=nmask & kin[None, :], other=0.0)
            o = tl.load(o_ptr + rn[:, None] * G + g[None, :], mask=nmask & kin[None, :], other=0.0)
            w = (q * s + o).to(tl.bfloat16)
            x = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :],
                        mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
            acc += tl.dot(x, tl.trans(w))
        tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :], acc, mask=(rm[:, None] < M) & (rn[None, :] < N))

    return triton, int8_kernel, int4_kernel


def triton_run(x: torch.Tensor, qw: QuantizedWeight, prepared: Any = None) -> torch.Tensor:
    triton, int8_kernel, int4_kernel = _build()
    xb = x.to(torch.bfloat16).contiguous()
    m, n = xb.shape[0], qw.out_features
    y = torch.empty(m, n, device=xb.device, dtype=torch.float32)

    def grid(meta: dict[str, int]) -> tuple[int, int]:
        return triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(m, meta["BLOCK_M"])

    if qw.fmt == "int8":
        int8_kernel[grid](xb, qw.qweight, qw.scales, y, m, n, qw.in_features, xb.stride(0), qw.qweight.stride(0),
                          y.stride(0), BLOCK_M=_BLOCK_M)
    else:
        assert qw.offsets is not None and qw.group_size is not None
        kp = qw.padded_in_features
        int4_kernel[grid](xb, qw.qweight, qw.scales, qw.offsets, y, m, n, qw.in_features, kp, kp // qw.group_size,
                          qw.group_size, xb.stride(0), qw.qweight.stride(0), y.stride(0), BLOCK_M=_BLOCK_M)
    return y.to(x.dtype)


register(Kernel(
    name="cuda-triton", formats=("int8", "int4"), device_type="cuda", run=triton_run, available=_triton_ok,
    tolerance=1.5e-2,
    description="Triton weight-only int8/int4, canonical layout, dequant in registers, bf16 tl.dot, fp32 accumulate"))
