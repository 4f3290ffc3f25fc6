"""The summation order of torch's CUDA ``mean`` over the last axis of a contiguous float32 ``(rows, width)`` tensor.

Hugging Face's RMSNorm takes the variance as ``x.pow(2).mean(-1, keepdim=True)``; a kernel that fuses the
norm must add the squares in the order torch's CUDA reduction does, or the variance moves in the last place and
greedy tokens can change at near ties. That order is fixed by ATen's ``Reduce.cuh`` (``setReduceConfig``,
``input_vectorized_thread_reduce_impl`` / ``thread_reduce_impl``, ``block_y_reduce``, ``block_x_reduce``) and
``MeanOps`` (``ReduceMomentKernel.cu``); read from the source, it is, for one row:

- ``lanes`` threads share the row. Rows wider than 128 are read as 4-element vectors: thread ``t`` loads vectors
  ``t, t + lanes, t + 2 lanes, ...`` and keeps one accumulator per position in the vector, each summed in load
  order; rows of 128 and less are read element by element, element ``t + m * lanes`` going to accumulator
  ``m % 4``. Either way the four accumulators are combined left to right, ``((a0 + a1) + a2) + a3``.
- The lanes are then folded by halving (shared memory: lane ``i`` takes lane ``i + n/2``) down to 32, then by
  the warp shuffle ``value += shfl_down(value, offset)`` for offsets 1, 2, 4, 8, 16: adjacent pairs first.
  Where the launch splits a row across the warps of a block too (``block_y_reduce`` before ``block_x_reduce``),
  the same halving runs over the flat thread index, so it is the same tree over ``lanes = width x height``.
- The mean is the sum times ``float(rows) / float(rows * width)`` (``MeanOps::project``), a float32 product.

``lanes`` follows from the launch heuristics (:func:`mean_order`), which depend on the number of rows: a step at
batch 1 and a check at batch 2 use different trees. Launches this module does not model (a vector tail: width
above 128 not a multiple of 4; a row split across blocks) return a reason instead, and the fused kernel is then
not used. The reference :func:`mean_in_order` states the order in plain torch (float32 adds are IEEE on every
device), so the CPU tests pin it; whether it is *torch's* order on a given build is checked on the device
(:class:`runtime.decode_ops.VerifiedOps` compares the fused kernel with ``mean`` bit for bit and falls back).
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
    """How one row is summed: ``lanes`` threads, ``vec`` 4 (vectorised loads, an accumulator per vector position)
    or 1 (element loads, four accumulators by step), the row's ``width``, and ``factor`` the float32 the sum is
    multiplied by."""

    lanes: int
    vec: int
    width: int
    factor: float

    @property
    def rounds(self) -> int:
        """Loads per accumulator slot: vectors per lane (vec 4) or groups of four elements per lane (vec 1)."""
        if self.vec == _VEC:
            return -(-(self.width // _VEC) // self.lanes)
        return -(-self.width // (self.lanes * _ACCS))


def _last_pow2(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def mean_order(rows: int, width: int) -> MeanOrder | str:
    """``setReduceConfig`` for ``mean(-1)`` over a contiguous, 16-byte aligned float32 ``(rows, width)`` tensor:
    the order (:class:`MeanOrder`), or why it is not modelled (a string)."""
    if rows < 1 or width < 1:
        raise ValueError(f"`rows` and `width` must be >= 1, got rows={rows}, width={width}.")
    vectorised = width > 128
    if vectorised and width % _VEC:
        return f"width {width}: a vector tail (width above 128 not a multiple of {_VEC})"
    dim0 = width // _VEC if vectorised else width
    dim0_pow2 = _last_pow2(dim0) if dim0 < _MAX_THREADS else _MAX_THREADS
    dim1_pow2 = _last_pow2(rows) if rows < _MAX_THREADS else _MAX_THREADS
    block_w = min(dim0_pow2, _WARP)
    block_h = min(dim1_pow2, _MAX_THREADS // block_w)
    block_w = min(dim0_pow2, _MAX_THREADS // block_h)
    lanes = block_w
    per_thread = -(-width // lanes)
    if per_thread >= block_h * 16 or per_thread >= 256:  # the row is split across the block's warps too
        lanes = block_w * block_h
        if -(-width // lanes) >= 256:
            return f"rows {rows}, width {width}: the launch may split a row across blocks (a global reduce)"
    factor = float(torch.tensor(float(rows), dtype=torch.float32) / torch.tensor(float(rows * width),
                                                                                 dtype=torch.float32))
    return MeanOrder(lanes=lanes, vec=_VEC if vectorised else 1, width=width, factor=factor)


def lane_sums(sq: torch.Tensor, order: MeanOrder) -> torch.Tensor:
    """Each lane's combined accumulators, ``(rows, lanes)`` float32, in the order of the module docstring."""
    rows, width = sq.shape
    lanes = order.lanes
    acc = torch.zeros(rows, lanes, _ACCS, dtype=torch.float32, device=sq.device)
    if order.vec == _VEC:
        vectors = sq.reshape(rows, width // _VEC, _VEC)
        for start in range(0, width // _VEC, lanes):
            take = min(lanes, width // _VEC - start)
            acc[:, :take] = acc[:, :take] + vectors[:, start:start + take]
    else:
        for step, start in enumerate(range(0, width, lanes)):
            take = min(lanes, width - start)
            acc[:, :take, step % _ACCS] = acc[:, :take, step % _ACCS] + sq[:, start:start + take]
    return ((acc[..., 0] + acc[..., 1]) + acc[..., 2]) + acc[..., 3]


def fold_lanes(lane: torch.Tensor) -> torch.Tensor:
    """``(rows, lanes)`` -> ``(rows,)``: halving down to a warp, then the shuffle tree (adjacent pairs first)."""
    while lane.shape[1] > _WARP:
        half = lane.shape[1] // 2
        lane = lane[:, :half] + lane[:, half:]
    while lane.shape[1] > 1:
        lane = lane[:, 0::2] + lane[:, 1::2]
    return lane[:, 0]


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
    total = fold_lanes(lane_sums(sq, order))
    return total * torch.tensor(order.factor, dtype=torch.float32, device=sq.device)


__all__ = ["MeanOrder", "fold_lanes", "lane_sums", "mean_in_order", "mean_order"]
