"""Expert streaming for mixture-of-experts blocks: experts live on a slower tier, a bounded cache on the device.

Each expert of each MoE layer is sliced out of the fused parameters (transformers 5.x keeps a layer's
experts as ``gate_up_proj (E, 2I, H)`` and ``down_proj (E, H, I)``) and registered in the
:class:`~runtime.tensors.TensorStore` as its own group on the home tier (``cpu`` or ``disk``). On the
execution device an :class:`ExpertCache` holds ``capacity`` expert slots — two arenas ``(C, 2I, H)`` and
``(C, H, I)`` charged to the device's tier — shared by all layers and managed LRU.

Per-instance hooks on each experts module (no class or forward patching): the forward pre-hook reads the
routing the block computed (``top_k_index``), makes the routed experts resident (a miss fetches
synchronously and is counted), asks the prefetcher what comes next and starts those fetches (a worker
thread for host execution, a CUDA copy stream for GPU execution), then rewrites ``top_k_index`` from
expert ids to slot ids and binds the module's ``gate_up_proj``/``down_proj`` to the arenas with
``num_experts = C``. The model's own experts forward (grouped_mm, batched_mm or eager) then runs
unchanged on the cache: the same math on the same weights, only indexed through the slots. The
post-hook unbinds and lets the slots be evicted again.

Capacity is at least one layer's experts: a prefill routes many tokens and may need every expert of a
layer at once (the cache clamps to that floor and logs it).
"""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from runtime._log import get_logger
from runtime.errors import JalapenoError
from runtime.prefetch import EXPERT_PREFETCHERS, ExpertPrefetcher, GatePrefetcher, LRUOnlyPrefetcher, MarkovPrefetcher
from runtime.prefetch_hybrid import HybridPrefetcher
from runtime.tensors import TensorStore, tier_of

logger = get_logger(__name__)


def expected_experts_read(num_experts: int, top_k: int, tokens: int | float) -> float:
    """Distinct experts one MoE layer reads (and this runtime makes resident) for ``tokens`` tokens, each
    routed to ``top_k`` DISTINCT experts, expected under uniform routing: ``E (1 - (1 - k/E) ** T)``.

    The one formula for expert bytes per step: exactly ``top_k`` for one token (batch-1 decode reads
    exactly k experts), all ``E`` as ``T`` grows. The analysis (meta tensors), the cost models and the
    planner read it from here. ``tokens`` may be fractional (an average).
    """
    if num_experts <= 0 or tokens <= 0:
        return 0.0
    k = min(max(int(top_k), 1), num_experts)
    return num_experts * (1.0 - (1.0 - k / num_experts) ** tokens)


@dataclass(frozen=True)
class ExpertConfig:
    """How experts are streamed.

    Attributes:
        home: tier the experts live on between uses: ``"cpu"`` (pinned next to a GPU) or ``"disk"``.
        capacity: expert slots on the device, as a fraction of all experts (float in (0, 1]) or a count (int).
        prefetch: ``"markov"`` (learned transitions), ``"lru"`` (no prefetch, cache only), ``"gate"``
            (next layer's router on the current hidden state) or ``"hybrid"`` (Markov prior x gate likelihood,
            :mod:`runtime.prefetch_hybrid`).
        lookahead: fetches started ahead per MoE layer call at most (0: no prefetch).
        depth: MoE layers ahead the prefetcher predicts (``None``: all of them, i.e. the next token's path);
            every predicted expert is kept from eviction, the ``lookahead`` most urgent missing ones fetched.
        order: Markov context length in layers.
    """

    home: str = "disk"
    capacity: float | int = 0.25
    prefetch: str = "markov"
    lookahead: int = 2
    depth: int | None = None
    order: int = 1

    def __post_init__(self) -> None:
        if self.home not in ("cpu", "disk"):
            raise JalapenoError(f"`home` for experts must be 'cpu' or 'disk', got {self.home!r}.")
        if self.prefetch not in EXPERT_PREFETCHERS:
            raise JalapenoError(f"`prefetch` must be one of {', '.join(EXPERT_PREFETCHERS)}, got {self.prefetch!r}.")
        if isinstance(self.capacity, bool) or not (
                (isinstance(self.capacity, int) and self.capacity >= 1)
                or (isinstance(self.capacity, float) and 0 < self.capacity <= 1)):
            raise JalapenoError(f"`capacity` must be a fraction in (0, 1] or a slot count >= 1, got {self.capacity!r}.")
        if self.lookahead < 0:
            raise JalapenoError(f"`lookahead` must be >= 0, got {self.lookahead}.")
        if self.depth is not None and self.depth < 1:
            raise JalapenoError(f"`depth` must be >= 1 or None, got {self.depth}.")
        if self.order < 1:
            raise JalapenoError(f"`order` must be >= 1, got {self.order}.")


@dataclass
class ExpertStats:
    """Counters since attach (or ``reset``). A hit is a routed expert resident (or already arriving) when
    its layer ran; a miss had to be fetched synchronously."""

    hits: int = 0
    misses: int = 0
    prefetches: int = 0  # fetches started ahead of need
    prefetch_used: int = 0  # of those, experts that were routed to before being evicted
    fetches: int = 0  # all fetches (misses + prefetches)
    bytes_moved: int = 0
    wait_s: float = 0.0  # time the executor waited for experts (misses and unfinished prefetches)
    layers: int = 0  # MoE layer calls

    @property
    def hit_rate(self) -> float:
        n = self.hits + self.misses
        return self.hits / n if n else 0.0

    @property
    def prefetch_hit_rate(self) -> float:
        return self.prefetch_used / self.prefetches if self.prefetches else 0.0

    def as_dict(self) -> dict[str, float]:
        return {"hits": self.hits, "misses": self.misses, "hit_rate": self.hit_rate, "prefetches": self.prefetches,
                "prefetch_used": self.prefetch_used, "prefetch_hit_rate": self.prefetch_hit_rate,
                "fetches": self.fetches, "bytes_moved": self.bytes_moved, "wait_s": self.wait_s,
                "layers": self.layers}


def find_expert_modules(model: nn.Module) -> list[tuple[str, nn.Module, nn.Module | None]]:
    """``(name, experts module, router or None)`` of every fused-experts module, in registration order.

    An experts module owns 3-D ``gate_up_proj`` and ``down_proj`` parameters and a ``num_experts``; its
    router is the parent's ``gate`` with a 2-D ``weight`` (Mixtral, Qwen-MoE layouts)."""
    found = []
    parents = {id(child): parent for parent in model.modules() for child in parent.children()}
    for name, module in model.named_modules():
        gu, dn = module._parameters.get("gate_up_proj"), module._parameters.get("down_proj")
        if gu is None or dn is None or gu.dim() != 3 or dn.dim() != 3 or not hasattr(module, "num_experts"):
            continue
        if getattr(module, "is_transposed", False) or getattr(module, "has_bias", False):
            raise JalapenoError(f"experts module {name!r} uses transposed or biased expert weights; only the "
                                f"Mixtral layout (E, 2I, H) / (E, H, I) without bias is supported.")
        parent = parents.get(id(module))
        gate = getattr(parent, "gate", None) if parent is not None else None
        router = gate if gate is not None and getattr(gate, "weight", None) is not None and gate.weight.dim() == 2 \
            else None
        found.append((name, module, router))
    return found


class ExpertCache:
    """``capacity`` expert slots on ``device`` (two arenas from the store), LRU, with async fetches.

    State changes only on the caller's thread; a worker thread (or the CUDA copy stream) only copies
    bytes into a slot that the caller already reserved, so no lock is needed beyond the store's own.
    """

    def __init__(self, store: TensorStore, device: torch.device, *, capacity: int, gu_shape: Sequence[int],
                 dn_shape: Sequence[int], dtype: torch.dtype, keys: dict[int, tuple[str, str]],
                 stats: ExpertStats) -> None:
        self.store, self.device, self.capacity, self.keys, self.stats = store, device, capacity, keys, stats
        self.tier = tier_of(device)
        itemsize = dtype.itemsize
        self._gu_bytes = capacity * int(torch.Size(gu_shape).numel()) * itemsize
        self._dn_bytes = capacity * int(torch.Size(dn_shape).numel()) * itemsize
        self.label = f"experts:cache:{device}"
        gu = store.allocate(self.tier, self._gu_bytes, label=self.label, device=device)
        try:
            dn = store.allocate(self.tier, self._dn_bytes, label=self.label, device=device)
        except BaseException:
            store.free(gu, tier=self.tier, label=self.label)
            raise
        self._bufs = (gu, dn)
        self.gate_up = gu.view(dtype).view(capacity, *gu_shape)  # (C, 2I, H)
        self.down = dn.view(dtype).view(capacity, *dn_shape)  # (C, H, I)
        self.gate_up_param = nn.Parameter(self.gate_up, requires_grad=False)
        self.down_param = nn.Parameter(self.down, requires_grad=False)
        self.slot_of: OrderedDict[int, int] = OrderedDict()  # expert uid -> slot, LRU first
        self.owner: list[int | None] = [None] * capacity
        self.pending: dict[int, Any] = {}  # uid -> Future / CUDA event of a fetch in flight
        self.prefetched: set[int] = set()  # uids fetched ahead and not used yet
        self.pinned: set[int] = set()
        self.rank: dict[int, int] = {}  # the prefetcher's last ranking (0 = most urgent): steers eviction
        self.last_use: list[Any] = [None] * capacity  # CUDA: event after the last compute that read the slot
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jalapeno-experts") \
            if device.type == "cpu" else None
        self._stream = torch.cuda.Stream(device=device) if device.type == "cuda" else None

    # ------------------------------------------------------------ public
    def ensure(self, uids: Sequence[int]) -> list[int]:
        """Make ``uids`` resident and pinned; returns their slots. Misses fetch synchronously."""
        if len(uids) > self.capacity:
            raise JalapenoError(f"a layer needs {len(uids)} experts at once but the expert cache holds "
                                f"{self.capacity}; raise `capacity`.")
        self.pinned = set(uids)
        slots = []
        for uid in uids:
            if uid in self.slot_of:
                self.stats.hits += 1
                if uid in self.prefetched:
                    self.prefetched.discard(uid)
                    self.stats.prefetch_used += 1
            else:
                self.stats.misses += 1
                self._start(uid)
            self.slot_of.move_to_end(uid)
            slots.append(self.slot_of[uid])
        started = time.perf_counter()
        for uid in uids:
            self._wait(uid)
        self.stats.wait_s += time.perf_counter() - started
        return slots

    def release(self) -> None:
        """The pinned experts' layer ran: record the slots' last use (GPU) and let them be evicted."""
        if self._stream is not None:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.device))
            for uid in self.pinned:
                self.last_use[self.slot_of[uid]] = event
        self.pinned = set()

    def prefetch(self, uids: Sequence[int], limit: int, *, fetch: int | None = None) -> int:
        """Start fetching those of the first ``fetch`` (default all) of ``uids`` not yet cached, up to ``limit``
        (most urgent first); returns how many.

        The ranking also steers eviction, for this prefetch and for the next misses: an expert the
        prefetcher does not expect goes first (least recently used first), then expected ones from the
        least urgent up; a fetch never evicts one more urgent than itself. With a cache about one token's
        working set, evicting by recency alone throws out exactly the expert the next layer needs (LRU's
        cyclic-access pathology)."""
        started = 0
        self.rank = {uid: i for i, uid in enumerate(uids)}
        for i, uid in enumerate(uids[:fetch]):
            if started >= limit:
                break
            if uid in self.slot_of:
                continue
            if self._victim(below=i) is None:
                break
            self._start(uid, below=i)
            self.prefetched.add(uid)
            self.stats.prefetches += 1
            started += 1
        return started

    def resident(self) -> list[int]:
        return list(self.slot_of)

    def close(self) -> None:
        if self._io is not None:
            self._io.shutdown(wait=True)
            self._io = None
        if self._stream is not None:
            torch.cuda.synchronize(self.device)
        for buf in self._bufs:
            self.store.free(buf, tier=self.tier, label=self.label)
        self._bufs = ()

    # ------------------------------------------------------------ internals
    def _victim(self, below: int | None = None) -> int | None:
        """A free slot; else the least recently used unpinned expert the prefetcher does not expect; else the
        least urgent expected one, ranked after ``below`` (None: any rank). A slot still arriving may be
        taken: fetches into one slot run in order on the one worker thread / copy stream."""
        for slot, owner in enumerate(self.owner):
            if owner is None:
                return slot
        worst, worst_rank = None, -1
        for uid, slot in self.slot_of.items():
            if uid in self.pinned:
                continue
            r = self.rank.get(uid)
            if r is None:
                return slot
            if r > worst_rank and (below is None or r > below):
                worst, worst_rank = slot, r
        return worst

    def _start(self, uid: int, *, below: int | None = None) -> None:
        slot = self._victim(below)
        if slot is None:
            raise JalapenoError("expert cache: no slot can be evicted (all pinned or arriving); raise `capacity`.")
        old = self.owner[slot]
        if old is not None:
            del self.slot_of[old]
            self.prefetched.discard(old)
            self.pending.pop(old, None)
        self.owner[slot] = uid
        self.slot_of[uid] = slot
        gu_key, dn_key = self.keys[uid]
        gu_dst, dn_dst = self.gate_up[slot], self.down[slot]
        self.stats.fetches += 1
        self.stats.bytes_moved += (gu_dst.numel() + dn_dst.numel()) * gu_dst.element_size()

        def job() -> None:
            for key, dst in ((gu_key, gu_dst), (dn_key, dn_dst)):
                (got,) = self.store.fetch([key], self.device, out=dst.view(-1).view(torch.uint8))
                if got.data_ptr() != dst.data_ptr():  # a home on the device's own tier comes back as itself
                    dst.copy_(got, non_blocking=True)

        if self._stream is not None:
            with torch.cuda.stream(self._stream):
                if self.last_use[slot] is not None:
                    self._stream.wait_event(self.last_use[slot])
                job()
                done = torch.cuda.Event()
                done.record(self._stream)
            self.pending[uid] = done
        else:
            assert self._io is not None
            self.pending[uid] = self._io.submit(job)

    def _wait(self, uid: int) -> None:
        pending = self.pending.pop(uid, None)
        if pending is None:
            return
        if isinstance(pending, Future):
            pending.result()
        else:
            torch.cuda.current_stream(self.device).wait_event(pending)



def cache_slots(capacity: float | int, *, num_layers: int, num_experts: int) -> int:
    """Expert slots an expert cache of ``capacity`` (a share of all experts, or a count) holds: at least one
    layer's experts (a prefill may route to all of them), at most all of them."""
    total = num_layers * num_experts
    slots = capacity if isinstance(capacity, int) else int(round(capacity * total))
    return min(max(slots, num_experts), total)

class ExpertStreamer:
    """Attaches expert streaming to every fused-experts module of ``model``; detaches cleanly.

    Args:
        model: the model (its experts modules are found by :func:`find_expert_modules`).
        store: where experts are registered (home tier) and the cache arenas are charged (device tier).
        config: home tier, capacity, prefetch policy and depth.
        device: execution device of the experts (default: where their parameters are).
        prefetcher: a custom :class:`~runtime.prefetch.ExpertPrefetcher` (default: from ``config.prefetch``).
    """

    def __init__(self, model: nn.Module, store: TensorStore, config: ExpertConfig, *,
                 device: str | torch.device | None = None, prefetcher: ExpertPrefetcher | None = None) -> None:
        self.model, self.store, self.config = model, store, config
        self.modules = find_expert_modules(model)
        if not self.modules:
            raise JalapenoError(f"{type(model).__name__} has no fused experts modules (gate_up_proj/down_proj).")
        first = self.modules[0][1]
        self.device = torch.device(device) if device is not None else first.gate_up_proj.device
        if self.device.type == "meta":
            raise JalapenoError("experts on the meta device have no weights to stream; load the model first.")
        self.num_layers, self.num_experts = len(self.modules), int(first.num_experts)
        self.lookahead = config.lookahead
        self.stats = ExpertStats()
        self.cache: ExpertCache | None = None
        self._prefetcher = prefetcher
        self._handles: list[Any] = []
        self._originals: list[tuple[nn.Module, nn.Parameter, nn.Parameter]] = []
        self._placeholders: list[tuple[nn.Parameter, nn.Parameter]] = []
        self._lut = torch.empty(0)
        self.attached = False

    @property
    def prefetcher(self) -> ExpertPrefetcher:
        assert self._prefetcher is not None
        return self._prefetcher

    def capacity_slots(self) -> int:
        asked = self.config.capacity
        slots = cache_slots(asked, num_layers=self.num_layers, num_experts=self.num_experts)
        if slots > (asked if isinstance(asked, int) else int(round(asked * self.num_layers * self.num_experts))):
            logger.info("expert cache: raised to one layer's %d experts (a prefill may route to all of them)",
                        self.num_experts)
        return slots

    def attach(self) -> ExpertStreamer:
        if self.attached:
            raise JalapenoError("this ExpertStreamer is already attached; detach() it first.")
        try:
            self._attach()
        except BaseException:
            self.detach()
            raise
        self.attached = True
        return self

    def _attach(self) -> None:
        shapes = {(tuple(m.gate_up_proj.shape), tuple(m.down_proj.shape), m.gate_up_proj.dtype) for _, m, _ in
                  self.modules}
        if len(shapes) != 1:
            raise JalapenoError(f"experts modules differ in shape or dtype {sorted(map(str, shapes))}; one expert "
                                f"cache needs one shape.")
        (gu_shape, dn_shape, dtype), = shapes
        keys: dict[int, tuple[str, str]] = {}
        for layer, (name, module, _) in enumerate(self.modules):
            gu, dn = module.gate_up_proj.detach(), module.down_proj.detach()
            for e in range(self.num_experts):
                uid = layer * self.num_experts + e
                k = (f"{name}.{e}.gate_up_proj", f"{name}.{e}.down_proj")
                self.store.register({k[0]: gu[e].contiguous().cpu(), k[1]: dn[e].contiguous().cpu()},
                                    self.config.home, label=f"{name}.{e}")
                keys[uid] = k
            self._originals.append((module, module._parameters["gate_up_proj"], module._parameters["down_proj"]))
            placeholders = (nn.Parameter(torch.empty(gu.shape, dtype=dtype, device="meta"), requires_grad=False),
                            nn.Parameter(torch.empty(dn.shape, dtype=dtype, device="meta"), requires_grad=False))
            self._placeholders.append(placeholders)
            module._parameters["gate_up_proj"], module._parameters["down_proj"] = placeholders
            # drop our hold on the fused tensors' memory: the store has the slices now
            self._originals[-1][1].data = torch.empty(0, dtype=dtype, device=gu.device)
            self._originals[-1][2].data = torch.empty(0, dtype=dtype, device=dn.device)
        capacity = self.capacity_slots()
        self.cache = ExpertCache(self.store, self.device, capacity=capacity, gu_shape=gu_shape[1:],
                                 dn_shape=dn_shape[1:], dtype=dtype, keys=keys, stats=self.stats)
        if self._prefetcher is None:
            self._prefetcher = self._make_prefetcher()
        self._lut = torch.zeros(self.num_experts, dtype=torch.long, device=self.device)
        for layer, (_, module, _) in enumerate(self.modules):
            self._handles.append(module.register_forward_pre_hook(
                lambda m, args, layer=layer: self._pre_forward(m, layer, args)))
            self._handles.append(module.register_forward_hook(lambda m, args, out, layer=layer: self._post_forward(m, layer)))
        logger.info("expert streaming: %d layers x %d experts from %r, cache of %d slots on %s, prefetch %s",
                    self.num_layers, self.num_experts, self.config.home, capacity, self.device, self.config.prefetch)

    def _make_prefetcher(self) -> ExpertPrefetcher:
        c = self.config
        depth = c.depth or self.num_layers
        if c.prefetch == "markov":
            return MarkovPrefetcher(self.num_layers, self.num_experts, order=c.order, depth=depth)
        if c.prefetch == "lru":
            return LRUOnlyPrefetcher(self.num_layers, self.num_experts, depth=depth)
        routers = []
        for name, _, router in self.modules:
            if router is None:
                raise JalapenoError(f"`prefetch={c.prefetch!r}` needs each experts module's router; {name!r} has no "
                                    f"sibling `gate` with a 2-D weight.")
            routers.append(router.weight)
        top_k = int(getattr(self.modules[0][2], "top_k", 2))
        if c.prefetch == "hybrid":
            return HybridPrefetcher(routers, top_k=top_k, order=c.order, depth=depth)
        return GatePrefetcher(routers, top_k=top_k, depth=depth)

    def set_prefetcher(self, prefetcher: ExpertPrefetcher) -> None:
        self._prefetcher = prefetcher

    # ------------------------------------------------------------ hooks
    def route(self, layer: int, rows: Sequence[Sequence[int]], *, hidden: Any = None) -> tuple[list[int], list[int]]:
        """One MoE layer's routing arrived: make its experts resident (pinned until :meth:`done`), let the
        prefetcher learn and start its prefetches. Returns the experts used (local ids) and their slots.
        The hooks call this; tests and trace replays call it directly."""
        assert self.cache is not None
        used = sorted({int(e) for row in rows for e in row})
        base = layer * self.num_experts
        slots = self.cache.ensure([base + e for e in used])
        self.stats.layers += 1
        self.prefetcher.observe_routing(layer, rows, hidden=hidden)
        if self.lookahead:
            width = max((len(r) for r in rows), default=1)
            want = self.prefetcher.predict(max(self.lookahead, width * max(1, self.prefetcher.depth)) + self.lookahead)
            # Only the next layer's candidates are fetched now (fetching deeper guesses churned the cache:
            # 2.6x the bytes for +5% hits on tiny-moe); later layers' predictions are kept from eviction.
            nxt = self.prefetcher.next_layer(layer)
            first = [u for u in want if u // self.num_experts == nxt]
            self.cache.prefetch(first + [u for u in want if u // self.num_experts != nxt], self.lookahead,
                                fetch=min(len(first), self.lookahead))
        return used, slots

    def done(self) -> None:
        """The layer that :meth:`route` prepared has run: its experts may be evicted again."""
        assert self.cache is not None
        self.cache.release()

    def _pre_forward(self, module: nn.Module, layer: int, args: tuple) -> tuple:
        assert self.cache is not None
        hidden, top_k_index, top_k_weights = args[0], args[1], args[2]
        # the routing is needed on the host to decide what to fetch
        used, slots = self.route(layer, top_k_index.tolist(), hidden=hidden)
        lut = self._lut
        lut[torch.tensor(used, device=lut.device)] = torch.tensor(slots, device=lut.device)
        module._parameters["gate_up_proj"] = self.cache.gate_up_param
        module._parameters["down_proj"] = self.cache.down_param
        module.num_experts = self.cache.capacity
        return (hidden, lut[top_k_index], top_k_weights, *args[3:])

    def _post_forward(self, module: nn.Module, layer: int) -> None:
        assert self.cache is not None
        gu, dn = self._placeholders[layer]
        module._parameters["gate_up_proj"], module._parameters["down_proj"] = gu, dn
        module.num_experts = self.num_experts
        self.done()

    # ------------------------------------------------------------ teardown
    def detach(self) -> None:
        """Remove the hooks, give back the cache and restore the fused parameters on their devices."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self.cache is not None:
            self.cache.close()
            self.cache = None
        for layer, (module, gu_param, dn_param) in enumerate(self._originals):
            name = self.modules[layer][0]
            device = gu_param.device
            keys = [(f"{name}.{e}.gate_up_proj", f"{name}.{e}.down_proj") for e in range(self.num_experts)]
            if all(k in self.store for pair in keys for k in pair):
                gu_param.data = torch.stack([self.store.load(k[0]) for k in keys]).to(device)
                dn_param.data = torch.stack([self.store.load(k[1]) for k in keys]).to(device)
                for e, pair in enumerate(keys):
                    self.store.unregister(pair, label=f"{name}.{e}")
            module._parameters["gate_up_proj"], module._parameters["down_proj"] = gu_param, dn_param
            module.num_experts = self.num_experts
        self._originals.clear()
        self._placeholders.clear()
        self.attached = False

    def reset_stats(self) -> None:
        fresh = ExpertStats()
        self.stats.__dict__.update(fresh.__dict__)
