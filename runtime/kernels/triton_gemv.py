"""``cuda-int4-gemv``: a Triton int4 GEMV for decode (a few activation rows) reading the canonical layout.

Why: at batch 1 a decode step's linears are pure weight reads, so an int4 weight should cost a quarter of a
bf16 one. torch's tinygemm reaches ~32 % of the HBM bound on decode shapes (committed kernel benchmark) and needs
a repacked second copy; ``cuda-triton``'s int4 path pads the activation to 16 rows for ``tl.dot`` and loads a
scale per element (~1 % of the bound). This kernel does no matrix-core work at all: each program owns
``BLOCK_N`` output rows, walks K a few groups at a time, and per group computes

    sum_k (q_k * s + o) * x_k  =  s * sum_k q_k * x_k  +  o * sum_k x_k

so the codes are multiplied as small integers in fp32 and each group's scale and offset are loaded once per
row rather than once per element. The byte layout is read as stored (byte j of a 32-wide K block holds k = j in
its low nibble and k = j + 16 in its high one), so a streamed block needs no repack and no second copy.

Rows of the activation beyond ``_MAX_ROWS`` (prefill) are not what this kernel is for: they go through a bf16
dequantize + matmul, which is compute-bound there anyway. Results are fp32-accumulated; the tolerance is the
other CUDA kernels' (bf16 activations).

Triton is imported only when the kernel is first used (never at import of the runtime).
"""
from __future__ import annotations

import functools
from typing import Any

import torch

from runtime.kernels._registry import Kernel, register
from runtime.kernels.formats import QuantizedWeight
from runtime.kernels.portable import dequant_bf16_run

_MAX_ROWS = 8  # activation rows served by the GEMV; more rows re-read the weight once per row


def _triton_ok() -> bool:
    try:
        import triton  # noqa: F401  # lazy: only probing whether the optional package is installed
    except Exception:
        return False
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)


@functools.cache
def _build() -> Any:
    import triton  # lazy: optional GPU dependency, imported on first use only
    import triton.language as tl  # lazy: as above

    configs = [
        triton.Config({"BLOCK_N": bn, "GROUPS": g}, num_warps=w, num_stages=s)
        for bn, g, w, s in [(4, 2, 2, 3), (8, 1, 2, 4), (8, 2, 4, 3), (16, 1, 4, 4), (16, 2, 4, 3), (32, 1, 4, 3),
                            (4, 4, 4, 2), (8, 4, 4, 2), (16, 4, 8, 2), (32, 2, 8, 3)]
    ]

    @triton.autotune(configs=configs, key=["N", "KP", "GS"])
    @triton.jit
    def int4_gemv(x_ptr, w_ptr, s_ptr, o_ptr, y_ptr, N, K, KP, G, stride_xm, stride_wn, stride_sn, stride_ym,
                  GS: tl.constexpr, BLOCK_N: tl.constexpr, GROUPS: tl.constexpr):
        pid_n = tl.program_id(0)
        row = tl.program_id(1)
        HB: tl.constexpr = GS // 2  # bytes per group
        P: tl.constexpr = GROUPS * HB  # bytes per step
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = rn < N
        p = tl.arange(0, P)
        # byte p of the step -> its two k (low and high nibble) inside the step's GROUPS groups
        k_lo = (p // 16) * 32 + (p % 16)
        gi = tl.arange(0, GROUPS)
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for g0 in range(0, G, GROUPS):
            kbase = g0 * GS
            kl = kbase + k_lo
            kh = kl + 16
            x_lo = tl.load(x_ptr + row * stride_xm + kl, mask=kl < K, other=0.0).to(tl.float32)
            x_hi = tl.load(x_ptr + row * stride_xm + kh, mask=kh < K, other=0.0).to(tl.float32)
            bmask = nmask[:, None] & ((g0 * HB + p) < (KP // 2))[None, :]
            b = tl.load(w_ptr + rn[:, None] * stride_wn + (g0 * HB + p)[None, :], mask=bmask, other=0).to(tl.int32)
            prod = (b & 15).to(tl.float32) * x_lo[None, :] + (b >> 4).to(tl.float32) * x_hi[None, :]
            dots = tl.sum(tl.reshape(prod, (BLOCK_N, GROUPS, HB)), axis=2)  # (BLOCK_N, GROUPS)
            xsum = tl.sum(tl.reshape(x_lo + x_hi, (GROUPS, HB)), axis=1)  # (GROUPS,)
            g = g0 + gi
            gmask = nmask[:, None] & (g < G)[None, :]
            s = tl.load(s_ptr + rn[:, None] * stride_sn + g[None, :], mask=gmask, other=0.0)
            o = tl.load(o_ptr + rn[:, None] * stride_sn + g[None, :], mask=gmask, other=0.0)
            acc += tl.sum(s * dots + o * xsum[None, :], axis=1)
        tl.store(y_ptr + row * stride_ym + rn, acc, mask=nmask)

    return triton, int4_gemv


def gemv_int4(x: torch.Tensor, qw: QuantizedWeight) -> torch.Tensor:
    """``x @ dequantize(qw).T`` in fp32 for a 2-D ``x`` of at most ``_MAX_ROWS`` rows (any float dtype)."""
    triton, kernel = _build()
    assert qw.offsets is not None and qw.group_size is not None
    x = x.contiguous()
    m, n, kp = x.shape[0], qw.out_features, qw.padded_in_features
    y = torch.empty(m, n, device=x.device, dtype=torch.float32)

    def grid(meta: dict[str, int]) -> tuple[int, int]:
        return triton.cdiv(n, meta["BLOCK_N"]), m

    kernel[grid](x, qw.qweight, qw.scales, qw.offsets, y, n, qw.in_features, kp, kp // qw.group_size, x.stride(0),
                 qw.qweight.stride(0), qw.scales.stride(0), y.stride(0), GS=qw.group_size)
    return y


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def gemv_run(x: torch.Tensor, qw: QuantizedWeight, prepared: Any = None) -> torch.Tensor:
    if x.shape[0] > _MAX_ROWS or not _power_of_two(qw.group_size or 0):
        return dequant_bf16_run(x, qw)
    return gemv_int4(x, qw).to(x.dtype)


register(Kernel(
    name="cuda-int4-gemv", formats=("int4",), device_type="cuda", run=gemv_run, available=_triton_ok,
    tolerance=1.5e-2,
    description="Triton int4 GEMV (<= 8 rows), canonical layout, per-group scale algebra, fp32 accumulate"))
