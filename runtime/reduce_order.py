"""The summation order of torch's CUDA ``mean`` over the last axis of a contiguous float32 ``(rows, width)`` tensor.

Hugging Face's RMSNorm takes the variance as ``x.pow(2).mean(-1, keepdim=True)``; a kernel that fuses the
norm must add the squares in the order torch's CUDA reduction does, or the variance moves in the last place and
greedy tokens can change at near ties. That order is fixed by ATen's ``Reduce.cuh`` (``setReduceConfig``,
``input_vectorized_thread_reduce_impl`` / ``thread_reduce_impl``, ``block_x_reduce``, ``block_y_reduce``) and
``MeanOps`` (``ReduceMomentKernel.cu``). For one row:

- ``lanes x split`` threads share the row (``split`` > 1 where the launch also divides a row across the block's
  warp rows). Rows of 128 and more are read as 4-element vectors: flat thread ``t = x + lanes * y`` loads vectors
  ``t, t + threads, t + 2 threads, ...`` and keeps one accumulator per position in the vector, each summed in
  load order; narrower rows are read element by element, element ``t + m * threads`` going to accumulator
  ``m % 4``. Either way the four accumulators are combined left to right, ``((a0 + a1) + a2) + a3``.
- Each warp row's ``lanes`` values are folded by halving — lane ``i`` takes lane ``i + n/2``, in shared memory
  down to 32 and then by ``shfl_down`` with offsets 16, 8, 4, 2, 1 — and then the ``split`` partial sums, by
  halving again.
- The mean is the sum times ``float(rows) / float(rows * width)`` (``MeanOps::project``), a float32 product.

How this was settled: the order first written from an older ``Reduce.cuh`` (shuffle offsets 1, 2, 4, ...;
vectorised only above 128; the warp rows folded before the lanes) matched torch 2.11's ``mean`` on an H200 in
only some draws; halving shuffles matched in every draw for every width and row count without a split
(``results/streaming_gpu_s9.md``). ``lanes`` and ``split`` follow from the launch heuristics (:func:`mean_order`),
which depend on the number of rows: a step at batch 1 and a check at batch 2 use different trees. Launches this
module does not model (a vector tail: a width of 128 or more not a multiple of 4; a row split across blocks)
return a reason instead, and the fused kernel is then not used. The reference :func:`mean_in_order` states the
order in plain torch (float32 adds are IEEE on every device), so the CPU tests pin it; whether it is *torch's*
order on a given build is checked on the device (:class:`runtime.decode_ops.VerifiedOps` compares the fused
kernel with ``mean`` bit for bit and falls back).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

_WARP = 32
_MAX_THREADS = 512  # mnt_wrapper<float>::MAX_NUM_THREADS
_VEC = 4  # ReduceConfig's input vector width (float32: 16 bytes)
_ACCS = 4  # vt0: accumulators per thread


@dataclass(frozen=True)
class MeanOrder:
    """How one row is summed: ``lanes`` threads per warp row times ``split`` warp rows, ``vec`` 4 (vectorised
    loads, an accumulator per vector position) or 1 (element loads, four accumulators by step), the row's
    ``width``, and ``factor`` the float32 the sum is multiplied by."""

    lanes: int
    vec: int
    width: int
    factor: float
    split: int = 1

    @property
    def threads(self) -> int:
        return self.lanes * self.split

    @property
    def rounds(self) -> int:
        """Loads per accumulator slot: vectors per thread (vec 4) or groups of four elements per thread (vec 1)."""
        if self.vec == _VEC:
            return -(-(self.width // _VEC) // self.threads)
        return -(-self.width // (self.threads * _ACCS))


def _last_pow2(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def mean_order(rows: int, width: int) -> MeanOrder | str:
    """``setReduceConfig`` for ``mean(-1)`` over a contiguous, 16-byte aligned float32 ``(rows, width)`` tensor:
    the order (:class:`MeanOrder`), or why it is not modelled (a string)."""
    if rows < 1 or width < 1:
        raise ValueError(f"`rows` and `width` must be >= 1, got rows={rows}, width={width}.")
    vectorised = width >= 128
    if vectorised and width % _VEC:
        return f"width {width}: a vector tail (a width of 128 or more not a multiple of {_VEC})"
    dim0 = width // _VEC if vectorised else width
    dim0_pow2 = _last_pow2(dim0) if dim0 < _MAX_THREADS else _MAX_THREADS
    dim1_pow2 = _last_pow2(rows) if rows < _MAX_THREADS else _MAX_THREADS
    block_w = min(dim0_pow2, _WARP)
    block_h = min(dim1_pow2, _MAX_THREADS // block_w)
    block_w = min(dim0_pow2, _MAX_THREADS // block_h)
    split = 1
    if -(-width // block_w) >= min(block_h * 16, 256):  # the row is split across the block's warp rows too
        split = block_h
        if -(-width // (block_w * block_h)) >= 256:
            return f"rows {rows}, width {width}: the launch may split a row across blocks (a global reduce)"
    factor = float(torch.tensor(float(rows), dtype=torch.float32) / torch.tensor(float(rows * width),
                                                                                 dtype=torch.float32))
    return MeanOrder(lanes=block_w, vec=_VEC if vectorised else 1, width=width, factor=factor, split=split)


def lane_sums(sq: torch.Tensor, order: MeanOrder) -> torch.Tensor:
    """Each thread's combined accumulators, ``(rows, threads)`` float32 (flat thread index ``x + lanes * y``), in
    the order of the module docstring."""
    rows, width = sq.shape
    threads = order.threads
    acc = torch.zeros(rows, threads, _ACCS, dtype=torch.float32, device=sq.device)
    if order.vec == _VEC:
        vectors = sq.reshape(rows, width // _VEC, _VEC)
        for start in range(0, width // _VEC, threads):
            take = min(threads, width // _VEC - start)
            acc[:, :take] = acc[:, :take] + vectors[:, start:start + take]
    else:
        for step, start in enumerate(range(0, width, threads)):
            take = min(threads, width - start)
            acc[:, :take, step % _ACCS] = acc[:, :take, step % _ACCS] + sq[:, start:start + take]
    return ((acc[..., 0] + acc[..., 1]) + acc[..., 2]) + acc[..., 3]


def _halve_last(x: torch.Tensor) -> torch.Tensor:
    while x.shape[-1] > 1:
        half = x.shape[-1] // 2
        x = x[..., :half] + x[..., half:]
    return x[..., 0]


def fold_lanes(values: torch.Tensor, order: MeanOrder) -> torch.Tensor:
    """``(rows, threads)`` -> ``(rows,)``: each warp row's lanes by halving, then the warp rows by halving."""
    rows = values.shape[0]
    return _halve_last(_halve_last(values.reshape(rows, order.split, order.lanes)))


def mean_in_order(sq: torch.Tensor, order: MeanOrder | None = None) -> torch.Tensor:
    """``sq.mean(-1)`` for a float32 ``(rows, width)`` tensor, summed in ``order`` (default: torch's for its shape,
    :func:`mean_order`); ``(rows,)`` float32."""
    if sq.dtype != torch.float32 or sq.dim() != 2:
        raise ValueError(f"`sq` must be a 2-D float32 tensor, got {sq.dtype} of shape {tuple(sq.shape)}.")
    if order is None:
        got = mean_order(*sq.shape)
        if isinstance(got, str):
            raise ValueError(f"no modelled order for shape {tuple(sq.shape)}: {got}.")
        order = got
    total = fold_lanes(lane_sums(sq, order), order)
    return total * torch.tensor(order.factor, dtype=torch.float32, device=sq.device)


__all__ = ["MeanOrder", "fold_lanes", "lane_sums", "mean_in_order", "mean_order"]
