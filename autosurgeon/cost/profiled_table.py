"""The profiled cost model's vocabulary: the unit variants it times, timing settings and the table it keeps.

Split out of ``cost/profiled.py`` (one idea per file); ``cost.profiled`` re-exports every name.
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from autosurgeon.cost.base import LeafChoice
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.files.envelope import unwrap, wrap
from autosurgeon.transforms.modules import is_conv1d, linear_from_conv1d
from runtime.kernels import QuantizedLinear, default_kernel, get_kernel, unpacked_kernel

TABLE_TYPE = "autosurgeon.ProfiledTable"
TABLE_VERSION = 2  # 2: every entry carries its spread (IQR/median); noisy entries labelled
FLOAT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MAX_COPIES = 64  # cap on the layer copies a cold-cache unit timing rotates through

# ---------------------------------------------------------------------------------------------- units
class _FloatUnit(nn.Module):
    """A leaf held in a float ``dtype``: input cast in, output cast back (how a bf16 layer runs in fp32)."""

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner, self.dtype = module.to(dtype), dtype

    @property
    def weight(self) -> torch.Tensor:  # models read it (ViT casts its pixels to the projection's dtype)
        return self.inner.weight

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        # Extra arguments pass through (OPT's learned position embedding takes ``position_ids``).
        return self.inner(x.to(self.dtype) if x.is_floating_point() else x, *args, **kwargs).to(
            x.dtype if x.is_floating_point() else torch.float32)


def variant(module: nn.Module, precision: str, group_size: int, kernel: str) -> nn.Module:
    """A copy of ``module`` computing at ``precision`` with ``kernel`` ("auto": the runtime's default)."""


    module = copy.deepcopy(module)
    if is_conv1d(module) and precision != "float32":  # as the quantize transform deploys it
        module = linear_from_conv1d(module)
    if precision in FLOAT_DTYPES:
        return module if precision == "float32" else _FloatUnit(module, FLOAT_DTYPES[precision])
    if not isinstance(module, nn.Linear):
        raise InvalidArgumentError(f"precision {precision!r} needs an nn.Linear, got {type(module).__name__}.")
    fmt = "int8" if precision == "int8-dynamic" else precision
    name = "int8-dynamic" if precision == "int8-dynamic" else (None if kernel == "auto" else kernel)
    return QuantizedLinear.from_linear(module, fmt, group_size=group_size, kernel=name)


def signature(choice: LeafChoice, exec_device: str, phase: str, shape: tuple[int, ...], dtype: str) -> str:
    """Table key of one leaf choice (leaves of one shape share it; see the module docstring)."""
    leaf = choice.leaf
    q = choice.precision not in FLOAT_DTYPES
    return (f"{phase}|{exec_device}|{leaf.module_class}|{leaf.weight_numel}x{leaf.out_features}|b{int(leaf.bias)}|"
            f"in{'x'.join(map(str, shape))}:{dtype}|{choice.precision}|"
            f"g{choice.group_size if choice.precision == 'int4' else 0}"
            f"|{choice.kernel if q else 'auto'}")


@dataclass(frozen=True)
class TimingSettings:
    """How each time is taken: the median of ``repeats`` after ``warmup``, on ``clock``.

    ``clock="wall"`` is ``runtime.telemetry.measure_latency`` (perf_counter, CUDA-synchronised): what a
    user waits. ``clock="cpu"`` times the process's CPU time instead (``time.process_time``): on a SHARED
    CPU-only machine, other tenants' load stretches wall time by whenever the scheduler runs us, while CPU
    time stays the work done; it is valid only for CPU execution (a GPU's work is not the process's CPU
    time) and counts every thread of the process (streaming workers included).

    ``mode``: "context" times each unit inside real forward passes of the model (hooks around the unit,
    every unit that can take the choice set to it: the cache and dispatch context of a real pass);
    "isolated" times the unit alone in a loop on its captured input.
    ``cold_l2`` (isolated mode): 0 times a unit in a loop (its weights stay in L2); N > 0 rotates through copies of the
    unit totalling N L2 caches (at most ``MAX_COPIES``), so every call reads its weights from L3/DRAM.
    Measured on tiny-llama on the CI machine, neither matches the unit inside a pass exactly (hot
    underestimates, 4 x L2 overestimated ~2x); the fixed overhead absorbs the float model's difference.
    ``rounds`` (context mode, ``Profiler.measure_all`` on a fresh table): the baseline step and every choice's
    context run timed in that many interleaved rounds, ``step_repeats`` split among them
    (``cost/profiled_context.py``); 1 measures each entry in one block, one after another.
    """

    warmup: int = 3
    repeats: int = 15
    step_warmup: int = 3
    step_repeats: int = 15
    clock: str = "wall"
    cold_l2: int = 0
    mode: str = "context"
    rounds: int = 3

    def __post_init__(self) -> None:
        if self.clock not in ("wall", "cpu"):
            raise InvalidArgumentError(f"`clock` must be 'wall' or 'cpu', got {self.clock!r}.")
        for name in ("repeats", "step_repeats", "rounds"):
            if getattr(self, name) < 1:
                raise InvalidArgumentError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        for name in ("warmup", "step_warmup"):
            if getattr(self, name) < 0:
                raise InvalidArgumentError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        if self.mode not in ("context", "isolated"):
            raise InvalidArgumentError(f"`mode` must be 'context' or 'isolated', got {self.mode!r}.")
        if self.cold_l2 < 0:
            raise InvalidArgumentError(f"`cold_l2` must be >= 0, got {self.cold_l2}.")


@dataclass
class ProfiledTable:
    """Measured per-unit times, fixed overheads and streaming costs of one model on one device.

    Attributes:
        key: cache key (see the module docstring).
        unit_s: signature -> median seconds.
        overhead_s: phase -> fixed seconds per step.
        baseline_s: phase -> the unmodified model's step on the runtime.
        stream: placement -> {"fetch_s", "s_per_byte", "points"} (exposed streaming cost per step).
        n_ops: phase -> aten ops per step of the unmodified model.
        settings: workload, timing settings, fingerprints, torch version, threads.
        seconds: wall time spent measuring.
        kv_op_s: seconds per dispatch of the paged KV cache's gather (``cost_kv.gather_ops``), measured as
            (paged float cache step - Hugging Face cache step) / the ops the paged cache adds; empty until a
            plan with KV decisions is composed (``Profiler.kv_op_seconds``).
        spread: key -> IQR/median of its repeats, for every measured entry (unit keys, ``baseline|PHASE``).
        noisy: keys whose spread stayed above ``cost.dispersion.NOISY`` after one re-measure (kept, labelled).
        checks: spot checks made when the table was loaded (cached vs now, load average, verdict).
    """

    key: str
    unit_s: dict[str, float] = field(default_factory=dict)
    overhead_s: dict[str, float] = field(default_factory=dict)
    baseline_s: dict[str, float] = field(default_factory=dict)
    stream: dict[str, dict[str, Any]] = field(default_factory=dict)
    n_ops: dict[str, int] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    kv_op_s: dict[str, float] = field(default_factory=dict)
    spread: dict[str, float] = field(default_factory=dict)
    noisy: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)

    def noisy_share(self) -> float:
        """Share of the measured entries labelled noisy."""
        return len(self.noisy) / max(1, len(self.spread))

    @property
    def launch_overhead_s(self) -> dict[str, float]:
        """Fixed overhead per op, per phase: the measured stand-in for the analytic launch term."""
        return {p: self.overhead_s[p] / self.n_ops[p] for p in self.overhead_s if self.n_ops.get(p)}

    def to_json(self) -> str:
        return json.dumps(wrap(TABLE_TYPE, TABLE_VERSION, asdict(self)), indent=1)

    @classmethod
    def from_json(cls, text: str) -> ProfiledTable:
        return cls(**unwrap(text, type_name=TABLE_TYPE, version=TABLE_VERSION, what="profiled table",
                            fix="it will be measured again"))


def _packs(precision: str, kernel: str, device: str) -> bool:
    """Whether the kernel a quantized leaf runs keeps a packed copy of its weight (rebuilt after a fetch)."""
    if precision in FLOAT_DTYPES:
        return False

    if precision == "int8-dynamic":
        name = "int8-dynamic"
    elif kernel != "auto":
        name = kernel
    else:  # the Streamer gives a streamed "auto" leaf the first kernel that keeps no packed copy, if any
        dev = torch.device(device)
        return default_kernel(precision, dev).prepare is not None and unpacked_kernel(precision, dev) is None
    return get_kernel(name).prepare is not None


def _exec_device(unit: Any) -> str:
    return "cpu" if unit.kind == "cpu" else unit.name
