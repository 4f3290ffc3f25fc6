"""Session: the runtime's facade — run a model as a SessionSpec says, within its budgets, with stats.

``Session(model, spec)`` casts or quantizes blocks as asked, places every weight-owning module (resident on
its execution device, or streamed from a slower tier through :class:`~runtime.streaming.Streamer`), and
then ``forward``/``generate`` run the model as usual (Hugging Face ``generate()`` included: its KV cache
lives on each block's execution device). ``close()`` (or leaving the ``with`` block) removes every hook
and gives the model back with ordinary tensors on the devices they had. Casting and quantization are model
surgery, not hooks: they are not undone on close (keep a copy of the model if you need the original).

Optional parts: ``experts=`` streams mixture-of-experts weights through a bounded expert cache with a
prefetcher (:mod:`runtime.experts`); ``kv=`` gives ``generate`` a paged, budgeted, optionally int8 KV cache
charged to the session's store (:mod:`runtime.kvcache`); ``adapt=`` retunes lookahead, KV window/precision
and block residency between forward steps as the workload and memory pressure change (:mod:`runtime.adapt`).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from runtime._log import get_logger
from runtime.adapt import AdaptConfig, Adapter
from runtime.blocks import find_blocks, module_bytes, own_bytes, quantize_linears
from runtime.decode_graph import GraphDecoder, generate_reason
from runtime.errors import BudgetExceededError, JalapenoError
from runtime.experts import find_expert_modules
from runtime.kvcache import make_kv_cache
from runtime.spec import FLOAT_FORMATS, QUANT_FORMATS, BlockSpec, SessionSpec
from runtime.streaming import Streamer, StreamUnit, attach_device_hooks, move_to
from runtime.tensors import TIERS, TensorStore, aligned, tier_of

if TYPE_CHECKING:
    from runtime.adapt import AdaptConfig, Adapter
    from runtime.experts import ExpertConfig, ExpertStreamer
    from runtime.kvcache import KVCacheConfig

logger = get_logger(__name__)


@dataclass(frozen=True)
class SessionStats:
    """What a session measured.

    Attributes:
        tokens: new tokens produced by ``generate`` calls.
        seconds: wall time of those calls (synchronised).
        tokens_per_s: ``tokens / seconds`` (0 before any generate).
        peak_bytes: tier -> most bytes the store held at once (home copies + staging).
        budgets: tier -> budget in bytes (None: unbounded).
        cuda_max_allocated: ``torch.cuda.max_memory_allocated`` over the session's devices (None without CUDA).
        peak_rss: peak resident set of the process during generate calls, sampled (None if not sampled).
        energy_j: energy over the generate calls, and energy_source: "nvml", "rapl" or "estimate". None where
            the counter did not see the calls: NVML's windows adding up to less than
            :data:`~runtime.telemetry.COUNTER_WINDOW_S` (its counter ticks every ~0.1-1 s), or a counter that did
            not move; ``extra["energy"]`` then says why (repeat the work until the window is long enough).
        fetches, misses, bytes_fetched: streaming counters.
    """

    tokens: int
    seconds: float
    tokens_per_s: float
    peak_bytes: dict[str, int]
    budgets: dict[str, int | None]
    cuda_max_allocated: int | None
    peak_rss: int | None
    energy_j: float | None
    energy_source: str | None
    fetches: int
    misses: int
    bytes_fetched: int
    extra: dict[str, Any] = field(default_factory=dict)


class _NoMeter:
    joules = None
    source = None
    peak_rss_bytes = None

    def __enter__(self) -> _NoMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class Session:
    """Run ``model`` as ``spec`` says. See the module docstring.

    Args:
        model: an ``nn.Module`` (eval mode is set); its weights may be on the host or already placed.
        spec: per-block execution device, home tier and weight format; tier budgets; streaming knobs.
        store: a TensorStore to use (default: a new one with the spec's budgets).
        time_transfers: record CUDA events around every host-to-device copy (``stats().extra``).
        energy_watts: power figure for the energy *estimate* where no counter (NVML, RAPL) is readable
            (e.g. a hardware profile's TDP); without one such an estimate is reported as unknown.
        experts: stream the experts of fused mixture-of-experts modules through a bounded expert cache
            (:class:`~runtime.experts.ExpertConfig`); those modules then leave layer streaming.
        kv: the KV cache ``generate`` builds (:class:`~runtime.kvcache.KVCacheConfig`: precision, budget,
            window), its pages charged to this session's store; None: Hugging Face's own cache.
        adapt: watch the workload and retune between forward steps (:mod:`runtime.adapt`); ``True`` for the
            default thresholds. Adjustments are logged and listed in ``stats().extra["adjustments"]``.
        graphs: greedy ``generate`` through a captured decode step (:mod:`runtime.decode_graph`): None picks it
            by itself where the model runs on CUDA, False never, True wherever possible (else a warning).
            Where it cannot, ``generate`` runs eagerly and logs why (``stats().extra["decode"]``).
    """

    def __init__(self, model: nn.Module, spec: SessionSpec, *, store: TensorStore | None = None,
                 time_transfers: bool = False, energy_watts: float | None = None,
                 experts: ExpertConfig | None = None, kv: KVCacheConfig | None = None,
                 adapt: AdaptConfig | bool | None = None, graphs: bool | None = None) -> None:
        self.energy_watts = energy_watts
        self.graphs = graphs
        self._graph: Any = None
        self._decode: dict[str, Any] = {}
        self.model = model.eval()
        self.spec = spec
        self.block_path, self.blocks = find_blocks(model, spec.block_path)
        if len(spec.blocks) > len(self.blocks):
            raise JalapenoError(f"spec lists {len(spec.blocks)} blocks but {self.block_path!r} has {len(self.blocks)}.")
        self.block_specs = [spec.block(i) for i in range(len(self.blocks))]
        self.exec_tier = tier_of(self.block_specs[0].device) if self.block_specs else tier_of(spec.rest_spec.device)
        self.rest = spec.rest_spec
        self.experts: ExpertStreamer | None = None
        self.kv_config = kv
        self.kv_cache: Any = None
        self._kv_stats: dict[str, Any] | None = None
        self.adapter: Adapter | None = None
        self._expert_names: set[str] = set()
        if experts is not None:

            if spec.granularity == "block":
                raise JalapenoError("`experts` streaming needs `granularity='module'` (a whole-block unit would "
                                    "stream the experts too).")
            self._expert_names = {name for name, _, _ in find_expert_modules(model)}
        self.rest_device = torch.device(self.rest.device)
        self._apply_formats()
        self.store = store or TensorStore(budgets=spec.budgets, offload_dir=spec.offload_dir)
        self._owns_store = store is None
        self._handles: list[Any] = []
        self._moved: list[tuple[nn.Module, torch.device]] = []
        unknown = sorted(set(spec.modules) - {n for n, _ in model.named_modules()})
        if unknown:
            raise JalapenoError(f"`modules` names {unknown} that are not modules of {type(model).__name__}.")
        self.streamer = Streamer(self.store, self._units(), lookahead=spec.lookahead, time_transfers=time_transfers,
                                 disk_io=spec.disk_io, huge_pages=spec.huge_pages,
                                 keep_bound=spec.keep_bound)
        try:
            self.streamer.attach()
            if experts is not None:
                from runtime.experts import ExpertStreamer  # lazy: only mixture-of-experts sessions stream experts

                self.experts = ExpertStreamer(model, self.store, experts,
                                              device=torch.device(self.block_specs[0].device)).attach()
            for block, bs in zip(self.blocks, self.block_specs):
                if torch.device(bs.device) != self.rest_device:
                    self._handles += attach_device_hooks(block, torch.device(bs.device), self.rest_device)
            for module, device in self._moved:
                self._handles += attach_device_hooks(module, device, self.rest_device)
            if self._moved:
                # A module moved off the rest device also moves what Hugging Face derives from its
                # parameters' device (``model.device``: cache positions, position ids), so every other
                # weight-owning rest module and every block aligns its inputs to where it runs.
                moved = {id(m) for m, _ in self._moved}
                for unit in self.streamer.units:
                    if not unit.name.startswith(self.block_path + ".") and id(unit.module) not in moved:
                        self._handles += attach_device_hooks(unit.module, self.rest_device, self.rest_device)
                for block, bs in zip(self.blocks, self.block_specs):
                    if torch.device(bs.device) == self.rest_device:
                        self._handles += attach_device_hooks(block, self.rest_device, self.rest_device)
        except BaseException:
            self.close()
            raise
        self._tokens = 0
        self._seconds = 0.0
        self._energy: float | None = None
        self._energy_source: str | None = None
        self._energy_window = 0.0  # seconds of counter windows behind self._energy
        self._peak_rss: int | None = None
        self._devices = sorted({str(bs.device) for bs in self.block_specs} | {str(self.rest_device)})
        self.closed = False
        if adapt:

            self.adapter = Adapter(self, adapt if isinstance(adapt, AdaptConfig) else AdaptConfig())
            self._handles.append(self.model.register_forward_pre_hook(self._step_start, with_kwargs=True))
            self._handles.append(self.model.register_forward_hook(self._step_end, with_kwargs=True))

    # ---------------------------------------------------------------- setup
    def _apply_formats(self) -> None:
        floats = {bs.weight_format for bs in [*self.block_specs, self.rest] if bs.weight_format in FLOAT_FORMATS}
        if len(floats) > 1:
            raise JalapenoError(f"blocks ask for different float formats {sorted(floats)}; mixed float dtypes "
                                f"across blocks are not supported yet — use one float format.")
        if floats:
            self.model.to(FLOAT_FORMATS[floats.pop()])
        for i, (block, bs) in enumerate(zip(self.blocks, self.block_specs)):
            if bs.weight_format in QUANT_FORMATS:
                n = quantize_linears(block, bs.weight_format, bs.group_size)
                logger.info("block %d: %d linears quantized to %s", i, n, bs.weight_format)

    def _units(self) -> list[StreamUnit]:
        """Weight-owning modules in registration order, each with its block's device and home."""
        prefix = self.block_path + "."
        units: list[StreamUnit] = []
        for name, module in self.model.named_modules():
            if name == self.block_path:
                continue
            if name in self._expert_names:
                continue  # the ExpertStreamer owns these
            if not name.startswith(prefix):
                override = self.spec.modules.get(name)
                if override is not None and torch.device(override.device) != self.rest_device:
                    self._moved.append((module, torch.device(override.device)))
                device = torch.device(override.device) if override is not None else self.rest_device
                if self._owns_tensors(module):
                    units.append(StreamUnit(name, module, device, tier_of(device)))
                continue
            index = int(name[len(prefix):].split(".")[0])
            bs = self.block_specs[index]
            device = torch.device(bs.device)
            whole = name[len(prefix):].count(".") == 0
            if bs.streamed and self.spec.granularity == "block":
                if whole:
                    units.append(StreamUnit(name, module, device, bs.tier, recurse=True))
            elif self._owns_tensors(module):
                # Vectors (norm weights, lone biases) are O(hidden) and stay resident: streaming them costs
                # a fetch and a slot each for almost no bytes.
                small = all(t is None or t.dim() <= 1 for t in [*module._parameters.values(), *module._buffers.values()])
                home = tier_of(device) if small else bs.tier
                units.append(StreamUnit(name, module, device, home))
        return units

    @staticmethod
    def _owns_tensors(module: nn.Module) -> bool:
        return any(t is not None for t in [*module._parameters.values(), *module._buffers.values()])

    # ---------------------------------------------------------------- running
    def forward(self, **inputs: Any) -> Any:
        """``model(**inputs)`` with tensors moved to the rest device, under ``torch.no_grad``."""
        self._check_open()

        with torch.no_grad():
            return self.model(**move_to(inputs, self.rest_device))

    def generate(self, input_ids: torch.Tensor, *, max_new_tokens: int = 32, do_sample: bool = False,
                 **kwargs: Any) -> torch.Tensor:
        """Hugging Face ``generate`` (greedy by default) timed, with energy and peak RSS measured."""
        self._check_open()
        if max_new_tokens < 1:
            raise JalapenoError(f"`max_new_tokens` must be >= 1, got {max_new_tokens}.")
        if not hasattr(self.model, "generate"):
            raise JalapenoError(f"{type(self.model).__name__} has no generate(); use forward().")
        input_ids = input_ids.to(self.rest_device)
        kwargs.setdefault("attention_mask", torch.ones_like(input_ids))
        kwargs.setdefault("pad_token_id", 0)
        if self.kv_config is not None and kwargs.get("past_key_values") is None and kwargs.get("cache") is None:
            # transformers renamed ``past_key_values`` to ``cache`` (5.2x); pass the name this model takes
            import inspect

            name = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
            kwargs[name] = self.kv_cache = self._make_kv_cache()
        graph = self._graph_decoder(input_ids, do_sample, kwargs)
        meter, tracker = self._telemetry()
        self._sync()
        start = time.perf_counter()
        try:
            with meter, tracker:
                out = None
                if graph is not None:
                    out = self._graph_generate(graph, input_ids, max_new_tokens, kwargs)
                if out is None:
                    out = self.model.generate(input_ids, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                              **kwargs)
                self._sync()
        finally:
            self._finish_kv()  # its pages go back to the store: the request is over
        self._seconds += time.perf_counter() - start
        self._tokens += (out.shape[-1] - input_ids.shape[-1]) * out.shape[0]
        self._energy_source = meter.source
        if meter.joules is not None and meter.joules == meter.joules:  # NaN: an estimate with no power figure
            self._energy = (self._energy or 0.0) + meter.joules
            self._energy_window += meter.seconds
        peak = getattr(tracker, "peak_rss_bytes", None)
        if peak is not None:
            self._peak_rss = max(self._peak_rss or 0, int(peak))
        return out

    # ---------------------------------------------------------------- captured decode (runtime.decode_graph)
    def _graph_decoder(self, input_ids: torch.Tensor, do_sample: bool, kwargs: dict[str, Any]) -> Any:
        """The GraphDecoder for this call, or None (eager) with the reason logged once and kept in stats."""
        if self.graphs is False:
            self._decode = {"path": "eager", "reason": "graphs=False"}
            return None
        if self.graphs is None and not any(d.startswith("cuda") for d in self._devices):
            self._decode = {"path": "eager", "reason": "no CUDA device"}
            return None

        reason = self._decode.get("failed") or generate_reason(self, input_ids, do_sample=do_sample, kwargs=kwargs)
        if reason is None and self._graph is None:
            try:
                self._graph = GraphDecoder(self)
            except (JalapenoError, RuntimeError) as exc:
                self._decode["failed"] = reason = f"decoder not built: {type(exc).__name__}: {exc}"
        if reason is not None:
            self._graph_fallback(reason)
            return None
        return self._graph

    def _graph_fallback(self, reason: str) -> None:
        if self._decode.get("reason") != reason:
            log = logger.warning if self.graphs else logger.info
            log("generate runs eagerly, not through a captured decode step: %s", reason)
        self._decode = {**self._decode, "path": "eager", "reason": reason}

    def _graph_generate(self, graph: Any, input_ids: torch.Tensor, max_new_tokens: int,
                        kwargs: dict[str, Any]) -> torch.Tensor | None:

        eos = kwargs.get("eos_token_id")
        if eos is None:
            eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        try:
            out = graph.generate(input_ids, max_new_tokens=max_new_tokens, eos_token_id=eos,
                                 pad_token_id=kwargs.get("pad_token_id", 0))
        except BudgetExceededError as exc:
            self._graph_fallback(f"the static KV cache does not fit: {exc}")
            return None
        except RuntimeError as exc:  # capture refused an operation: never try again in this session
            graph.close()
            self._graph = None
            self._decode["failed"] = f"capture failed: {type(exc).__name__}: {exc}"
            self._graph_fallback(self._decode["failed"])
            return None
        self._decode = {"path": "graph", "ops": graph.ops.name, "captured": graph.graph is not None,
                        "streamed_bytes_per_step": graph.schedule.bytes_per_step if graph.schedule else 0}
        return out

    def _make_kv_cache(self) -> Any:

        config = self.kv_config
        if self.adapter is not None and self.adapter.next_kv_precision and config.precision == "float":
            config = dataclasses.replace(config, precision=self.adapter.next_kv_precision)
        dtype = next((p.dtype for p in self.model.parameters() if p.is_floating_point()), torch.float32)
        self._kv_meter = _KVMeter(self.store)
        return make_kv_cache(config, self.model.config, device=torch.device(self.block_specs[0].device),
                             dtype=dtype, store=self._kv_meter)

    def open_kv_cache(self) -> Any:
        """A KV cache as ``generate`` builds it (None without ``kv=``), for driving ``forward`` step by step
        (pass it as the model's ``past_key_values``/``cache``). Charged to this session's store; reported in
        ``stats().extra["kv"]`` while open, and closed by the next ``open_kv_cache``/``generate`` or ``close()``."""
        self._check_open()
        if self.kv_config is None:
            return None
        self._finish_kv()
        self.kv_cache = self._make_kv_cache()
        return self.kv_cache

    def close_kv_cache(self) -> None:
        """Close the cache ``open_kv_cache`` gave (its pages go back to the store; its stats stay in ``stats()``)."""
        self._finish_kv()

    def _kv_report(self) -> dict[str, Any]:
        meter = getattr(self, "_kv_meter", None)
        stats = dict(self.kv_cache.kv_stats())
        if meter is not None:  # the cache's own peak (the store's peak mixes it with the weights)
            stats["peak_bytes"] = meter.peak_total
            stats["peak_bytes_by_tier"] = dict(meter.peak)
        return stats

    def _finish_kv(self) -> None:
        if getattr(self, "kv_cache", None) is not None:
            self._kv_stats = self._kv_report()
            self.kv_cache.close()
            self.kv_cache = None

    # ---------------------------------------------------------------- adaptation (runtime.adapt calls these)
    def _step_start(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._step_t0 = time.perf_counter()

    def _step_end(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        assert self.adapter is not None
        ids = kwargs.get("input_ids", args[0] if args else None)
        past = kwargs.get("past_key_values", kwargs.get("cache"))
        if past is None:
            past = getattr(output, "past_key_values", None)
        seq = int(past.get_seq_length()) if past is not None and hasattr(past, "get_seq_length") else 0
        if seq == 0 and ids is not None:
            seq = int(ids.shape[-1])
        batch = int(ids.shape[0]) if ids is not None else 1
        self._sync()
        self.adapter.after_step(seq_len=seq, batch=batch, step_s=time.perf_counter() - self._step_t0)

    def last_resident_block(self) -> int | None:
        """The highest-numbered block whose weights are resident on the execution tier (None if none)."""
        for i in range(len(self.block_specs) - 1, -1, -1):
            if not self.block_specs[i].streamed and tier_of(self.block_specs[i].device) == self.exec_tier:
                return i
        return None

    def slower_tier(self) -> str:
        return "disk" if self.exec_tier == "cpu" else "cpu"

    def _demotable(self, index: int) -> list[Any]:
        prefix = f"{self.block_path}.{index}."
        return [u for u in self.streamer.units if u.name.startswith(prefix) and not u.streamed
                and any(t.dim() > 1 for t in [*u.module._parameters.values(), *u.module._buffers.values()]
                        if t is not None)]

    def plan_demotion(self, target_bytes: int) -> tuple[list[int], int] | None:
        """The fewest resident blocks (last first) whose demotion brings the execution tier's usage to at most
        ``target_bytes``, with the lookahead to use (the spec's, lowered if the staging would not fit);
        None if even demoting every resident block at lookahead 0 would not."""

        used = self.store.used(self.exec_tier)
        streamer = self.streamer
        largest = max((u.nbytes for u in streamer.units if u.streamed), default=0)
        current = streamer._staging_bytes()
        chosen: list[int] = []
        freed = 0
        for i in range(len(self.block_specs) - 1, -1, -1):
            if self.block_specs[i].streamed or tier_of(self.block_specs[i].device) != self.exec_tier:
                continue
            units = self._demotable(i)
            chosen.append(i)
            for u in units:
                size = sum(aligned(t.numel() * t.element_size()) for t in
                           [*u.module._parameters.values(), *u.module._buffers.values()] if t is not None and t.dim() > 1)
                freed += sum(t.numel() * t.element_size() for t in
                             [*u.module._parameters.values(), *u.module._buffers.values()] if t is not None and t.dim() > 1)
                largest = max(largest, size)
            for la in range(streamer.lookahead, -1, -1):
                if used - freed - current + (la + 1) * largest <= target_bytes:
                    return chosen, la
        return None

    def demote_blocks(self, indices: list[int], home: str, *, lookahead: int | None = None) -> int:
        """Stream blocks ``indices`` from ``home`` from now on (between forwards); returns the bytes freed."""
        uids = [u.uid for i in indices for u in self._demotable(i)]
        if lookahead is not None and lookahead < self.streamer.lookahead:
            self.streamer.lookahead = lookahead  # applied by the demotion's re-reservation
        if self._graph is not None:  # its static schedule knew the old slots
            self._graph.close()
            self._graph = None
        freed = self.streamer.demote(uids, home)
        for i in indices:
            self.block_specs[i] = dataclasses.replace(self.block_specs[i], home=home)
        return freed

    def _telemetry(self) -> tuple[Any, Any]:
        try:
            from runtime import telemetry  # lazy: telemetry may touch NVML, and only when measuring
        except ImportError:  # telemetry not installed alongside: time only
            return _NoMeter(), _NoMeter()
        device = next((d for d in self._devices if d.startswith("cuda")), "cpu")
        cuda = device if device.startswith("cuda") else None
        # No per-call window check: calls add up, and stats() reports energy only once the counter saw them.
        return (telemetry.EnergyMeter(device=device, watts=self.energy_watts, min_window_s=0.0),
                telemetry.PeakTracker(interval_s=0.02, device=cuda))

    def _sync(self) -> None:
        for d in self._devices:
            if d.startswith("cuda"):
                torch.cuda.synchronize(d)

    def stats(self) -> SessionStats:
        """Tokens/s, peak bytes per tier (store accounting, cross-checked by the allocator and RSS), energy."""
        cuda = [d for d in self._devices if d.startswith("cuda")]
        cuda_max = max((torch.cuda.max_memory_allocated(d) for d in cuda), default=None) if cuda else None
        s = self.streamer.stats
        extra: dict[str, Any] = {"streamed_bytes_per_pass": self.streamer.streamed_bytes_per_pass(),
                                 "lookahead": self.streamer.lookahead,
                                 "streamed_blocks": [i for i, b in enumerate(self.block_specs) if b.streamed]}
        if self.experts is not None:
            extra["experts"] = {**self.experts.stats.as_dict(), "capacity": self.experts.cache.capacity
                                if self.experts.cache is not None else None, "prefetch": self.experts.config.prefetch,
                                "lookahead": self.experts.lookahead}
        if self.kv_cache is not None:
            extra["kv"] = self._kv_report()
        elif self._kv_stats is not None:
            extra["kv"] = dict(self._kv_stats)
        if self._decode:
            extra["decode"] = {k: v for k, v in self._decode.items() if k != "failed"}
        if self.adapter is not None:
            extra["adjustments"] = [a.as_dict() for a in self.adapter.adjustments]
            extra["workload"] = dict(self.adapter.workload)
        energy, unseen = self._energy, self._energy_unseen()
        if unseen is not None:
            extra["energy"] = {"window_s": self._energy_window, "joules_read": energy, "reason": unseen}
            energy = None
        if self.streamer.time_transfers and cuda:
            extra["transfer_seconds"] = self.streamer.transfer_seconds(reset=False)
        return SessionStats(
            tokens=self._tokens, seconds=self._seconds,
            tokens_per_s=self._tokens / self._seconds if self._seconds else 0.0,
            peak_bytes={t: self.store.peak(t) for t in TIERS},
            budgets={t: self.store.budgets[t] for t in TIERS},
            cuda_max_allocated=cuda_max, peak_rss=self._peak_rss,
            energy_j=energy, energy_source=self._energy_source,
            fetches=s.fetches, misses=s.misses, bytes_fetched=s.bytes_fetched, extra=extra,
        )

    def _energy_unseen(self) -> str | None:
        """Why the counter did not see the generate calls (None: it did, or the figure is an estimate)."""
        from runtime.telemetry import COUNTER_WINDOW_S  # lazy: telemetry is imported only when measuring

        if self._energy is None or self._energy_source not in ("nvml", "rapl"):
            return None
        if self._energy_source == "nvml" and self._energy_window < COUNTER_WINDOW_S:
            return (f"NVML windows total {self._energy_window:.3f} s < {COUNTER_WINDOW_S:.0f} s: its counter ticks "
                    f"every ~0.1-1 s; repeat the work until the window is longer")
        if self._energy <= 0:
            return f"the {self._energy_source} counter did not move in {self._energy_window:.3f} s"
        return None

    # ---------------------------------------------------------------- teardown
    def _check_open(self) -> None:
        if getattr(self, "closed", False):
            raise JalapenoError("this Session is closed; create a new one.")

    def close(self) -> None:
        """Detach every hook and restore the model's tensors to ordinary tensors on their original devices."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if getattr(self, "_graph", None) is not None:
            self._graph.close()
            self._graph = None
        self._finish_kv()
        if getattr(self, "experts", None) is not None:
            self.experts.detach()
            self.experts = None
        if hasattr(self, "streamer"):
            self.streamer.detach()
        if getattr(self, "_owns_store", False):
            self.store.close()
        self.closed = True

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten session should not leave hooks on the user's model
        if not getattr(self, "closed", True):
            try:
                self.close()
            except Exception:  # noqa: BLE001 - interpreter shutdown; nothing sensible to do
                pass


class _KVMeter:
    """The store as the KV cache sees it: charges pass through, and the cache's own bytes and peak are kept
    (per tier and in total), so a run can report the KV cache's peak apart from the weights'."""

    def __init__(self, store: TensorStore) -> None:
        self.store = store
        self.used: dict[str, int] = dict.fromkeys(TIERS, 0)
        self.peak: dict[str, int] = dict.fromkeys(TIERS, 0)
        self.peak_total = 0

    def charge(self, tier: str, nbytes: int, *, label: str) -> None:
        self.store.charge(tier, nbytes, label=label)  # raises BudgetExceededError before anything is counted
        self.used[tier] += nbytes
        self.peak[tier] = max(self.peak[tier], self.used[tier])
        self.peak_total = max(self.peak_total, sum(self.used.values()))

    def uncharge(self, tier: str, nbytes: int, *, label: str) -> None:
        self.store.uncharge(tier, nbytes, label=label)
        self.used[tier] -= nbytes

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


__all__ = ["BlockSpec", "Session", "SessionSpec", "SessionStats", "find_blocks", "module_bytes", "own_bytes",
           "quantize_linears", "tier_of"]
