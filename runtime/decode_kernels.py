"""Triton kernels of the captured decode step that call helper functions (imported on first use by
:func:`runtime.decode_ops._kernels`; defined only where triton is installed).

- ``add_rms_norm_ordered_kernel``: the residual add and RMSNorm in one kernel, the variance summed in the order
  of torch's CUDA ``mean`` (:mod:`runtime.reduce_order`), so its bits are Hugging Face's.
- ``greedy_tail_kernel``: the end of a step — keep the last logits, argmax, feed the token back, advance the
  position, rebuild the attention mask — in one kernel instead of five.
"""
from __future__ import annotations

try:
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice  # CUDA's rsqrtf (torch's) and fmul_rn
except ImportError:  # the runtime imports without triton (CPU hosts); these kernels are then never asked for
    triton = None

if triton is not None:
    @triton.jit
    def _square(x, ASM: tl.constexpr):  # rounded before it is added: an FMA into the sum would change the bits
        if ASM:
            return libdevice.mul_rn(x, x)  # __nv_fmul_rn: never contracted into an FMA
        return x * x

    @triton.jit
    def _halve(x, N: tl.constexpr):  # (N,) -> (N // 2,): x[i] + x[i + N // 2] (a two-term sum: one add)
        return tl.sum(tl.reshape(x, (2, N // 2)), axis=0)

    @triton.jit
    def _halve_rows(x, S: tl.constexpr, N: tl.constexpr):  # (S, N) -> (S, N // 2), halving each row
        return tl.sum(tl.reshape(x, (S, 2, N // 2)), axis=1)

    @triton.jit
    def _fold(x, SPLIT: tl.constexpr, LANES: tl.constexpr):
        # torch's block_x_reduce (halving: shared memory down to a warp, then shfl_down 16, 8, 4, 2, 1) over each
        # warp row's lanes, then block_y_reduce (halving) over the warp rows (runtime/reduce_order.py); each
        # branch is resolved at compile time, so the shape may change from one to the next
        x = tl.reshape(x, (SPLIT, LANES))
        if LANES >= 512:
            x = _halve_rows(x, SPLIT, 512)
        if LANES >= 256:
            x = _halve_rows(x, SPLIT, 256)
        if LANES >= 128:
            x = _halve_rows(x, SPLIT, 128)
        if LANES >= 64:
            x = _halve_rows(x, SPLIT, 64)
        if LANES >= 32:
            x = _halve_rows(x, SPLIT, 32)
        if LANES >= 16:
            x = _halve_rows(x, SPLIT, 16)
        if LANES >= 8:
            x = _halve_rows(x, SPLIT, 8)
        if LANES >= 4:
            x = _halve_rows(x, SPLIT, 4)
        if LANES >= 2:
            x = _halve_rows(x, SPLIT, 2)
        x = tl.reshape(x, (SPLIT,))
        if SPLIT >= 16:
            x = _halve(x, 16)
        if SPLIT >= 8:
            x = _halve(x, 8)
        if SPLIT >= 4:
            x = _halve(x, 4)
        if SPLIT >= 2:
            x = _halve(x, 2)
        return tl.sum(x, axis=0)  # one element left

    @triton.jit
    def add_rms_norm_ordered_kernel(D, R, W, OUT, RES, VAR, H, eps, factor, HAS_D: tl.constexpr,
                                    LANES: tl.constexpr, SPLIT: tl.constexpr, THREADS: tl.constexpr,
                                    VEC: tl.constexpr, ROUNDS: tl.constexpr,
                                    BLOCK: tl.constexpr, RSQRT: tl.constexpr, ASM: tl.constexpr):
        # RMSNorm in one kernel with the variance summed in the order of torch's CUDA `mean` (reduce_order.py):
        # a (THREADS, 4) tile per round is one load of every thread's accumulators, rounds added in load order
        row = tl.program_id(0)
        base = row * H
        t = tl.arange(0, THREADS)[:, None]
        p = tl.arange(0, 4)[None, :]
        acc = tl.zeros((THREADS, 4), dtype=tl.float32)
        for j in tl.static_range(ROUNDS):
            if VEC == 4:
                offs = (j * THREADS + t) * 4 + p  # thread t's vector j, position p
            else:
                offs = (j * 4 + p) * THREADS + t  # thread t's element of step 4j + p, accumulator p
            m = offs < H
            r = tl.load(R + base + offs, mask=m, other=0.0)
            if HAS_D:
                d = tl.load(D + base + offs, mask=m, other=0.0)
                r = (r.to(tl.float32) + d.to(tl.float32)).to(RES.dtype.element_ty)
                tl.store(RES + base + offs, r, mask=m)
            acc = acc + _square(r.to(tl.float32), ASM)
        a02, a13 = tl.split(tl.reshape(acc, (THREADS, 2, 2)))
        a0, a2 = tl.split(a02)
        a1, a3 = tl.split(a13)
        var = _fold(((a0 + a1) + a2) + a3, SPLIT, LANES)
        if ASM:
            var = libdevice.mul_rn(var, factor)  # MeanOps::project; kept apart from the `+ eps` below
        else:
            var = var * factor
        tl.store(VAR + row, var)
        if RSQRT == 0:
            rs = libdevice.rsqrt(var + eps)
        elif RSQRT == 1:
            rs = tl.math.rsqrt(var + eps)
        else:
            rs = tl.math.div_rn(1.0, tl.math.sqrt_rn(var + eps))
        offs1 = tl.arange(0, BLOCK)
        m1 = offs1 < H
        x = tl.load(R + base + offs1, mask=m1, other=0.0)
        if HAS_D:  # the residual again, rounded as above (re-read from the inputs, not from RES: no barrier)
            d1 = tl.load(D + base + offs1, mask=m1, other=0.0)
            x = (x.to(tl.float32) + d1.to(tl.float32)).to(RES.dtype.element_ty)
        y = (x.to(tl.float32) * rs).to(RES.dtype.element_ty)
        w = tl.load(W + offs1, mask=m1, other=0.0)
        tl.store(OUT + base + offs1, (w.to(tl.float32) * y.to(tl.float32)).to(OUT.dtype.element_ty), mask=m1)

    @triton.jit
    def greedy_tail_kernel(LOGITS, LOGITS_OUT, NEXT, IDS, POS, MASK, V, L, BLOCK_V: tl.constexpr,
                           BLOCK_L: tl.constexpr):
        # the step's tail in one kernel: keep the last logits, argmax (torch's: first index of the maximum,
        # a NaN counting as the maximum), feed it back as the next input, advance the position, rebuild the mask
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK_V)
        m = offs < V
        x = tl.load(LOGITS + row * V + offs, mask=m, other=float("-inf"))
        tl.store(LOGITS_OUT + row * V + offs, x, mask=m)
        xf = x.to(tl.float32)
        nan = xf != xf
        first_nan = tl.min(tl.where(nan, offs, BLOCK_V), axis=0)
        best = tl.argmax(tl.where(nan, float("-inf"), xf), axis=0, tie_break_left=True)
        best = tl.where(first_nan < BLOCK_V, first_nan, best).to(tl.int64)
        tl.store(NEXT + row, best)
        tl.store(IDS + row, best)
        if row == 0:
            pos = tl.load(POS) + 1
            tl.store(POS, pos)
            lo = tl.arange(0, BLOCK_L)
            ninf = tl.full((BLOCK_L,), float("-inf"), tl.float32)
            keep = tl.where(lo <= pos, tl.zeros((BLOCK_L,), tl.float32), ninf)
            tl.store(MASK + lo, keep.to(MASK.dtype.element_ty), mask=lo < L)
