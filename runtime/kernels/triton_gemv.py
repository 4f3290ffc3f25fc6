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
    except Exception:  # noqa: BLE001  (a broken optional install means: not available)
        return False
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)


@functools.cache
def _build() -> Any:
    import triton  # lazy: optional GPU dependency, imported on first use only
    import triton.language as tl  # lazy: as above

    # The tiles that won the sweep on an H200 (results/gemv_tiles_gpu*.md: BLOCK_N 4, NB 64 on every decode
    # shape, the rest within 10 %); few, because autotuning compiles each one per new shape.
    configs = [
        triton.Config({"BLOCK_N": bn, "NB": nb}, num_warps=w, num_stages=st)
        for bn, nb, w, st in [(4, 64, 4, 2), (4, 32, 4, 2), (2, 128, 4, 1), (4, 16, 2, 3)]
    ]

    def _fits(configs: list[Any], named_args: dict[str, Any], **kwargs: Any) -> list[Any]:
        # a step must hold whole groups: NB blocks of 32 >= one group
        fit = [c for c in configs if c.kwargs["NB"] * 32 >= kwargs.get("GS", named_args.get("GS", 0))]
        return fit or [triton.Config({"BLOCK_N": 4, "NB": kwargs.get("GS", 256) // 32}, num_warps=4)]

    @triton.autotune(configs=configs, key=["N", "KP", "GS", "M"], prune_configs_by={"early_config_prune": _fits})
    @triton.jit
    def int4_gemv(x_ptr, w_ptr, s_ptr, o_ptr, y_ptr, M, N, K, KP, G, stride_xm, stride_wn, stride_sn, stride_ym,
                  GS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, NB: tl.constexpr):
        # A step covers NB blocks of 32 k (16 bytes each) of BLOCK_N rows: one 16-byte load per (row, block),
        # and the activations' matching runs of 16 contiguous k (low nibbles, then high nibbles).
        BPG: tl.constexpr = GS // 32  # blocks per group
        NG: tl.constexpr = NB // BPG  # groups per step
        pid_n = tl.program_id(0)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = rn < N
        blk = tl.arange(0, NB)
        j = tl.arange(0, 16)
        gi = tl.arange(0, NG)
        rm = tl.arange(0, BLOCK_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for b0 in range(0, KP // 32, NB):
            kb = (b0 + blk) * 32  # first k of each block, (NB,)
            bmask = (b0 + blk) < KP // 32
            byte = (b0 + blk)[:, None] * 16 + j[None, :]  # (NB, 16)
            wb = tl.load(w_ptr + rn[:, None, None] * stride_wn + byte[None, :, :],
                         mask=nmask[:, None, None] & bmask[None, :, None], other=0).to(tl.int32)
            q_lo = (wb & 15).to(tl.float32)  # (BLOCK_N, NB, 16)
            q_hi = (wb >> 4).to(tl.float32)
            g = b0 // BPG + gi
            gmask = nmask[:, None] & (g < G)[None, :]
            s = tl.load(s_ptr + rn[:, None] * stride_sn + g[None, :], mask=gmask, other=0.0)  # (BLOCK_N, NG)
            o = tl.load(o_ptr + rn[:, None] * stride_sn + g[None, :], mask=gmask, other=0.0)
            for m in tl.static_range(BLOCK_M):
                k_lo = kb[:, None] + j[None, :]
                xrow = x_ptr + tl.minimum(M - 1, m) * stride_xm  # rows past M repeat the last one (not stored)
                x_lo = tl.load(xrow + k_lo, mask=k_lo < K, other=0.0).to(tl.float32)  # (NB, 16)
                x_hi = tl.load(xrow + k_lo + 16, mask=k_lo + 16 < K, other=0.0).to(tl.float32)
                part = tl.sum(q_lo * x_lo[None, :, :] + q_hi * x_hi[None, :, :], axis=2)  # (BLOCK_N, NB)
                dots = tl.sum(tl.reshape(part, (BLOCK_N, NG, BPG)), axis=2)  # (BLOCK_N, NG)
                xs = tl.sum(tl.reshape(tl.sum(x_lo + x_hi, axis=1), (NG, BPG)), axis=1)  # (NG,)
                row = tl.sum(s * dots + o * xs[None, :], axis=1)  # (BLOCK_N,)
                acc += tl.where(rm[:, None] == m, row[None, :], 0.0)
        tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :], acc, mask=(rm[:, None] < M) & nmask[None, :])

    @triton.autotune(configs=configs, key=["N", "KP", "GS"], prune_configs_by={"early_config_prune": _fits})
    @triton.jit
    def int4_gemv1(x_ptr, w_ptr, s_ptr, o_ptr, y_ptr, N, K, KP, G, stride_wn, stride_sn,
                   GS: tl.constexpr, BLOCK_N: tl.constexpr, NB: tl.constexpr):
        # One activation row (decode at batch 1): dequantize every nibble with its group's scale and offset and
        # accumulate products element-wise; the only reduction is at the end, so a step is loads and FMAs.
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
            w_lo = (wb & 15).to(tl.float32) * s + o
            w_hi = (wb >> 4).to(tl.float32) * s + o
            acc += w_lo * x_lo[None, :, :] + w_hi * x_hi[None, :, :]
        tl.store(y_ptr + rn, tl.sum(tl.sum(acc, axis=2), axis=1), mask=nmask)

    return triton, int4_gemv, int4_gemv1


def gemv_int4(x: torch.Tensor, qw: QuantizedWeight) -> torch.Tensor:
    """``x @ dequantize(qw).T`` in fp32 for a 2-D ``x`` of at most ``_MAX_ROWS`` rows (any float dtype)."""
    triton, kernel, kernel1 = _build()
    assert qw.offsets is not None and qw.group_size is not None
    x = x.contiguous()
    m, n, kp = x.shape[0], qw.out_features, qw.padded_in_features
    y = torch.empty(m, n, device=x.device, dtype=torch.float32)
    if m == 1:
        kernel1[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)](
            x, qw.qweight, qw.scales, qw.offsets, y, n, qw.in_features, kp, kp // qw.group_size, qw.qweight.stride(0),
            qw.scales.stride(0), GS=qw.group_size)
        return y

    def grid(meta: dict[str, int]) -> tuple[int]:
        return (triton.cdiv(n, meta["BLOCK_N"]),)

    kernel[grid](x, qw.qweight, qw.scales, qw.offsets, y, m, n, qw.in_features, kp, kp // qw.group_size, x.stride(0),
                 qw.qweight.stride(0), qw.scales.stride(0), y.stride(0), GS=qw.group_size,
                 BLOCK_M=triton.next_power_of_2(m))
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
