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


__all__ = ["Branches"]
