"""Dynamic layer streaming: weights of streamed units materialise on their execution device just in time.

A *unit* is one module that owns tensors directly (a Linear, a QuantizedLinear, a norm). Each has an
execution device and a home tier in the :class:`~runtime.tensors.TensorStore`. A unit whose home is its
device's own tier is *resident*: its tensors are moved there once. Any other unit is *streamed*: its
tensors are swapped for meta-device placeholders, and per-instance forward hooks (never a patched class or
forward) fetch them into a staging slot before the module runs and give the slot back after it ran.

Lifecycle (accelerate's ModelHook shape, our code): ``attach()`` registers the tensors, reserves the
staging slots (so a budget that cannot hold them fails before anything runs) and installs hooks;
``pre_forward`` binds the unit's tensors and asks the prefetcher what to fetch next; ``post_forward``
unbinds and recycles the slot; ``detach()`` removes every hook and puts the original parameters back.

Swapping: a streamed parameter is replaced in ``module._parameters`` by a meta-device placeholder of the
same shape and dtype (so shape queries still work and any accidental use fails loudly), and while bound by
a "live" Parameter on the execution device whose ``.data`` is a view into the slot. The original
Parameter objects are kept and restored on ``detach()``. Buffers (QuantizedLinear's packed weights and
scales) are swapped the same way in ``module._buffers``.

Overlap on a GPU: copies run on a dedicated CUDA stream from page-locked host memory. The compute stream
waits on a per-unit "copy done" event; a slot's next copy waits on its "last use" event recorded on the
compute stream. Both are device-side waits, so the host never blocks and runs ahead issuing kernels and
copies. Disk-homed units executed on the host are mapped, not copied (the page cache is the source): each
file is mapped once at attach and its views kept (:mod:`runtime.mapped`); a use costs one
``MADV_POPULATE_READ`` on the unit's pages ahead of time (on one worker thread, GIL released) and one
``MADV_DONTNEED`` after it ran, so only the units in flight count in the resident set. The default ``disk_io``,
``"mmap-populate"``, hands a unit whose pages are all in the page cache (by ``cachestat``) to no worker: it is
populated on the compute thread just before it runs; any other is populated ahead on the worker. ``disk_io`` picks
the alternatives the CPU benchmark measures against it: ``"mmap-auto"`` (the same, but a cached unit is left to the
GEMM's own faults), ``"mmap"`` (every unit populated ahead on the worker), readahead
hints only (``"mmap-willneed"``: the GEMM faults the pages in), populate inline at first use (``"mmap-sync"``: no
worker thread), a fresh mapping per use (``"remap"``: ``mmap`` with ``MAP_POPULATE`` on the worker, unmapped
after use), or copies into staging slots (``"read"``: ``os.preadv``). For GPU execution disk-homed units are read,
then copied.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch import nn

from runtime._log import get_logger
from runtime.device_hooks import attach_device_hooks, move_to
from runtime.errors import BudgetExceededError, JalapenoError
from runtime.kernels.linear import use_unpacked_kernels
from runtime.mapped import MappedFiles
from runtime.prefetch import Prefetcher, SequentialPrefetcher
from runtime.stream_unit import (
    _EMPTY,
    DEFAULT_DISK_IO,
    DISK_IO,
    PERSISTENT_DISK_IO,
    StreamStats,
    StreamUnit,
    _assign,
    _Slot,
)
from runtime.tensors import TensorStore, tier_of

__all__ = ["DEFAULT_DISK_IO", "DISK_IO", "PERSISTENT_DISK_IO", "StreamStats", "StreamUnit", "Streamer",
           "attach_device_hooks", "move_to"]

logger = get_logger(__name__)


def _prepared_releases(unit: StreamUnit) -> tuple[Any, ...]:
    """The ``release_prepared`` callables of the unit's modules (each once): QuantizedLinear's packed copies."""
    owners = {id(m): m for m, _, _ in unit.members}.values()
    return tuple(r for r in (getattr(m, "release_prepared", None) for m in owners) if r is not None)


class Streamer:
    """Attaches streaming hooks to units, executes fetch/release, detaches cleanly.

    Args:
        store: where the units' tensors are registered and their staging slots reserved.
        units: every managed module, in execution order (the sequential prefetcher follows this order).
        lookahead: how many streamed units to have in flight beyond the one running; each device that
            runs streamed units reserves ``lookahead + 1`` slots as large as its largest streamed unit.
        prefetcher: which units to fetch next; default ``SequentialPrefetcher`` over the streamed units.
        time_transfers: record CUDA events around each host-to-device copy (see ``transfer_seconds``).
        disk_io: how disk-tier units executed on the host arrive (see the module docstring; default
            ``DEFAULT_DISK_IO``, ``"mmap-populate"``): ``"mmap"``
            (mapped once, populated ahead by the worker thread, dropped after use), ``"mmap-willneed"``,
            ``"mmap-sync"``, ``"remap"`` or ``"read"``. Mapped pages count in the process' RSS while
            populated, which the reserved ``lookahead + 1`` units account for.
        huge_pages: map disk-tier files with huge pages where the kernel has them
            (:class:`~runtime.mapped.MappedFiles`).
        keep_bound: a unit mapped persistently (host-executed, disk-homed, ``mmap*`` modes) stays bound to its
            mapped views between uses: its pages are still dropped after each use, but no tensors are swapped per
            use (the swap was ~1/3 of the hooks' host time per token). ``False`` gives it meta placeholders between
            uses, as every other streamed unit has; so does a unit holding a QuantizedLinear (kernel selection
            recognises streamed layers by their meta weights).
    """

    def __init__(self, store: TensorStore, units: Sequence[StreamUnit], *, lookahead: int = 1,
                 prefetcher: Prefetcher | None = None, time_transfers: bool = False,
                 disk_io: str = DEFAULT_DISK_IO, huge_pages: bool = True, keep_bound: bool = True) -> None:
        if lookahead < 0:
            raise JalapenoError(f"`lookahead` must be >= 0, got {lookahead}.")
        if disk_io not in DISK_IO:
            raise JalapenoError(f"`disk_io` must be one of {', '.join(map(repr, DISK_IO))}, got {disk_io!r}.")
        self.disk_io = disk_io
        self.huge_pages = huge_pages
        self.keep_bound = keep_bound
        self._persistent = disk_io in PERSISTENT_DISK_IO
        self._mapped: MappedFiles | None = None
        self._mapped_charge: tuple[int, str, str] | None = None
        self.store = store
        self.units = list(units)
        self.lookahead = lookahead
        self._prefetcher = prefetcher
        self.time_transfers = time_transfers
        self.stats = StreamStats()
        self._handles: list[Any] = []
        self._free: dict[torch.device, deque[_Slot]] = {}
        self._slot_bufs: list[tuple[torch.Tensor, str, str]] = []
        self._copy_streams: dict[torch.device, Any] = {}
        self._io: ThreadPoolExecutor | None = None
        self._timings: list[tuple[Any, Any]] = []
        self.attached = False

    # ---------------------------------------------------------------- lifecycle
    def attach(self) -> Streamer:
        if self.attached:
            raise JalapenoError("this Streamer is already attached; detach() it first.")
        try:
            for uid, unit in enumerate(self.units):
                unit.uid = uid
                self._init_unit(unit)
            self._reserve_slots()
        except BaseException:
            self.detach()
            raise
        streamed = [u.uid for u in self.units if u.streamed]
        if self._prefetcher is None:
            self._prefetcher = SequentialPrefetcher(streamed, lookahead=self.lookahead)
        if self._needs_worker(streamed):
            self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jalapeno-io")
        self.attached = True
        logger.info("streaming %d of %d units (lookahead %d)", len(streamed), len(self.units), self.lookahead)
        return self

    def _init_unit(self, unit: StreamUnit) -> None:
        module = unit.module
        owners = module.named_modules() if unit.recurse else [("", module)]
        members = []
        for sub_name, sub in owners:
            for attr, t in list(sub._parameters.items()) + list(sub._buffers.items()):
                if t is not None:
                    members.append((sub, attr, attr in sub._parameters, sub_name))
        unit.members = tuple((m, a, p) for m, a, p, _ in members)
        prefix = f"{unit.name}." if unit.name else ""
        unit.keys = tuple(f"{prefix}{s + '.' if s else ''}{a}" for _, a, _, s in members)
        unit.originals = [getattr(m, a) for m, a, _ in unit.members]
        unit.devices_before = [t.device for t in unit.originals]
        tensors = {k: t.detach() for k, t in zip(unit.keys, unit.originals)}
        tier = tier_of(unit.device)
        if not unit.streamed:
            moved = {k: t.to(unit.device) for k, t in tensors.items()}
            self.store.register(moved, tier, label=unit.name, copy=False)
            for (m, a, is_param), t in zip(unit.members, moved.values()):
                _assign(m, a, is_param, t, keep_param=True)
            if hasattr(module, "on_prepared"):
                # A kernel that repacks the weight (tinygemm int4) keeps the packed copy next to the
                # buffers: count it on the tier when it is built or dropped, so the budget covers it too.
                module.on_prepared = lambda u=unit: self._charge_prepared(u)
            return
        if tier == "cpu" and unit.home == "gpu":
            raise JalapenoError(f"unit {unit.name!r}: streaming from the 'gpu' tier to the host is not supported; "
                                f"home it on 'cpu' or 'disk'.")
        use_unpacked_kernels(module, unit.device)  # no repack per fetch (tinygemm -> the int4 GEMV on CUDA)
        self.store.register(tensors, unit.home, label=unit.name)
        unit.nbytes = self.store.group_nbytes(unit.keys)
        self._map_unit(unit)
        for (m, a, is_param), t in zip(unit.members, unit.originals):
            meta = torch.empty(t.shape, dtype=t.dtype, device="meta")
            if is_param:
                unit.placeholders.append(nn.Parameter(meta, requires_grad=False))
                unit.live.append(nn.Parameter(torch.empty(0, dtype=t.dtype, device=unit.device), requires_grad=False))
                t.data = torch.empty(0, dtype=t.dtype, device=t.device)  # drop our hold on the original memory
            else:
                unit.placeholders.append(meta)
                unit.live.append(None)
        self._park(unit)
        self._handles.append(module.register_forward_pre_hook(lambda m, a, u=unit: self._pre_forward(u)))
        self._handles.append(module.register_forward_hook(lambda m, a, o, u=unit: self._post_forward(u)))

    def _reserve_slots(self) -> None:
        by_device: dict[torch.device, int] = {}
        for u in self.units:
            if u.streamed:
                by_device[u.device] = max(by_device.get(u.device, 0), u.nbytes)
        for device, size in by_device.items():
            tier, label = tier_of(device), f"staging:{device}"
            free: deque[_Slot] = deque()
            if device.type == "cpu" and self.disk_io != "read":
                # Mapped units need no buffers, but up to lookahead + 1 of them are mapped (resident in
                # the process) at once: reserve exactly that, so the budget check happens now.
                self.store.charge(tier, (self.lookahead + 1) * size, label=label)
                self._mapped_charge = ((self.lookahead + 1) * size, tier, label)
                free.extend(_Slot(None) for _ in range(self.lookahead + 1))
                self._free[device] = free
                continue
            for _ in range(self.lookahead + 1):
                buf = self.store.allocate(tier, size, label=label, device=device)
                self._slot_bufs.append((buf, tier, label))
                free.append(_Slot(buf))
            self._free[device] = free
            if device.type == "cuda":
                self._copy_streams[device] = torch.cuda.Stream(device=device)

    def detach(self) -> None:
        """Remove every hook, free the staging slots and restore the original tensors on their devices."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for device in self._copy_streams:
            torch.cuda.synchronize(device)
        if self._io is not None:
            self._io.shutdown(wait=True)
            self._io = None
        for unit in self.units:
            if unit.fixed:  # drop our live views into the mapping before it closes
                self._unbind(unit)
                unit.fixed = False
            unit.mviews = unit.mrange = None
            if not unit.originals:
                continue
            names = unit.keys
            registered = all(n in self.store for n in names)
            if unit.streamed and registered:
                restored = [self.store.load(n) for n in names]
            else:
                restored = [getattr(m, a) for m, a, _ in unit.members]
            for (m, a, is_param), original, before, t in zip(unit.members, unit.originals, unit.devices_before,
                                                              restored):
                value = t.detach().to(before)
                if is_param:
                    original.data = value
                    m._parameters[a] = original
                else:
                    m._buffers[a] = value
            if registered:
                self.store.unregister(names, label=unit.name)
            if getattr(unit.module, "on_prepared", None) is not None:
                unit.module.on_prepared = None  # the uncharge below settles the unit's packed bytes
            for release in _prepared_releases(unit):  # a packed copy of the placed buffers must not outlive
                release()  # them: it would hold their old device's memory (the GPU residue of resident int4)
            if unit.prepared:
                self.store.uncharge(tier_of(unit.device), unit.prepared, label=f"{unit.name}:prepared")
                unit.prepared = 0
            unit.originals = []
            unit.slot = unit.pending = None
            unit.bound = False
        self._release_slots()
        self._copy_streams.clear()
        if self._mapped is not None:
            self._mapped.close()
            self._mapped = None
        self.attached = False

    def _release_slots(self) -> None:
        for buf, tier, label in self._slot_bufs:
            self.store.free(buf, tier=tier, label=label)
        self._slot_bufs.clear()
        if self._mapped_charge is not None:
            nbytes, tier, label = self._mapped_charge
            self.store.uncharge(tier, nbytes, label=label)
            self._mapped_charge = None
        self._free.clear()

    # ---------------------------------------------------------------- run-time changes (between forwards)
    def _staging_bytes(self) -> int:
        """Bytes the staging slots hold on their tiers now."""
        held = sum(buf.numel() for buf, _, _ in self._slot_bufs)
        return held + (self._mapped_charge[0] if self._mapped_charge is not None else 0)

    def _drain(self) -> None:
        """Finish and drop every prefetch in flight (nothing may be bound: call between forwards)."""
        if any(u.bound for u in self.units):
            raise JalapenoError("the Streamer can only be reconfigured between forwards (a unit is running).")
        for unit in self.units:
            if unit.pending is not None:
                self._wait(unit)
                slot = unit.slot
                unit.slot = unit.pending = None
                self._release_mapping(unit, slot)
        for device in self._copy_streams:
            torch.cuda.synchronize(device)

    def set_lookahead(self, lookahead: int) -> None:
        """Change how many units are fetched ahead; the staging slots are re-reserved to match (a raise that
        the budget cannot take raises BudgetExceededError and keeps the old lookahead)."""
        if lookahead < 0:
            raise JalapenoError(f"`lookahead` must be >= 0, got {lookahead}.")
        if lookahead == self.lookahead:
            return
        self._drain()
        old = self.lookahead
        self._release_slots()
        self.lookahead = lookahead
        try:
            self._reserve_slots()
        except BudgetExceededError:
            self._release_slots()
            self.lookahead = old
            self._reserve_slots()
            raise
        logger.info("lookahead %d -> %d", old, lookahead)

    def demote(self, uids: Sequence[int], home: str) -> int:
        """Stream the resident units ``uids`` from ``home`` from now on (their bytes leave the execution tier);
        returns the bytes given back there, net of any staging growth. Call between forwards."""
        self._drain()
        before = {t: self.store.used(t) for t in ("gpu", "cpu")}
        self._release_slots()
        for uid in uids:
            unit = self.units[uid]
            if unit.streamed:
                continue
            tensors = {k: getattr(m, a).detach().to("cpu", copy=True) for k, (m, a, _) in zip(unit.keys, unit.members)}
            self.store.unregister(unit.keys, label=unit.name)
            for i, ((m, a, is_param), original) in enumerate(zip(unit.members, unit.originals)):
                if is_param:  # drop the resident copy (detach restores from the store)
                    original.data = torch.empty(0, dtype=original.dtype, device=original.device)
                else:
                    unit.originals[i] = torch.empty(0, dtype=original.dtype)
            unit.home = home
            self.store.register(tensors, home, label=unit.name)
            unit.nbytes = self.store.group_nbytes(unit.keys)
            self._map_unit(unit)
            unit.placeholders, unit.live = [], []
            for (m, a, is_param), t in zip(unit.members, tensors.values()):
                meta = torch.empty(t.shape, dtype=t.dtype, device="meta")
                if is_param:
                    unit.placeholders.append(nn.Parameter(meta, requires_grad=False))
                    unit.live.append(nn.Parameter(torch.empty(0, dtype=t.dtype, device=unit.device),
                                                  requires_grad=False))
                else:
                    unit.placeholders.append(meta)
                    unit.live.append(None)
            self._park(unit)
            self._handles.append(unit.module.register_forward_pre_hook(lambda m, a, u=unit: self._pre_forward(u)))
            self._handles.append(unit.module.register_forward_hook(lambda m, a, o, u=unit: self._post_forward(u)))
        try:
            self._reserve_slots()
        except BudgetExceededError:
            if not self.lookahead:
                raise
            logger.info("demote: staging for lookahead %d does not fit; lookahead 0", self.lookahead)
            self._release_slots()
            self.lookahead = 0
            self._reserve_slots()
        streamed = [u.uid for u in self.units if u.streamed]
        if isinstance(self._prefetcher, SequentialPrefetcher) or self._prefetcher is None:
            self._prefetcher = SequentialPrefetcher(streamed, lookahead=self.lookahead)
        if self._io is None and self._needs_worker(streamed):
            self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jalapeno-io")
        freed = sum(before[t] - self.store.used(t) for t in before)
        logger.info("demoted %d units to %r (%d B freed)", len(uids), home, freed)
        return freed

    # ---------------------------------------------------------------- hooks
    def _pre_forward(self, unit: StreamUnit) -> None:
        assert self._prefetcher is not None
        self._prefetcher.observe(unit.uid)
        if unit.pending is None:
            self.stats.misses += 1
            self._start(unit)
        views = self._wait(unit)
        if not unit.fixed:
            self._bind(unit, views)
        unit.bound = True
        self._prefetch()

    def _post_forward(self, unit: StreamUnit) -> None:
        if unit.fixed:
            for release in unit.releases:
                release()
        else:
            self._unbind(unit)
        slot = unit.slot
        assert slot is not None
        if unit.device.type == "cuda":
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(unit.device))
            slot.last_use = event
        unit.slot = unit.pending = None
        unit.bound = False
        self._release_mapping(unit, slot)  # our views are unbound above, pending dropped
        self._free[unit.device].append(slot)
        self._prefetch()

    def _charge_prepared(self, unit: StreamUnit) -> None:
        now = int(unit.module.prepared_nbytes)
        if now != unit.prepared:
            tier, label = tier_of(unit.device), f"{unit.name}:prepared"
            if now > unit.prepared:
                self.store.charge(tier, now - unit.prepared, label=label)
            else:
                self.store.uncharge(tier, unit.prepared - now, label=label)
            unit.prepared = now

    def _bind(self, unit: StreamUnit, views: Sequence[torch.Tensor]) -> None:
        for (m, a, is_param), live, view in zip(unit.members, unit.live, views):
            if is_param:
                live.data = view
                m._parameters[a] = live
            else:
                m._buffers[a] = view

    def _unbind(self, unit: StreamUnit) -> None:
        for (m, a, is_param), placeholder, live in zip(unit.members, unit.placeholders, unit.live):
            if is_param:
                m._parameters[a] = placeholder
                live.data = _EMPTY.get(unit.device, live.dtype)
            else:
                m._buffers[a] = placeholder
        for release in unit.releases:
            release()

    def _park(self, unit: StreamUnit) -> None:
        """Between uses: a persistently mapped unit stays bound to its views (``keep_bound``), any other streamed
        unit holds placeholders. Also collects the unit's ``release_prepared`` callables once."""
        unit.releases = _prepared_releases(unit)  # QuantizedLinear: drop a kernel's packed copy after each use
        # Quantized units keep placeholders: kernel selection (choose_kernels, autosurgeon's autotune) tells a
        # streamed QuantizedLinear by its meta weights, and must not give it a kernel that repacks per use.
        unit.fixed = self.keep_bound and unit.mviews is not None and not unit.releases
        if unit.fixed:
            assert unit.mviews is not None
            self._bind(unit, unit.mviews)
        else:
            self._unbind(unit)

    # ---------------------------------------------------------------- fetch machinery
    def _prefetch(self) -> None:
        assert self._prefetcher is not None
        for uid in self._prefetcher.predict(self.lookahead):
            unit = self.units[uid]
            if unit.pending is not None or unit.bound:
                continue
            if not self._free[unit.device]:
                break
            self._start(unit)

    def _start(self, unit: StreamUnit) -> None:
        free = self._free[unit.device]
        if not free:  # a mispredicted unit holds the slot we need: cancel the prefetch furthest ahead
            victim = next(u for u in reversed(self.units) if u.pending is not None and not u.bound
                          and u.device == unit.device)
            self._wait(victim)
            victim_slot = victim.slot
            victim.slot = victim.pending = None
            self._release_mapping(victim, victim_slot)
            free.append(victim_slot)
        slot = free.popleft()
        unit.slot = slot
        self.stats.fetches += 1
        self.stats.bytes_fetched += unit.nbytes
        if unit.device.type == "cuda":
            job = lambda: self._copy_to_cuda(unit, slot)
        elif unit.mrange is not None:  # persistent mapping: only the pages' state changes
            mapped, rng, views = self._mapped, unit.mrange, unit.mviews
            assert mapped is not None
            if self.disk_io == "mmap-willneed":
                mapped.willneed(rng)  # asynchronous in the kernel: nothing to wait for
                unit.pending = views
                return
            if self.disk_io in ("mmap-auto", "mmap-populate") and mapped.resident(rng):
                # all cached: no handoff. mmap-auto: the GEMM's own faults map it (and read back any page evicted
                # by then); mmap-populate: one populate on the compute thread just before it runs, no fault inside
                # the GEMM's parallel region
                unit.pending = views if self.disk_io == "mmap-auto" else (lambda: (mapped.populate(rng), views)[1])
                return
            job = lambda: (mapped.populate(rng), views)[1]
            if self.disk_io == "mmap-sync":
                unit.pending = job  # runs at the unit's first wait, on the compute thread
                return
        elif slot.buf is None:
            job = lambda: self.store.map(unit.keys)
        else:
            job = lambda: self.store.fetch(unit.keys, unit.device, out=slot.buf)
        if unit.home == "disk":
            assert self._io is not None
            unit.pending = self._io.submit(job)
        else:
            unit.pending = job() if unit.device.type == "cuda" else job

    def _copy_to_cuda(self, unit: StreamUnit, slot: _Slot) -> tuple[list[torch.Tensor], Any]:
        stream = self._copy_streams[unit.device]
        with torch.cuda.stream(stream):
            if slot.last_use is not None:
                stream.wait_event(slot.last_use)
            if self.time_transfers:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record(stream)
            views = self.store.fetch(unit.keys, unit.device, out=slot.buf)
            done = torch.cuda.Event()
            done.record(stream)
            if self.time_transfers:
                end.record(stream)
                self._timings.append((start, end))
        return views, done

    def _wait(self, unit: StreamUnit) -> list[torch.Tensor]:
        pending = unit.pending
        result = pending.result() if isinstance(pending, Future) else pending() if callable(pending) else pending
        unit.pending = lambda: result  # idempotent for a second wait (cancellation path)
        if unit.device.type == "cuda":
            views, done = result
            torch.cuda.current_stream(unit.device).wait_event(done)
            return views
        if unit.mrange is not None:  # persistent mapping: the views themselves
            return result
        if unit.slot is not None and unit.slot.buf is None:  # mapped per use: (views, mapping)
            unit.slot.mapping = result[1]
            return result[0]
        return result

    # ---------------------------------------------------------------- for a captured decode step (runtime.graph_stream)
    def quiesce(self) -> None:
        """Finish every prefetch in flight and give its slot back: all staging slots free and no mapped unit's pages
        mapped (between forwards; a cold-cache measurement drops the page cache after this)."""
        for unit in self.units:
            if unit.pending is not None and not unit.bound:
                self._wait(unit)
                slot = unit.slot
                unit.slot = unit.pending = None
                self._release_mapping(unit, slot)  # mapped units: no page of theirs stays mapped
                if slot is not None:
                    self._free[unit.device].append(slot)
        for device in self._copy_streams:
            torch.cuda.synchronize(device)

    def staging(self, device: torch.device) -> tuple[list[torch.Tensor], Any]:
        """The staging slot buffers reserved on ``device`` and its copy stream (CUDA), for a caller that
        schedules the copies itself; valid until the slots are re-reserved (lookahead change, demotion)."""
        return [s.buf for s in self._free.get(device, ())], self._copy_streams.get(device)

    def _map_unit(self, unit: StreamUnit) -> None:
        """Persistent-mapping modes: map a host-executed disk unit's file once and keep its views."""
        if not (self._persistent and unit.home == "disk" and unit.device.type == "cpu"):
            return
        if self._mapped is None:
            self._mapped = MappedFiles(self.store, huge_pages=self.huge_pages)
        unit.mviews, unit.mrange = self._mapped.views(unit.keys)

    def _release_mapping(self, unit: StreamUnit, slot: _Slot | None) -> None:
        """After a mapped unit ran (or its prefetch was cancelled): drop its pages / unmap its mapping."""
        if unit.mrange is not None:
            assert self._mapped is not None
            self._mapped.drop(unit.mrange)
        elif slot is not None and slot.mapping is not None:
            self.store.unmap(slot.mapping)
            slot.mapping = None

    def _needs_worker(self, streamed: Sequence[int]) -> bool:
        """A worker thread serves disk reads, except where a persistent mapping is advised inline."""
        return any(self.units[i].home == "disk"
                   and (self.units[i].mrange is None or self.disk_io in ("mmap", "mmap-auto", "mmap-populate"))
                   for i in streamed)

    # ---------------------------------------------------------------- measurement
    def transfer_seconds(self, *, reset: bool = True) -> float:
        """Total time the copy streams spent copying since the last reset (synchronises; needs
        ``time_transfers=True``)."""
        for device in self._copy_streams:
            torch.cuda.synchronize(device)
        total = sum(s.elapsed_time(e) for s, e in self._timings) / 1e3
        if reset:
            self._timings.clear()
        return total

    def streamed_bytes_per_pass(self) -> int:
        """Bytes of all streamed units together: what one full pass over the model must move."""
        return sum(self.store.entry(k).nbytes for u in self.units if u.streamed for k in u.keys)
