"""The elementwise parts of a Llama-family decode step, as torch references and as fused Triton kernels.

A batch-1 decode step on a GPU is a few dozen GEMVs plus hundreds of tiny elementwise kernels (Hugging Face's
RMSNorm alone is eight); inside a CUDA graph each tiny kernel still costs one to two microseconds, which for a
7 GB model is as much time as reading the weights. The fused kernels here cut a layer's tiny kernels from ~40 to
~4 while keeping Hugging Face's bits: every intermediate that Hugging Face rounds to the model dtype is rounded
here too, the RMS variance is summed in the order of torch's CUDA ``mean`` (:mod:`runtime.reduce_order`), and
:class:`VerifiedOps` takes a kernel only where it is bit for bit torch's on this device (``exp``/``rsqrt`` variants,
the summation order per batch size), else the next variant, else torch ops.

Two implementations behind one interface (:class:`DecodeOps`): ``TorchOps`` (any device; Hugging Face's own op
sequence) and ``TritonOps`` (CUDA, needs ``triton``; used through :class:`VerifiedOps`). Shapes: hidden ``(B, 1, H)``; q/k/v projections
``(B, 1, heads * head_dim)``; the static KV cache ``(B, kv_heads, L, head_dim)`` per layer; ``pos`` a one-element
int64 tensor on the device (the position being written).
"""
from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

from runtime.errors import JalapenoError
from runtime.reduce_order import mean_order


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class TorchOps:
    """Hugging Face's op sequence, op for op (the reference, and the path on the host)."""

    name = "torch"

    @staticmethod
    def add_rms_norm(delta: torch.Tensor | None, res: torch.Tensor, weight: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``res + delta`` (the residual stream, in its dtype) and RMSNorm of it, as LlamaRMSNorm computes it."""
        if delta is not None:
            res = res + delta
        x = res.to(torch.float32)
        var = x.pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(var + eps)
        return res, weight * x.to(res.dtype)

    @staticmethod
    def rope_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   pos: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, heads: int, kv_heads: int,
                   head_dim: int) -> torch.Tensor:
        """Rotate q and k at ``pos``, write k and v into the caches there; returns q as (B, heads, 1, head_dim)."""
        b = q.shape[0]
        q = q.view(b, 1, heads, head_dim).transpose(1, 2)
        k = k.view(b, 1, kv_heads, head_dim).transpose(1, 2)
        v = v.view(b, 1, kv_heads, head_dim).transpose(1, 2)
        c = cos.index_select(0, pos)[None, None]  # (1, 1, 1, hd)
        s = sin.index_select(0, pos)[None, None]
        q = (q * c) + (_rotate_half(q) * s)
        k = (k * c) + (_rotate_half(k) * s)
        k_cache.index_copy_(2, pos, k)
        v_cache.index_copy_(2, pos, v)
        return q

    @staticmethod
    def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return F.silu(gate) * up

    @staticmethod
    def greedy_tail(logits: torch.Tensor, logits_out: torch.Tensor, next_ids: torch.Tensor, ids: torch.Tensor,
                    pos: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, zero: torch.Tensor,
                    ninf: torch.Tensor) -> None:
        """The end of a step on static buffers: keep ``logits`` (B, V), take the greedy token into ``next_ids``
        and ``ids`` (B, 1), advance ``pos`` and admit positions ``<= pos`` in ``mask``."""
        logits_out.copy_(logits)
        next_ids.copy_(logits.argmax(-1, keepdim=True))
        ids.copy_(next_ids)
        pos.add_(1)
        torch.where(positions <= pos, zero, ninf, out=mask)


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


_KERNELS: dict[str, Any] = {}


def _kernels() -> dict[str, Any]:
    """Define the Triton kernels on first use (importing this module never imports triton)."""
    if _KERNELS:
        return _KERNELS
    import triton
    import triton.language as tl
    from triton.language.extra import (
        libdevice,  # CUDA's own expf/rsqrtf: the functions torch's kernels call
    )

    @triton.jit
    def add_square_kernel(D, R, RES, SQ, H, HAS_D: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        m = offs < H
        r = tl.load(R + row * H + offs, mask=m, other=0.0)
        if HAS_D:
            d = tl.load(D + row * H + offs, mask=m, other=0.0)
            r = (r.to(tl.float32) + d.to(tl.float32)).to(RES.dtype.element_ty)
            tl.store(RES + row * H + offs, r, mask=m)
        x = r.to(tl.float32)
        tl.store(SQ + row * H + offs, x * x, mask=m)

    @triton.jit
    def norm_apply_kernel(RES, VAR, W, OUT, H, eps, RSQRT: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        m = offs < H
        x = tl.load(RES + row * H + offs, mask=m, other=0.0).to(tl.float32)
        var = tl.load(VAR + row)
        if RSQRT == 0:
            r = libdevice.rsqrt(var + eps)
        elif RSQRT == 1:
            r = tl.math.rsqrt(var + eps)
        else:
            r = tl.math.div_rn(1.0, tl.math.sqrt_rn(var + eps))
        y = (x * r).to(RES.dtype.element_ty)
        w = tl.load(W + offs, mask=m, other=0.0)
        tl.store(OUT + row * H + offs, (w.to(tl.float32) * y.to(tl.float32)).to(OUT.dtype.element_ty), mask=m)

    @triton.jit
    def add_rms_norm_kernel(D, R, W, OUT, RES, H, eps, HAS_D: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        m = offs < H
        r = tl.load(R + row * H + offs, mask=m, other=0.0)
        if HAS_D:
            d = tl.load(D + row * H + offs, mask=m, other=0.0)
            r = (r.to(tl.float32) + d.to(tl.float32)).to(RES.dtype.element_ty)  # rounded like `res + delta`
            tl.store(RES + row * H + offs, r, mask=m)
        x = r.to(tl.float32)
        var = tl.sum(x * x, axis=0) * (1.0 / H)
        y = (x * libdevice.rsqrt(var + eps)).to(RES.dtype.element_ty)
        w = tl.load(W + offs, mask=m, other=0.0)
        tl.store(OUT + row * H + offs, (w.to(tl.float32) * y.to(tl.float32)).to(OUT.dtype.element_ty), mask=m)

    @triton.jit
    def _mul_rn(a, b):  # fp32 multiply with explicit rounding: never contracted into an FMA
        return tl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.float32,
                                         is_pure=True, pack=1)

    @triton.jit
    def _add_rn(a, b):
        return tl.inline_asm_elementwise("add.rn.f32 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.float32,
                                         is_pure=True, pack=1)

    @triton.jit
    def rope_cache_kernel(Q, K, V, COS, SIN, POS, QO, KC, VC, L, NH: tl.constexpr, NKV: tl.constexpr,
                          HALF: tl.constexpr, ASM: tl.constexpr):
        b = tl.program_id(0)
        h = tl.program_id(1)
        hd = 2 * HALF
        pos = tl.load(POS)
        offs = tl.arange(0, HALF)
        c1 = tl.load(COS + pos * hd + offs).to(tl.float32)
        c2 = tl.load(COS + pos * hd + HALF + offs).to(tl.float32)
        s1 = tl.load(SIN + pos * hd + offs).to(tl.float32)
        s2 = tl.load(SIN + pos * hd + HALF + offs).to(tl.float32)
        dt = QO.dtype.element_ty
        if h < NH:
            src = Q + (b * NH + h) * hd
            dst = QO + (b * NH + h) * hd
        else:
            kh = h - NH
            src = K + (b * NKV + kh) * hd
            dst = KC + ((b * NKV + kh) * L + pos) * hd
            v1 = tl.load(V + (b * NKV + kh) * hd + offs)
            v2 = tl.load(V + (b * NKV + kh) * hd + HALF + offs)
            vdst = VC + ((b * NKV + kh) * L + pos) * hd
            tl.store(vdst + offs, v1)
            tl.store(vdst + HALF + offs, v2)
        x1 = tl.load(src + offs).to(tl.float32)
        x2 = tl.load(src + HALF + offs).to(tl.float32)
        # (x * cos) + (rotate_half(x) * sin), each product and the sum rounded to the model dtype
        if ASM:
            o1 = _add_rn(_mul_rn(x1, c1).to(dt).to(tl.float32), _mul_rn(-x2, s1).to(dt).to(tl.float32))
            o2 = _add_rn(_mul_rn(x2, c2).to(dt).to(tl.float32), _mul_rn(x1, s2).to(dt).to(tl.float32))
        else:
            o1 = (x1 * c1).to(dt).to(tl.float32) + (-x2 * s1).to(dt).to(tl.float32)
            o2 = (x2 * c2).to(dt).to(tl.float32) + (x1 * s2).to(dt).to(tl.float32)
        tl.store(dst + offs, o1.to(dt))
        tl.store(dst + HALF + offs, o2.to(dt))

    @triton.jit
    def silu_mul_kernel(G, U, OUT, N, EXP: tl.constexpr, DIV: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < N
        g = tl.load(G + offs, mask=m, other=0.0).to(tl.float32)
        u = tl.load(U + offs, mask=m, other=0.0).to(tl.float32)
        dt = OUT.dtype.element_ty
        if EXP == 0:
            e = libdevice.exp(-g)
        else:
            e = tl.exp(-g)
        if DIV == 0:
            s = tl.math.div_rn(g, 1.0 + e)
        else:
            s = g / (1.0 + e)
        s = s.to(dt).to(tl.float32)
        tl.store(OUT + offs, (s * u).to(dt), mask=m)

    _KERNELS.update(add_square=add_square_kernel, norm_apply=norm_apply_kernel, add_rms_norm=add_rms_norm_kernel,
                    rope_cache=rope_cache_kernel, silu_mul=silu_mul_kernel)
    from runtime import decode_kernels  # lazy: it imports triton (helpers resolve as module globals)

    _KERNELS.update(add_rms_norm_ordered=decode_kernels.add_rms_norm_ordered_kernel,
                    greedy_tail=decode_kernels.greedy_tail_kernel)
    return _KERNELS


def _rope_cache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                pos: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, heads: int, kv_heads: int,
                head_dim: int, *, asm: bool = False) -> torch.Tensor:
    b = q.shape[0]
    qo = torch.empty(b, heads, 1, head_dim, dtype=q.dtype, device=q.device)
    _kernels()["rope_cache"][(b, heads + kv_heads)](
        q, k, v, cos, sin, pos, qo, k_cache, v_cache, k_cache.shape[2], NH=heads, NKV=kv_heads,
        HALF=head_dim // 2, ASM=asm, num_warps=1)
    return qo


def _silu_mul(gate: torch.Tensor, up: torch.Tensor, *, exp: int = 0, div: int = 0) -> torch.Tensor:
    out = torch.empty_like(gate)
    n = gate.numel()
    _kernels()["silu_mul"][(-(-n // 1024),)](gate, up, out, n, EXP=exp, DIV=div, BLOCK=1024, num_warps=4)
    return out


def _add_rms_norm3(delta: torch.Tensor | None, res: torch.Tensor, weight: torch.Tensor, eps: float, *,
                   rsqrt: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    h = res.shape[-1]
    rows = res.numel() // h
    block = triton_next_pow2(h)
    warps = 8 if block >= 2048 else 4
    new_res = torch.empty_like(res) if delta is not None else res
    sq = torch.empty(res.shape, dtype=torch.float32, device=res.device)
    k = _kernels()
    k["add_square"][(rows,)](delta if delta is not None else res, res, new_res, sq, h, HAS_D=delta is not None,
                             BLOCK=block, num_warps=warps)
    var = sq.mean(-1, keepdim=True)  # the very reduction LlamaRMSNorm runs
    out = torch.empty(res.shape, dtype=torch.result_type(weight, res), device=res.device)
    k["norm_apply"][(rows,)](new_res, var, weight, out, h, eps, RSQRT=rsqrt, BLOCK=block, num_warps=warps)
    return new_res, out


def _add_rms_norm1(delta: torch.Tensor | None, res: torch.Tensor, weight: torch.Tensor, eps: float, *,
                   rsqrt: int = 0, asm: bool = True, var: torch.Tensor | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm (and the residual add) in one kernel whose variance is summed in torch's CUDA ``mean`` order for
    this many rows (:mod:`runtime.reduce_order`). ``var``: a float32 buffer of one element per row that
    receives the variance (the exactness check reads it). Raises where that order is not modelled."""
    h = res.shape[-1]
    rows = res.numel() // h
    order = mean_order(rows, h)
    if isinstance(order, str):
        raise JalapenoError(f"no one-kernel RMSNorm for {rows} rows of {h}: {order}; use the three-kernel form.")
    block = triton_next_pow2(h)
    new_res = torch.empty_like(res) if delta is not None else res
    out = torch.empty(res.shape, dtype=torch.result_type(weight, res), device=res.device)
    if var is None:
        var = torch.empty(rows, dtype=torch.float32, device=res.device)
    _kernels()["add_rms_norm_ordered"][(rows,)](
        delta if delta is not None else res, res, weight, out, new_res, var, h, eps, order.factor,
        HAS_D=delta is not None, LANES=order.lanes, SPLIT=order.split, THREADS=order.threads, VEC=order.vec,
        ROUNDS=order.rounds, BLOCK=block, RSQRT=rsqrt, ASM=asm, num_warps=8 if block >= 2048 else 4)
    return new_res, out


def _add_rms_norm_any(delta: torch.Tensor | None, res: torch.Tensor, weight: torch.Tensor,
                      eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One kernel where torch's order is modelled, else three (unverified: :class:`VerifiedOps` checks)."""
    h = res.shape[-1]
    if isinstance(mean_order(res.numel() // h, h), str):
        return _add_rms_norm3(delta, res, weight, eps)
    return _add_rms_norm1(delta, res, weight, eps)


def _greedy_tail(logits: torch.Tensor, logits_out: torch.Tensor, next_ids: torch.Tensor, ids: torch.Tensor,
                 pos: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, zero: torch.Tensor,
                 ninf: torch.Tensor) -> None:
    """:meth:`TorchOps.greedy_tail` in one kernel (argmax is exact by definition: the first index of the max)."""
    b, v = logits.shape
    length = mask.numel()
    _kernels()["greedy_tail"][(b,)](logits, logits_out, next_ids, ids, pos, mask, v, length,
                                    BLOCK_V=triton_next_pow2(v), BLOCK_L=triton_next_pow2(length),
                                    num_warps=16 if v >= 16384 else 4)


class TritonOps:
    """The operations fused on CUDA, bit for bit Hugging Face's: RMSNorm and the residual add as one kernel
    whose variance is summed in the order of torch's CUDA ``mean`` (:mod:`runtime.reduce_order`; the
    three-kernel form — add and square, torch's own ``mean``, normalise — where that order is not modelled),
    RoPE + cache write and SiLU·up as one kernel each, with CUDA's ``expf``/``rsqrtf`` and IEEE division, and
    the step's tail (logits kept, argmax, position and mask) as one kernel."""

    name = "triton"

    add_rms_norm = staticmethod(_add_rms_norm_any)
    rope_cache = staticmethod(_rope_cache)
    silu_mul = staticmethod(_silu_mul)
    greedy_tail = staticmethod(_greedy_tail)


class TritonFastOps:
    """As :class:`TritonOps` but RMSNorm in one kernel (its own reduction order: last-place differences in
    the variance, so greedy tokens can differ from Hugging Face's where two logits are nearly tied)."""

    name = "triton-fast"

    @staticmethod
    def add_rms_norm(delta: torch.Tensor | None, res: torch.Tensor, weight: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        h = res.shape[-1]
        out = torch.empty(res.shape, dtype=torch.result_type(weight, res), device=res.device)
        new_res = torch.empty_like(res) if delta is not None else res
        block = triton_next_pow2(h)
        _kernels()["add_rms_norm"][(res.numel() // h,)](
            delta if delta is not None else res, res, weight, out, new_res, h, eps, HAS_D=delta is not None,
            BLOCK=block, num_warps=8 if block >= 2048 else 4)
        return new_res, out

    rope_cache = staticmethod(_rope_cache)
    silu_mul = staticmethod(_silu_mul)
    greedy_tail = staticmethod(_greedy_tail)


def triton_next_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


DecodeOps = Any  # has name, add_rms_norm, rope_cache, silu_mul, greedy_tail (TorchOps, TritonOps, VerifiedOps)


class VerifiedOps:
    """Each fused op checked bit for bit against :class:`TorchOps` on random inputs of the model's shapes,
    trying the kernel's variants (CUDA's rsqrtf / the approximate instruction / 1 / sqrt; expf / ex2-based exp;
    IEEE / approximate divide): the first variant that is bit-exact is used, and an op no variant matches runs
    as torch ops. So the captured step keeps Hugging Face's greedy tokens whatever the libraries' math does.
    ``report`` says what was chosen per op.

    RMSNorm is tried as one kernel first (:func:`_add_rms_norm1`: the variance summed in the order of torch's
    CUDA ``mean``, which depends on the number of rows), then as three kernels (torch's own ``mean``). Its
    check is per row count — rows 1 and 2 here, any other count on its first call — and strict: ``draws``
    random inputs of very different magnitudes, the outputs and the one-kernel variance itself bit for bit,
    since a wrong summation tree can still round to the same bf16 outputs on some inputs.
    ``one_kernel_norm=False`` / ``fused_tail=False`` leave those variants out (for comparisons)."""

    def __init__(self, device: torch.device, dtype: torch.dtype, *, hidden: int, intermediate: int, heads: int,
                 kv_heads: int, head_dim: int, eps: float, seed: int = 0, vocab: int = 32000, draws: int = 12,
                 one_kernel_norm: bool = True, fused_tail: bool = True,
                 norm_variants: list[tuple[str, Any, bool]] | None = None) -> None:
        if draws < 1:
            raise JalapenoError(f"`draws` must be >= 1, got {draws}.")
        self.device, self.dtype, self.hidden, self.eps, self.draws = device, dtype, hidden, eps, draws
        gen = self.gen = torch.Generator(device=device).manual_seed(seed)

        def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
            return (torch.randn(*shape, generator=gen, device=device) * scale).to(dtype)

        self.report: dict[str, str] = {}
        self.mismatch: dict[str, Any] = {}
        modes = ((0, "CUDA rsqrtf"), (1, "rsqrt.approx"), (2, "1/sqrt"))
        if norm_variants is None:
            norm_variants = [(f"one kernel in torch's mean order, rsqrt={name}",
                              functools.partial(_add_rms_norm1, rsqrt=mode), True)
                             for mode, name in modes] if one_kernel_norm else []
            norm_variants += [(f"three kernels (torch's mean), rsqrt={name}",
                               functools.partial(_add_rms_norm3, rsqrt=mode), False) for mode, name in modes]
        self._norm_variants = norm_variants
        self._norm_by_rows: dict[int, Any] = {}
        self._norm_notes: list[str] = []
        for rows in (1, 2):
            self._norm_for(rows)
        g, u = rnd(2, 1, intermediate, scale=2.0), rnd(2, 1, intermediate)
        ref_s = TorchOps.silu_mul(g, u)
        self.silu_mul = self._pick("silu_mul", TorchOps.silu_mul, [
            (f"exp={en}, divide={dn}", functools.partial(_silu_mul, exp=e, div=d))
            for e, en in ((0, "CUDA expf"), (1, "ex2-based")) for d, dn in ((0, "IEEE"), (1, "approximate"))],
            lambda f: torch.equal(f(g, u), ref_s))
        length = 8
        q, k, v = rnd(2, 1, heads * head_dim), rnd(2, 1, kv_heads * head_dim), rnd(2, 1, kv_heads * head_dim)
        cos, sin = rnd(length, head_dim).clamp(-1, 1), rnd(length, head_dim).clamp(-1, 1)
        pos = torch.tensor([5], device=device)

        def rope_ok(f: Any) -> bool:
            caches = [torch.zeros(2, kv_heads, length, head_dim, dtype=dtype, device=device) for _ in range(4)]
            a = f(q, k, v, cos, sin, pos, caches[0], caches[1], heads, kv_heads, head_dim)
            b = TorchOps.rope_cache(q, k, v, cos, sin, pos, caches[2], caches[3], heads, kv_heads, head_dim)
            parts = {"q": (a, b), "k": (caches[0], caches[2]), "v": (caches[1], caches[3])}
            bad = {n: {"elements": int((x != y).sum()), "of": x.numel(), "max_abs": float((x.float() - y.float()).abs().max())}
                   for n, (x, y) in parts.items() if not torch.equal(x, y)}
            if bad:  # what differed, for the record (a fused op that is not exact is not used)
                self.mismatch[f"rope_cache#{len(self.mismatch)}"] = bad
            return not bad

        self.rope_cache = self._pick("rope_cache", TorchOps.rope_cache, [
            ("fused", _rope_cache), ("fused, explicit mul.rn/add.rn", functools.partial(_rope_cache, asm=True))],
            rope_ok)
        self.greedy_tail = self._pick("greedy_tail", TorchOps.greedy_tail,
                                      [("one kernel", _greedy_tail)] if fused_tail else [],
                                      lambda f: self._tail_exact(f, vocab))
        fused = sum("torch (no fused variant" not in v for v in self.report.values())
        n = len(self.report)
        self.name = "triton" if fused == n else f"triton ({fused} of {n} fused, rest torch)"

    # ------------------------------------------------------------------ RMSNorm, per row count
    def add_rms_norm(self, delta: torch.Tensor | None, res: torch.Tensor, weight: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        return self._norm_for(res.numel() // res.shape[-1])(delta, res, weight, eps)

    def _norm_for(self, rows: int) -> Any:
        f = self._norm_by_rows.get(rows)
        if f is None:  # first call at this batch: checked now (outside any capture: the warm-up runs first)
            f = self._norm_by_rows[rows] = self._pick(
                "add_rms_norm", TorchOps.add_rms_norm, [(lbl, fn) for lbl, fn, _ in self._norm_variants],
                lambda fn: self._norm_exact(fn, rows, next(v for _, g, v in self._norm_variants if g is fn)))
            self._norm_notes.append(f"rows {rows}: {self.report['add_rms_norm']}")
            self.report["add_rms_norm"] = "; ".join(self._norm_notes)
        return f

    def _norm_inputs(self, rows: int, draw: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Residual, delta and weight of draw ``draw``: plain normals, tiny, large, and mixed magnitudes."""
        shape, gen, dev = (rows, 1, self.hidden), self.gen, self.device
        kind = draw % 4
        if kind == 3:  # every element its own magnitude, 1e-3 to 1e2
            mag = 10 ** (torch.rand(shape, generator=gen, device=dev) * 5 - 3)
            res, delta = (torch.randn(shape, generator=gen, device=dev) * mag for _ in range(2))
        else:
            scale = (1.0, 1e-2, 30.0)[kind]
            res, delta = (torch.randn(shape, generator=gen, device=dev) * scale for _ in range(2))
        w = torch.randn(self.hidden, generator=gen, device=dev) * 0.1 + 1
        return res.to(self.dtype), delta.to(self.dtype), w.to(self.dtype)

    def _norm_exact(self, f: Any, rows: int, has_var: bool) -> bool:
        var = torch.empty(rows, dtype=torch.float32, device=self.device)
        for draw in range(self.draws):
            res, delta, w = self._norm_inputs(rows, draw)
            for d in (delta, None) if draw < 2 else (delta,):
                kw = {"var": var} if has_var else {}
                got = f(d, res, w, self.eps, **kw)
                ref = TorchOps.add_rms_norm(d, res, w, self.eps)
                if not all(torch.equal(a, b) for a, b in zip(got, ref)):
                    return False
                if has_var:  # the variance itself: a wrong tree can still give the same bf16 outputs
                    want = ref[0].to(torch.float32).pow(2).mean(-1).reshape(-1)
                    if not torch.equal(var, want):
                        self.mismatch[f"add_rms_norm rows={rows} draw={draw}"] = {
                            "variance_differs": int((var != want).sum()), "of": rows}
                        return False
        return True

    # ------------------------------------------------------------------ the step's tail
    def _tail_exact(self, f: Any, vocab: int) -> bool:
        dev, dt, gen = self.device, self.dtype, self.gen
        length = 16
        for trial in range(4):
            logits = torch.randn(2, vocab, generator=gen, device=dev).to(dt)
            if trial >= 1:  # the maximum twice (first index wins), -inf entries, a row of one value
                top = logits.max(-1).values
                logits[0, vocab // 3] = top[0]
                logits[0, 2 * vocab // 3] = top[0]
                logits[1, : vocab // 2] = float("-inf")
            if trial == 3:
                logits[1] = 0.5
            bufs = []
            for _ in range(2):
                bufs.append([torch.zeros(2, vocab, dtype=dt, device=dev),
                             torch.zeros(2, 1, dtype=torch.long, device=dev),
                             torch.zeros(2, 1, dtype=torch.long, device=dev),
                             torch.full((1,), 6 + trial, dtype=torch.long, device=dev),
                             torch.arange(length, device=dev).view(1, 1, 1, length),
                             torch.zeros(1, 1, 1, length, dtype=dt, device=dev),
                             torch.zeros((), dtype=dt, device=dev),
                             torch.full((), float("-inf"), dtype=dt, device=dev)])
            f(logits, *bufs[0])
            TorchOps.greedy_tail(logits, *bufs[1])
            if not all(torch.equal(a, b) for a, b in zip(bufs[0], bufs[1])):
                return False
        return True

    def _pick(self, op: str, fallback: Any, variants: list[tuple[str, Any]], exact: Any) -> Any:
        errors = []
        for label, f in variants:
            try:
                ok = exact(f)
            except Exception as exc:  # noqa: BLE001 - a variant this Triton cannot build is just not taken
                errors.append(f"{label}: {type(exc).__name__}")
                continue
            if ok:
                self.report[op] = f"triton, {label}"
                return f
        self.report[op] = "torch (no fused variant was bit-exact here" + (f"; failed: {errors}" if errors else "") + ")"
        return fallback


def pick_ops(kind: str, device: torch.device, *, head_dim: int, dtype: torch.dtype) -> tuple[DecodeOps, str | None]:
    """The ops for ``kind`` on ``device``: "auto" (the exact fused kernels where they can run, else torch),
    "torch", "triton" or "triton-fast"; with "auto", also why the fused kernels were not taken."""
    if kind not in ("auto", "torch", "triton", "triton-fast"):

        raise JalapenoError(f"`ops` must be 'auto', 'torch', 'triton' or 'triton-fast', got {kind!r}.")
    if kind == "torch":
        return TorchOps, None
    why = None
    if device.type != "cuda":
        why = "fused kernels run on CUDA only"
    elif not _pow2(head_dim // 2) or head_dim % 2:
        why = f"head_dim {head_dim}: the fused RoPE kernel needs head_dim / 2 a power of two"
    elif dtype not in (torch.bfloat16, torch.float16, torch.float32):
        why = f"dtype {dtype} not handled by the fused kernels"
    else:
        try:
            import triton  # noqa: F401
        except ImportError:
            why = "triton is not installed"
    if why is None:
        return (TritonFastOps if kind == "triton-fast" else TritonOps), None
    if kind != "auto":

        raise JalapenoError(f"`ops='triton'` is not possible here: {why}; use ops='torch' or 'auto'.")
    return TorchOps, why


__all__ = ["DecodeOps", "TorchOps", "TritonFastOps", "TritonOps", "pick_ops"]
