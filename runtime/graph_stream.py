"""Streamed weights inside a captured decode step: a fixed round-robin over the Streamer's staging slots.

The Streamer's hooks decide at run time which unit goes into which slot (a prefetcher, a free-slot queue),
which a CUDA graph cannot replay. A decode step calls the same units in the same order every token, so here
the schedule is fixed: the k-th streamed unit of the step uses slot ``k % S`` (S = lookahead + 1 slots, the
ones the Streamer reserved and the store already charged). Its host-to-device copy runs on the copy stream
after the compute stream finished the unit that used the slot before (an event), and the compute stream
waits for the copy (another event) before the unit runs. Issued at most ``S - 1`` units ahead. The copy stream
forks from the compute stream when the step begins and joins it when the step ends, so the whole step —
copies included — is one graph. Page-locked host memory makes every copy an asynchronous DMA that the graph
records as a memcpy node.

The same schedule runs eagerly too (the warm-up before capture, and the ``capture=False`` path).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from runtime.errors import JalapenoError
from runtime.streaming import Streamer, StreamUnit


class StaticStreamSchedule:
    """Bind streamed units to slot views on a fixed schedule (see the module docstring).

    Args:
        streamer: the session's Streamer (its units, store, staging slots and copy stream).
        device: the CUDA device the streamed units run on.
        order: the streamed units in the order the step uses them.
    """

    def __init__(self, streamer: Streamer, device: torch.device, order: list[StreamUnit]) -> None:
        bufs, stream = streamer.staging(device)
        if order and (not bufs or stream is None):
            raise JalapenoError(f"no staging slots or copy stream on {device} for {len(order)} streamed units.")
        self.streamer = streamer
        self.store = streamer.store
        self.device = device
        self.order = order
        self.index = {u.uid: i for i, u in enumerate(order)}
        self.slots = bufs
        self.copy_stream = stream
        self.bytes_per_step = sum(u.nbytes for u in order)
        self._reset()

    def _reset(self) -> None:
        self._issued = 0
        self._done: list[Any] = [None] * len(self.order)
        self._last_use: list[Any] = [None] * len(self.slots)

    def begin(self) -> None:
        """Start a step: the copy stream forks from the compute stream."""
        self._reset()
        if self.order:
            self.copy_stream.wait_stream(torch.cuda.current_stream(self.device))

    def _issue_until(self, k: int) -> None:
        s = len(self.slots)
        while self._issued <= min(k, len(self.order) - 1):
            i = self._issued
            unit = self.order[i]
            with torch.cuda.stream(self.copy_stream):
                if self._last_use[i % s] is not None:
                    self.copy_stream.wait_event(self._last_use[i % s])
                views = self.store.fetch(unit.keys, self.device, out=self.slots[i % s])
                done = torch.cuda.Event()
                done.record(self.copy_stream)
            self._done[i] = (views, done)
            self._issued += 1

    def bind(self, unit: StreamUnit) -> None:
        """Before ``unit`` runs: its copy (and up to S - 1 more) issued, waited for, its tensors bound."""
        i = self.index[unit.uid]
        self._issue_until(i + len(self.slots) - 1)
        views, done = self._done[i]
        torch.cuda.current_stream(self.device).wait_event(done)
        for (m, a, is_param), live, view in zip(unit.members, unit.live, views):
            if is_param:
                live.data = view
                m._parameters[a] = live
            else:
                m._buffers[a] = view

    def release(self, unit: StreamUnit) -> None:
        """After ``unit`` ran: placeholders back, its slot free once the compute stream is past it."""
        i = self.index[unit.uid]
        for (m, a, is_param), placeholder, live in zip(unit.members, unit.placeholders, unit.live):
            if is_param:
                m._parameters[a] = placeholder
                live.data = torch.empty(0, dtype=live.dtype, device=self.device)
            else:
                m._buffers[a] = placeholder
        for m in {id(m): m for m, _, _ in unit.members}.values():
            drop = getattr(m, "release_prepared", None)  # a kernel's packed copy of the slot's bytes
            if drop is not None:
                drop()
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        self._last_use[i % len(self.slots)] = event
        self._done[i] = None

    def end(self) -> None:
        """End a step: the copy stream joins the compute stream (every copy was consumed)."""
        if self.order:
            if self._issued != len(self.order):
                raise JalapenoError(f"the step used {self._issued} of {len(self.order)} streamed units; the "
                                    f"static schedule needs every one each step.")
            torch.cuda.current_stream(self.device).wait_stream(self.copy_stream)


def run_unit(unit: StreamUnit | None, schedule: StaticStreamSchedule | None, module: nn.Module,
             *args: torch.Tensor) -> torch.Tensor:
    """``module(*args)``; a streamed module runs through the schedule (its Streamer hooks bypassed)."""
    if unit is None or schedule is None:
        return module(*args)
    schedule.bind(unit)
    try:
        return module.forward(*args)
    finally:
        schedule.release(unit)


__all__ = ["StaticStreamSchedule", "run_unit"]
