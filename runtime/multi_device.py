"""One model across several execution devices: blocks resident on each, streamed into each over its own link.

``MultiSession(model, MultiSpec(...))`` runs a model whose blocks are spread over *logical devices*
(``"gpu:0"``, ``"gpu:1"`` …), each mapped to a physical torch device (``cuda:0``, ``cuda:1``; or two
logical devices on one ``cuda:0`` or on the host, for tests and for measuring one link against two). Every
logical device has its own :class:`~runtime.device_store.DeviceStore` (its budget on its execution tier)
and its own :class:`~runtime.streaming.Streamer` (its staging slots, its CUDA copy stream, its prefetcher),
so a device fetches its streamed units from pinned host memory over its own host link while other devices
compute; host and disk budgets are the machine's, shared through one :class:`~runtime.device_store.Ledger`.
Activations cross devices at block boundaries only: a block's output goes straight to the next block's
device (the last block's to the device of the modules outside the blocks: embedding, final norm, head),
and each block's other inputs (position embeddings, masks) are moved to it. Hugging Face's KV cache keeps
each layer's keys and values on that layer's device.

Greedy tokens equal a one-device run of the same weights (the same ops on the same kind of device); a
float plan's equal the unmodified model's. Decode is eager (Hugging Face ``generate``): the captured CUDA
graph step (``runtime.decode_graph``) is single-device. ``close()`` gives the model back as it was placed.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from runtime._log import get_logger
from runtime.device_store import DeviceStore, Ledger
from runtime.errors import JalapenoError
from runtime.session import find_blocks, quantize_linears
from runtime.sizes import parse_bytes
from runtime.spec import FLOAT_FORMATS, QUANT_FORMATS, WEIGHT_FORMATS, SessionSpec
from runtime.streaming import DEFAULT_DISK_IO, DISK_IO, Streamer, StreamUnit, attach_device_hooks, move_to
from runtime.tensors import TIERS, tier_of

logger = get_logger(__name__)


@dataclass(frozen=True)
class DeviceBlock:
    """How one block runs: on logical ``device``, resident (``home=None``) or streamed from ``"cpu"``/``"disk"``."""

    device: str
    home: str | None = None
    weight_format: str | None = None
    group_size: int = 128

    def __post_init__(self) -> None:
        if self.home not in (None, "cpu", "disk"):
            raise JalapenoError(f"`home` must be None (resident), 'cpu' or 'disk', got {self.home!r}.")
        if self.weight_format is not None and self.weight_format not in WEIGHT_FORMATS:
            raise JalapenoError(f"`weight_format` must be one of {', '.join(WEIGHT_FORMATS)}, got "
                                f"{self.weight_format!r}.")


@dataclass(frozen=True)
class MultiSpec:
    """Logical devices, the block on each, per-device budgets and the machine's shared tier budgets.

    Attributes:
        devices: logical name -> physical torch device (``{"gpu:0": "cuda:0", "gpu:1": "cuda:1"}``).
        blocks: one DeviceBlock per block of the model, in order.
        rest_device: logical device of the modules outside the blocks (default: the first of ``devices``).
        budgets: logical device -> bytes (or ``"40GiB"``) it may hold on its execution tier; missing: unbounded.
        shared_budgets: ``{"cpu": …, "disk": …}`` for the whole machine (all devices' home copies and host staging).
        lookahead, granularity, block_path, offload_dir, disk_io: as in :class:`~runtime.spec.SessionSpec`, per device.
    """

    devices: Mapping[str, str]
    blocks: tuple[DeviceBlock, ...]
    rest_device: str | None = None
    budgets: Mapping[str, int | str | None] = field(default_factory=dict)
    shared_budgets: Mapping[str, int | str | None] = field(default_factory=dict)
    lookahead: int = 2
    granularity: str = "module"
    block_path: str | None = None
    offload_dir: str | None = None
    disk_io: str = DEFAULT_DISK_IO

    def __post_init__(self) -> None:
        devices = dict(self.devices)
        if not devices:
            raise JalapenoError("`devices` is empty; give at least one logical device, e.g. {'gpu:0': 'cuda:0'}.")
        for name, physical in devices.items():
            try:
                tier_of(physical)
            except (RuntimeError, JalapenoError):
                raise JalapenoError(f"`devices[{name!r}]` must be 'cpu' or 'cuda[:N]', got {physical!r}.") from None
        object.__setattr__(self, "devices", devices)
        object.__setattr__(self, "blocks", tuple(self.blocks))
        rest = self.rest_device or next(iter(devices))
        object.__setattr__(self, "rest_device", rest)
        named = [("rest_device", rest), *((f"blocks[{i}].device", b.device) for i, b in enumerate(self.blocks))]
        for where, name in named:
            if name not in devices:
                raise JalapenoError(f"`{where}` {name!r} is not one of `devices` {sorted(devices)}.")
        budgets = {}
        for name, value in dict(self.budgets).items():
            if name not in devices:
                raise JalapenoError(f"`budgets` names {name!r}, which is not one of `devices` {sorted(devices)}.")
            budgets[name] = None if value is None else parse_bytes(value, what=f"budgets[{name!r}]")
        object.__setattr__(self, "budgets", budgets)
        shared = {}
        for tier, value in dict(self.shared_budgets).items():
            if tier not in ("cpu", "disk"):
                raise JalapenoError(f"`shared_budgets` tier {tier!r} is not shared; use 'cpu' or 'disk' (a GPU's "
                                    "budget goes in `budgets` under its logical device).")
            shared[tier] = None if value is None else parse_bytes(value, what=f"shared_budgets[{tier!r}]")
        object.__setattr__(self, "shared_budgets", shared)
        if self.lookahead < 0:
            raise JalapenoError(f"`lookahead` must be >= 0, got {self.lookahead}.")
        if self.granularity not in ("module", "block"):
            raise JalapenoError(f"`granularity` must be 'module' or 'block', got {self.granularity!r}.")
        if self.disk_io not in DISK_IO:
            raise JalapenoError(f"`disk_io` must be one of {', '.join(map(repr, DISK_IO))}, got {self.disk_io!r}.")
        floats = {b.weight_format for b in self.blocks if b.weight_format in FLOAT_FORMATS}
        if len(floats) > 1:
            raise JalapenoError(f"blocks ask for different float formats {sorted(floats)}; use one float format.")

    def physical(self, name: str) -> torch.device:
        return torch.device(self.devices[name])

    @classmethod
    def split(cls, *, n_blocks: int, block_bytes: int, rest_bytes: int, devices: Mapping[str, str],
              budgets: Mapping[str, int | str], stream_unit_bytes: int | None = None, weight_format: str | None = None,
              lookahead: int = 2, layout: str = "contiguous", **options: Any) -> MultiSpec:
        """Even shares of the blocks per device; on each device as many resident blocks as its budget holds next
        to its ``lookahead + 1`` staging slots (:meth:`SessionSpec.fit`'s rule; the first device also holds the
        ``rest_bytes`` of the modules outside the blocks), the rest streamed from the host (GPU) or disk (host).

        ``layout="contiguous"``: device i runs the i-th contiguous share (pipeline order, as accelerate places);
        its link is busy only while it computes, so the links take turns. ``"interleaved"``: blocks go to the
        devices round-robin and each device's resident blocks are spread evenly among its streamed ones, so while
        one device computes, every other device's Streamer prefetches its next streamed units over its own link
        (``lookahead + 1`` of a block's units in flight: a lookahead of one block's units overlaps the links fully).
        """
        if layout not in ("contiguous", "interleaved"):
            raise JalapenoError(f"`layout` must be 'contiguous' or 'interleaved', got {layout!r}.")
        names = list(devices)
        if n_blocks < len(names):
            raise JalapenoError(f"`n_blocks` {n_blocks} is fewer than the {len(names)} devices; use fewer devices.")
        if layout == "contiguous":
            k = len(names)
            owned = [list(range(n_blocks * i // k, n_blocks * (i + 1) // k)) for i in range(k)]
        else:
            owned = [list(range(i, n_blocks, len(names))) for i in range(len(names))]
        slots: list[DeviceBlock | None] = [None] * n_blocks
        for i, (name, indices) in enumerate(zip(names, owned)):
            physical = devices[name]
            budget = budgets.get(name)
            fitted = SessionSpec.fit(n_blocks=len(indices), block_bytes=block_bytes,
                                     rest_bytes=rest_bytes if i == 0 else 0, device=physical,
                                     budgets={} if budget is None else {tier_of(physical): budget},
                                     stream_unit_bytes=stream_unit_bytes, weight_format=weight_format,
                                     lookahead=lookahead, slower_tier="disk" if tier_of(physical) == "cpu" else "cpu")
            lookahead = min(lookahead, fitted.lookahead)
            home = next((b.home for b in fitted.blocks if b.streamed), None)
            resident = sum(1 for b in fitted.blocks if not b.streamed)
            if layout == "interleaved" and 0 < resident < len(indices):
                step = len(indices) / resident  # spread: a streamed block always comes up soon on every device
                keep = {int(k * step + step / 2) for k in range(resident)}
            else:
                keep = set(range(resident))
            for k, index in enumerate(indices):
                slots[index] = DeviceBlock(name, None if k in keep else home, weight_format)
        return cls(devices=dict(devices), blocks=tuple(b for b in slots if b is not None), budgets=dict(budgets),
                   lookahead=lookahead, **options)


class MultiSession:
    """Run ``model`` across the logical devices of ``spec`` (module docstring).

    Args:
        model: an ``nn.Module`` (eval mode is set), weights on the host or already placed.
        spec: devices, per-block placement, budgets.
        time_transfers: record CUDA events around every host-to-device copy, per device (``link_stats``).
    """

    def __init__(self, model: nn.Module, spec: MultiSpec, *, time_transfers: bool = False) -> None:
        self.model = model.eval()
        self.spec = spec
        self.block_path, self.blocks = find_blocks(model, spec.block_path)
        if len(spec.blocks) != len(self.blocks):
            raise JalapenoError(f"spec lists {len(spec.blocks)} blocks but {self.block_path!r} has "
                                f"{len(self.blocks)}; give one DeviceBlock per block.")
        self.rest_device = spec.physical(spec.rest_device)
        self._apply_formats()
        self.ledger = Ledger(spec.shared_budgets)
        self.stores: dict[str, DeviceStore] = {}
        self.streamers: dict[str, Streamer] = {}
        self._handles: list[Any] = []
        self.closed = False
        self._tokens, self._seconds = 0, 0.0
        try:
            units = self._units()
            for name in spec.devices:  # every device gets its store, even one without units (a budget to report)
                physical = spec.physical(name)
                self.stores[name] = DeviceStore(name, budget=spec.budgets.get(name), exec_tier=tier_of(physical),
                                                ledger=self.ledger, offload_dir=spec.offload_dir)
            for name, own in units.items():
                if own:
                    self.streamers[name] = Streamer(self.stores[name], own, lookahead=spec.lookahead,
                                                    time_transfers=time_transfers, disk_io=spec.disk_io).attach()
            self._attach_boundaries()
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- setup
    def _apply_formats(self) -> None:
        floats = {b.weight_format for b in self.spec.blocks if b.weight_format in FLOAT_FORMATS}
        if floats:
            self.model.to(FLOAT_FORMATS[floats.pop()])
        for i, (block, bs) in enumerate(zip(self.blocks, self.spec.blocks)):
            if bs.weight_format in QUANT_FORMATS:
                n = quantize_linears(block, bs.weight_format, bs.group_size)
                logger.info("block %d: %d linears quantized to %s", i, n, bs.weight_format)

    def _units(self) -> dict[str, list[StreamUnit]]:
        """Weight-owning modules per logical device, in registration order (as ``Session._units`` makes them)."""
        prefix = self.block_path + "."
        out: dict[str, list[StreamUnit]] = {name: [] for name in self.spec.devices}
        for name, module in self.model.named_modules():
            if name == self.block_path or not _owns_tensors(module) and not name.startswith(prefix):
                continue
            if not name.startswith(prefix):
                out[self.spec.rest_device].append(StreamUnit(name, module, self.rest_device, tier_of(self.rest_device)))
                continue
            bs = self.spec.blocks[int(name[len(prefix):].split(".")[0])]
            device = self.spec.physical(bs.device)
            home = bs.home or tier_of(device)
            whole = name[len(prefix):].count(".") == 0
            if home != tier_of(device) and self.spec.granularity == "block":
                if whole:
                    out[bs.device].append(StreamUnit(name, module, device, home, recurse=True))
            elif _owns_tensors(module):
                # Vectors (norms, lone biases) stay resident, as in Session: a fetch each for almost no bytes.
                tensors = [*module._parameters.values(), *module._buffers.values()]
                small = all(t is None or t.dim() <= 1 for t in tensors)
                out[bs.device].append(StreamUnit(name, module, device, tier_of(device) if small else home))
        return out

    def _attach_boundaries(self) -> None:
        """Each block takes its inputs on its device and hands its output to the next block's device."""
        physical = [self.spec.physical(b.device) for b in self.spec.blocks]
        for i, (block, device) in enumerate(zip(self.blocks, physical)):
            after = physical[i + 1] if i + 1 < len(physical) else self.rest_device
            if device != self.rest_device or after != device:
                self._handles += attach_device_hooks(block, device, after)

    # ---------------------------------------------------------------- running
    def forward(self, **inputs: Any) -> Any:
        """``model(**inputs)`` with tensors moved to the rest device, under ``torch.no_grad``."""
        self._check_open()
        with torch.no_grad():
            return self.model(**move_to(inputs, self.rest_device))

    def generate(self, input_ids: torch.Tensor, *, max_new_tokens: int = 32, **kwargs: Any) -> torch.Tensor:
        """Greedy Hugging Face ``generate``, timed (synchronised on every CUDA device)."""
        self._check_open()
        if max_new_tokens < 1:
            raise JalapenoError(f"`max_new_tokens` must be >= 1, got {max_new_tokens}.")
        input_ids = input_ids.to(self.rest_device)
        kwargs.setdefault("attention_mask", torch.ones_like(input_ids))
        kwargs.setdefault("pad_token_id", 0)
        self._sync()
        start = time.perf_counter()
        with torch.no_grad():
            out = self.model.generate(input_ids, max_new_tokens=max_new_tokens, do_sample=False, **kwargs)
        self._sync()
        self._seconds += time.perf_counter() - start
        self._tokens += (out.shape[-1] - input_ids.shape[-1]) * out.shape[0]
        return out

    def _sync(self) -> None:
        for d in {str(self.spec.physical(n)) for n in self.spec.devices}:
            if d.startswith("cuda"):
                torch.cuda.synchronize(d)

    # ---------------------------------------------------------------- measurement
    def stats(self) -> dict[str, Any]:
        """Tokens/s, and per logical device: peak bytes on its tier, budget, fetches, misses, bytes fetched;
        the shared tiers' peaks across devices."""
        devices = {}
        for name, store in self.stores.items():
            tier = store.exec_tier
            s = self.streamers[name].stats if name in self.streamers else None
            devices[name] = {
                "physical": str(self.spec.physical(name)), "tier": tier, "peak_bytes": store.peak(tier),
                "budget": store.budgets[tier], "fetches": s.fetches if s else 0, "misses": s.misses if s else 0,
                "bytes_fetched": s.bytes_fetched if s else 0,
                "streamed_bytes_per_pass": self.streamers[name].streamed_bytes_per_pass() if s else 0,
                "blocks": [i for i, b in enumerate(self.spec.blocks) if b.device == name],
                "streamed_blocks": [i for i, b in enumerate(self.spec.blocks) if b.device == name and b.home],
            }
        return {"tokens": self._tokens, "seconds": self._seconds,
                "tokens_per_s": self._tokens / self._seconds if self._seconds else 0.0, "devices": devices,
                "shared_peak_bytes": {t: self.ledger.peak(t) for t in TIERS if t != "gpu"},
                "shared_budgets": {t: self.ledger.budgets[t] for t in ("cpu", "disk")}}

    def link_stats(self) -> dict[str, dict[str, float]]:
        """Per logical device on CUDA: seconds its copy stream spent copying (needs ``time_transfers``) and the
        copy bandwidth over them (bytes fetched / seconds), since the last call (which resets both)."""
        out = {}
        for name, streamer in self.streamers.items():
            if not streamer.time_transfers or self.spec.physical(name).type != "cuda":
                continue
            seconds = streamer.transfer_seconds(reset=True)
            moved = streamer.stats.bytes_fetched
            streamer.stats.bytes_fetched = 0
            out[name] = {"seconds": seconds, "bytes": moved, "bytes_per_s": moved / seconds if seconds else 0.0}
        return out

    # ---------------------------------------------------------------- teardown
    def _check_open(self) -> None:
        if self.closed:
            raise JalapenoError("this MultiSession is closed; create a new one.")

    def close(self) -> None:
        """Remove every hook and give the model back with ordinary tensors on the devices they had."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for streamer in reversed(list(self.streamers.values())):
            streamer.detach()
        self.streamers.clear()
        for store in self.stores.values():
            store.close()
        self.closed = True

    def __enter__(self) -> MultiSession:  # noqa: PYI034 - as Session does
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _owns_tensors(module: nn.Module) -> bool:
    return any(t is not None for t in [*module._parameters.values(), *module._buffers.values()])


__all__ = ["DeviceBlock", "MultiSession", "MultiSpec"]
