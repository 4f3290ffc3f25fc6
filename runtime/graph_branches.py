"""Independent products of a decode step on parallel CUDA streams: q/k/v side by side, gate/up side by side.

A batch-1 GEMV reads its weight once; the GPU is at full bandwidth in its middle but not while its last thread
blocks drain, and the next GEMV starts only after that. Three 32 MB products in a row spend that tail three
times. Fusing them into one concatenated weight (a plan's fusion knob) removes the tails but changes cuBLAS's
kernel and its rounding, so the tokens differ from Hugging Face's at near ties. Running the same products, the
same kernels on the same bytes, on forked streams lets the next one fill the SMs while the previous one drains:
the results are bit for bit those of the sequential step (each kernel is unchanged; only their overlap is).

Forked streams are recorded into a CUDA graph as parallel branches (each side stream waits on the current
stream, the current stream waits on each side stream at the join), so the replay keeps the overlap. Off CUDA
the products simply run one after the other.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


class Branches:
    """Run up to ``width`` independent callables side by side on ``device`` (see the module docstring)."""

    def __init__(self, device: torch.device, width: int) -> None:
        self.device = device
        self.streams = [torch.cuda.Stream(device) for _ in range(width - 1)] if device.type == "cuda" else []

    def run(self, fns: Sequence[Callable[[], torch.Tensor]]) -> list[torch.Tensor]:
        """``[f() for f in fns]``, the first on the current stream and each other on its own side stream."""
        if not self.streams or len(fns) < 2:
            return [f() for f in fns]
        if len(fns) > len(self.streams) + 1:
            raise ValueError(f"{len(fns)} branches but only {len(self.streams) + 1} streams.")
        main = torch.cuda.current_stream(self.device)
        side = self.streams[:len(fns) - 1]
        for s in side:
            s.wait_stream(main)  # the input exists before any branch reads it
        outs = [fns[0]()]
        for f, s in zip(fns[1:], side):
            with torch.cuda.stream(s):
                outs.append(f())
        for s in side:
            main.wait_stream(s)  # every branch done before the step goes on
        return outs


_TOUCH: list = []


def _touch_kernel() -> object:
    """A Triton kernel that reads a tensor (keeping its lines in L2) and writes one float per program."""
    if _TOUCH:
        return _TOUCH[0]
    import triton
    import triton.language as tl

    @triton.jit
    def touch(W, OUT, N, ITERS: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        n = tl.num_programs(0)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for i in range(ITERS):
            offs = (i * n + pid) * BLOCK + tl.arange(0, BLOCK)
            acc += tl.load(W + offs, mask=offs < N, other=0.0, eviction_policy="evict_last").to(tl.float32)
        tl.store(OUT + pid, tl.sum(acc, 0))  # a result, so the loads are not dropped

    _TOUCH.append(touch)
    return touch


class L2Prefetch:
    """Read the next product's weights into the L2 cache on a side stream while the step's small kernels run.

    Between the products of a decode step (RMSNorm, RoPE, attention: ~20-30 us a layer on an H200) the memory
    sits idle; a weight read then, with an evict-last hint, is in L2 when its GEMV reads it. The GEMV itself
    is unchanged (same kernel, same bits). ``window_bytes`` caps what one window reads (the L2 holds ~50 MB).
    """

    def __init__(self, device: torch.device, *, window_bytes: int = 32 << 20, programs: int = 528,
                 block: int = 2048) -> None:
        self.device = device
        self.window_bytes = window_bytes
        self.programs = programs
        self.block = block
        self.stream = torch.cuda.Stream(device)
        self.sink = torch.empty(programs, dtype=torch.float32, device=device)
        self.pending = False

    def start(self, weights: Sequence[torch.Tensor]) -> None:
        """Fork: read the leading rows of ``weights`` (together at most ``window_bytes``) on the side stream."""
        if not weights:
            return
        share = self.window_bytes // len(weights)
        main = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(main)
        kernel = _touch_kernel()
        with torch.cuda.stream(self.stream):
            for w in weights:
                n = min(w.numel(), share // w.element_size())
                iters = -(-n // (self.programs * self.block))
                kernel[(self.programs,)](w, self.sink, n, ITERS=iters, BLOCK=self.block, num_warps=4)
        self.pending = True

    def join(self) -> None:
        """The current stream waits for the side stream (a graph capture must end joined)."""
        if self.pending:
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
            self.pending = False


__all__ = ["Branches", "L2Prefetch"]
