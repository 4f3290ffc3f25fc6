"""Layer analysis: per-unit FLOPs, weight and activation bytes, intensity, parallelism and roofline.

``analyze(model, inputs)`` runs the model's forward once (real or meta tensors; meta needs no weights and
costs only shape propagation) and reports two granularities:

* **leaves** — linear, conv, embedding, norm, attention core, MoE router and experts, and ``other`` for any
  module that holds weights or runs FLOPs itself without being one of those (so nothing drops out);
* **blocks** — the repeated trunk units (transformer layers, residual blocks), plus every leaf outside a
  block (embedding, final norm, head, stem) as its own unit, so blocks and rest cover the whole model.

Definitions (per unit, summed over all calls in the pass):

* ``flops`` — torch's FLOP formulas (``torch.utils.flop_counter``): 2·M·K·N per matmul, sdpa as QK^T plus
  PV without a causal discount, conv as 2·B·Cout·Hout·Wout·Cin·kh·kw/groups; elementwise ops count 0.
* ``bytes_by_dtype`` / ``params`` — parameters and buffers the unit *owns*; a tied weight (Llama's
  ``lm_head`` = ``embed_tokens``) is owned by the first module holding it, so sums over units equal the
  model's. ``weight_read_bytes`` is what one pass reads: the unit's weights including tied ones, except
  an embedding reads only the gathered rows and an MoE expert bank only the experts routed to (exact on
  real tensors; on meta the uniform-routing expectation).
* ``activation_in_bytes`` / ``activation_out_bytes`` — tensors crossing the unit's boundary: the forward
  call's tensor arguments and its outputs (each distinct tensor once per call). For the attention core
  (which has no boundary of its own) they are the operands and results of its own attention ops (sdpa's
  Q, K, V, mask and output; bmm's operands in eager attention). ``kv_cache_bytes`` is the part of sdpa's K
  and V that this step did not make: positions read from the cache (in decode, the whole context).
* ``memory_bytes`` = weight_read + activation in + out, plus, for units other than the attention core
  (where the cache is already among the operands), ``kv_cache_bytes``: a Cache object crosses a block's
  boundary unseen. ``intensity`` = flops / memory_bytes. A block's bytes are its fused ideal: activations
  passed between its own leaves are not counted.
* ``parallelism`` — ``log2(1 + N) / log2(1 + 2**21)`` clipped to [0, 1], with N the output elements of
  the unit's largest op (by FLOPs): the count of independent dot products it can run at once.
  Why output elements: a GEMM/conv/attention kernel parallelises over output tiles; the reduction
  dimension is serial per output (split-K aside). Why 2**21: a device fills when every core holds an
  output tile at once; the widest current GPUs (~132 SMs × one 128×128 tile each ≈ 2**21 outputs) need
  about that many, so 1.0 means "fills any device we model", and a bs-1 decode GEMV (N = out_features)
  scores ~0.6. Log scale because utilisation grows with work per core, not linearly. ``parallel_elements``
  keeps N itself.
* ``roofline_s`` on ``profile.default_unit()``: max(Σ_dtype flops/peak_flops(dtype), memory_bytes/bandwidth);
  ``bound`` says which term wins. Both are None without a profile.

Nothing disappears: ``totals`` holds the model's FLOPs, bytes and traffic plus the FLOPs and bytes that no
leaf (``unattributed_leaf_*``) or no block-level unit (``unattributed_block_*``) received.
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from autosurgeon._logging import get_logger
from autosurgeon.analysis.trace import Boundary, OpStats, Trace, tensor_bytes
from autosurgeon.analysis.units import UnitLayout, discover
from autosurgeon.errors import InvalidArgumentError

if TYPE_CHECKING:  # annotations only
    from autosurgeon.hardware.profile import HardwareProfile

logger = get_logger(__name__)

SCHEMA_VERSION = 1
PHASES = ("prefill", "decode")
PARALLELISM_REFERENCE_LOG2 = 21  # outputs that fill the widest modelled device; see module docstring


class _Unit(Protocol):
    """What analysis needs of a profile's compute unit (``hardware.ComputeUnit`` fits)."""

    name: str
    memory_bandwidth: float

    def peak_flops(self, dtype: Any) -> float: ...


@dataclass(frozen=True)
class UnitInfo:
    """One analysed unit (a leaf or a block-level unit); see the module docstring for each definition."""

    name: str
    kind: str
    module_class: str
    params: int
    bytes_by_dtype: dict[str, int]
    weight_bytes: int
    weight_read_bytes: int
    flops: int
    flops_by_dtype: dict[str, int]
    activation_in_bytes: int
    activation_out_bytes: int
    activation_bytes: int
    kv_cache_bytes: int
    memory_bytes: int
    intensity: float
    parallel_elements: int
    parallelism: float
    calls: int
    compute_s: float | None = None
    memory_s: float | None = None
    roofline_s: float | None = None
    bound: str | None = None


@dataclass(frozen=True)
class ModelAnalysis:
    """Result of ``analyze``: leaves, block-level units and model totals, as versioned plain data."""

    model_class: str
    phase: str
    device: str
    input_shapes: dict[str, list[int]]
    profile: str | None
    compute_unit: str | None
    leaves: list[UnitInfo]
    blocks: list[UnitInfo]
    totals: dict[str, Any]
    analysis_s: float
    schema_version: int = SCHEMA_VERSION
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelAnalysis:
        """Loads what ``to_dict`` wrote; refuses a schema_version it does not know."""
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise InvalidArgumentError(
                f"analysis `schema_version` must be {SCHEMA_VERSION}, got {version!r}; re-run `autosurgeon analyze`."
            )
        fields = dict(data)
        fields["leaves"] = [UnitInfo(**u) for u in data["leaves"]]
        fields["blocks"] = [UnitInfo(**u) for u in data["blocks"]]
        return cls(**fields)


def analyze(
    model: nn.Module,
    inputs: dict[str, Any],
    *,
    profile: Any | None = None,
    phase: str = "prefill",
) -> ModelAnalysis:
    """Analyses ``model`` on one forward pass of ``model(**inputs)``.

    Args:
        model: Any ``nn.Module``, with real or meta-device weights (meta is enough: no values are needed).
        inputs: Keyword arguments for the forward, e.g. ``LoadedModel.example_inputs(...)``.
        profile: A ``HardwareProfile`` (or anything with ``default_unit()`` giving ``peak_flops(dtype)`` and
            ``memory_bandwidth``) for roofline times; None leaves the roofline fields empty.
        phase: "prefill" or "decode"; decode inputs must carry ``past_key_values`` (the context's KV cache),
            so attention FLOPs and KV reads scale with the context.

    Returns:
        A ``ModelAnalysis``.

    Raises:
        InvalidArgumentError: a bad ``phase``, ``inputs`` or ``profile``.
    """
    _validate(model, inputs, phase, profile)
    unit = profile.default_unit() if profile is not None else None
    start = time.perf_counter()
    layout = discover(model)
    trace = Trace()
    try:
        output = trace.run(model, dict(inputs))
    except NotImplementedError as exc:
        if not _on_meta(model, inputs):
            raise
        raise InvalidArgumentError(
            f"`model` {type(model).__name__} runs an op the meta device cannot ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0][:160]}); data-dependent ops such as MoE routing with nonzero need values. "
            "Analyse it with real weights, or pick a data-independent implementation (transformers MoE: "
            "experts_implementation='batched_mm')."
        ) from exc
    builder = _Builder(layout, trace, unit)
    leaves = builder.leaves()
    blocks = builder.block_units()
    totals = builder.totals(leaves, blocks, inputs, output)
    elapsed = time.perf_counter() - start
    first = next(iter(model.parameters()), None)
    logger.info("analysed %s (%d leaves, %d block units) in %.3f s", type(model).__name__, len(leaves), len(blocks), elapsed)
    return ModelAnalysis(
        model_class=type(model).__name__,
        phase=phase,
        device=str(first.device) if first is not None else "cpu",
        input_shapes={k: list(v.shape) for k, v in inputs.items() if isinstance(v, torch.Tensor)},
        profile=getattr(profile, "name", None) if profile is not None else None,
        compute_unit=getattr(unit, "name", None),
        leaves=leaves,
        blocks=blocks,
        totals=totals,
        analysis_s=elapsed,
        notes=builder.notes,
    )


def _on_meta(model: nn.Module, inputs: dict[str, Any]) -> bool:
    first = next(iter(model.parameters()), None)
    if first is not None:
        return first.device.type == "meta"
    return any(isinstance(v, torch.Tensor) and v.device.type == "meta" for v in inputs.values())


def _validate(model: Any, inputs: Any, phase: str, profile: HardwareProfile) -> None:
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    if not isinstance(inputs, dict) or not inputs:
        raise InvalidArgumentError(
            f"`inputs` must be a non-empty dict of keyword arguments for model(**inputs), got {type(inputs).__name__}"
            f"{' (empty)' if isinstance(inputs, dict) else ''}; use LoadedModel.example_inputs()."
        )
    if phase not in PHASES:
        raise InvalidArgumentError(f"`phase` must be one of {', '.join(PHASES)}, got {phase!r}.")
    if phase == "decode" and inputs.get("past_key_values", inputs.get("cache")) is None:
        raise InvalidArgumentError(
            "`phase` 'decode' needs `past_key_values` (or `cache`: a KV cache holding the context) in `inputs`; "
            "use LoadedModel.example_inputs(phase='decode')."
        )
    if profile is not None and not callable(getattr(profile, "default_unit", None)):
        raise InvalidArgumentError(
            f"`profile` must be a HardwareProfile (see autosurgeon.hardware.resolve.resolve_profile), got {type(profile).__name__}."
        )


class _Builder:
    """Turns a layout and a trace into UnitInfo rows (one pass of roll-ups over module names)."""

    def __init__(self, layout: UnitLayout, trace: Trace, unit: _Unit | None) -> None:
        self.layout = layout
        self.trace = trace
        self.unit = unit
        self.notes: list[str] = []
        self.subtree_ops = _roll_up(trace.ops)
        self._read_cache: dict[str, int] = {}
        self.leaf_names = self._leaf_names()

    # -- discovery of the leaf set (needs the trace for "other") ---------------------------------------
    def _leaf_names(self) -> list[str]:
        layout = self.layout
        names = []
        for name in layout.names:
            if name in layout.absorbed:
                continue
            if name in layout.kinds:
                names.append(name)
                continue
            own_flops = self.trace.ops[name].flops if name in self.trace.ops else 0
            if layout.owned(name) or own_flops > 0:
                names.append(name)
        return names

    def kind(self, name: str) -> str:
        return self.layout.kinds.get(name, "other")

    # -- per-unit quantities ----------------------------------------------------------------------------
    def _members(self, name: str, *, absorbing: bool) -> list[str]:
        return self.layout.subtree(name) if absorbing else [name]

    def _direct_read(self, name: str) -> int:
        """Weight bytes module ``name`` reads per pass from the tensors it holds directly (tied included)."""
        if name in self._read_cache:
            return self._read_cache[name]
        tensors = self.layout.direct.get(name, ())
        full = sum(t.numel() * t.element_size() for t in tensors)
        kind = self.layout.kinds.get(name)
        ops = self.trace.ops.get(name)
        read = full
        if kind == "embedding":
            gathered = self.trace.boundaries[name].out_bytes if name in self.trace.boundaries else 0
            read = min(full, gathered)
        elif ops is not None and (fraction := ops.expert_fraction()) is not None:
            expert_bytes = sum(t.numel() * t.element_size() for t in tensors if t.dim() == 3)
            read = full - expert_bytes + int(round(expert_bytes * fraction))
        self._read_cache[name] = read
        return read

    def make(self, name: str, kind: str, *, absorbing: bool) -> UnitInfo:
        layout, trace = self.layout, self.trace
        members = self._members(name, absorbing=absorbing)
        bytes_by_dtype: dict[str, int] = defaultdict(int)
        params = 0
        for member in members:
            for t in layout.owned(member):
                bytes_by_dtype[str(t.dtype).removeprefix("torch.")] += t.numel() * t.element_size()
                if id(t) in layout.param_ids:
                    params += t.numel()
        weight_read = sum(self._direct_read(m) for m in members)
        ops = self.subtree_ops.get(name, OpStats()) if absorbing else trace.ops.get(name, OpStats())
        boundary = trace.boundaries.get(name, Boundary())
        kv = ops.kv_cache_bytes
        if kind == "attention":
            act_in, act_out = ops.act_op_in_bytes, ops.act_op_out_bytes
            memory = weight_read + act_in + act_out  # the cache read is already among the operands
        else:
            act_in, act_out = boundary.in_bytes, boundary.out_bytes
            # A Cache object crosses a block's boundary unseen: add the K/V its attention read from it.
            memory = weight_read + act_in + act_out + kv
        # Units without counted ops (norms) are elementwise: every output element is independent.
        parallel = ops.top_op_out_elements if ops.top_op_flops else boundary.out_elements
        info = dict(
            name=name,
            kind=kind,
            module_class=layout.classes[name],
            params=params,
            bytes_by_dtype=dict(bytes_by_dtype),
            weight_bytes=sum(bytes_by_dtype.values()),
            weight_read_bytes=weight_read,
            flops=ops.flops,
            flops_by_dtype=dict(ops.flops_by_dtype),
            activation_in_bytes=act_in,
            activation_out_bytes=act_out,
            activation_bytes=act_in + act_out,
            kv_cache_bytes=kv,
            memory_bytes=memory,
            intensity=ops.flops / memory if memory else 0.0,
            parallel_elements=parallel,
            parallelism=parallelism_score(parallel),
            calls=boundary.calls,
        )
        info.update(roofline(ops.flops_by_dtype, memory, self.unit))
        return UnitInfo(**info)

    def leaves(self) -> list[UnitInfo]:
        out = []
        for name in self.leaf_names:
            kind = self.kind(name)
            absorbing = kind not in ("attention", "other")
            out.append(self.make(name, kind, absorbing=absorbing))
        return out

    def block_units(self) -> list[UnitInfo]:
        """Blocks in model order, with every leaf outside the blocks placed where it sits in the tree."""
        layout = self.layout
        in_block: set[str] = set()
        for block in layout.blocks:
            in_block.update(layout.subtree(block))
        rows = [(layout.position(b), b, "block") for b in layout.blocks]
        rows += [(layout.position(n), n, self.kind(n)) for n in self.leaf_names if n not in in_block]
        rows.sort()
        return [
            self.make(name, kind, absorbing=kind not in ("attention", "other")) for _, name, kind in rows
        ]

    def totals(self, leaves: list[UnitInfo], blocks: list[UnitInfo], inputs: dict, output: Any) -> dict[str, Any]:
        all_ops = self.subtree_ops.get("", OpStats())
        model_bytes: dict[str, int] = defaultdict(int)
        params = 0
        for name in self.layout.names:
            for t in self.layout.owned(name):
                model_bytes[str(t.dtype).removeprefix("torch.")] += t.numel() * t.element_size()
                if id(t) in self.layout.param_ids:
                    params += t.numel()
        weight_bytes = sum(model_bytes.values())
        weight_read = sum(self._direct_read(n) for n in self.layout.names)
        act_in = tensor_bytes(inputs)
        act_out = tensor_bytes(output)
        kv = all_ops.kv_cache_bytes
        memory = weight_read + act_in + act_out + kv
        totals: dict[str, Any] = dict(
            flops=all_ops.flops,
            flops_by_dtype=dict(all_ops.flops_by_dtype),
            params=params,
            bytes_by_dtype=dict(model_bytes),
            weight_bytes=weight_bytes,
            weight_read_bytes=weight_read,
            activation_in_bytes=act_in,
            activation_out_bytes=act_out,
            kv_cache_bytes=kv,
            memory_bytes=memory,
            intensity=all_ops.flops / memory if memory else 0.0,
            num_leaves=len(leaves),
            num_blocks=sum(1 for b in blocks if b.kind == "block"),
            num_block_units=len(blocks),
            unattributed_leaf_flops=all_ops.flops - sum(u.flops for u in leaves),
            unattributed_leaf_weight_bytes=weight_bytes - sum(u.weight_bytes for u in leaves),
            unattributed_block_flops=all_ops.flops - sum(u.flops for u in blocks),
            unattributed_block_weight_bytes=weight_bytes - sum(u.weight_bytes for u in blocks),
        )
        totals.update(roofline(all_ops.flops_by_dtype, memory, self.unit))
        # The sum of the block-level units' roofline times: an eager, unit-by-unit execution estimate.
        if self.unit is not None:
            totals["roofline_sum_s"] = sum(u.roofline_s or 0.0 for u in blocks)
        return totals


def _roll_up(ops: dict[str, OpStats]) -> dict[str, OpStats]:
    """Subtree sums of per-module op stats: each module's own stats added to it and all its ancestors."""
    out: dict[str, OpStats] = defaultdict(OpStats)
    for name, stats in ops.items():
        prefixes = [""]
        if name:
            parts = name.split(".")
            prefixes += [".".join(parts[: i + 1]) for i in range(len(parts))]
        for prefix in prefixes:
            agg = out[prefix]
            agg.flops += stats.flops
            for dtype, f in stats.flops_by_dtype.items():
                agg.flops_by_dtype[dtype] += f
            agg.act_op_in_bytes += stats.act_op_in_bytes
            agg.act_op_out_bytes += stats.act_op_out_bytes
            agg.kv_bytes += stats.kv_bytes
            agg.kv_cache_bytes += stats.kv_cache_bytes
            if stats.top_op_flops > agg.top_op_flops:
                agg.top_op_flops, agg.top_op_out_elements = stats.top_op_flops, stats.top_op_out_elements
    return out


def parallelism_score(out_elements: int) -> float:
    """Normalised parallelism in [0, 1] from the largest op's output elements (module docstring)."""
    import math

    if out_elements <= 0:
        return 0.0
    return min(1.0, math.log2(1 + out_elements) / math.log2(1 + 2**PARALLELISM_REFERENCE_LOG2))


def roofline(flops_by_dtype: dict[str, int], memory_bytes: int, unit: _Unit | None) -> dict[str, Any]:
    """Roofline time on ``unit``: compute time summed over dtypes vs memory time; None without a unit."""
    if unit is None:
        return dict(compute_s=None, memory_s=None, roofline_s=None, bound=None)
    compute_s = 0.0
    for dtype, flops in flops_by_dtype.items():
        if flops:
            compute_s += flops / unit.peak_flops(dtype)
    memory_s = memory_bytes / unit.memory_bandwidth if unit.memory_bandwidth > 0 else 0.0
    return dict(
        compute_s=compute_s,
        memory_s=memory_s,
        roofline_s=max(compute_s, memory_s),
        bound="compute" if compute_s >= memory_s else "memory",
    )
