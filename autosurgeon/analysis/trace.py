"""One instrumented forward pass: FLOPs, operand bytes and boundary bytes per module.

FLOPs use torch's own formulas (``torch.utils.flop_counter.flop_registry``, the table behind
``FlopCounterMode``), applied in a ``TorchDispatchMode`` that charges each op to the innermost module
running it (a forward pre-hook/hook pair per module keeps the stack). Three additions make the count
complete and device independent:

* ``F.scaled_dot_product_attention`` is counted once at the function level with torch's sdpa formula
  (``sdpa_flop_count``, GQA aware). Below that level the op is device specific: CPU runs
  ``_scaled_dot_product_flash_attention_for_cpu``, which the registry lacks (``FlopCounterMode`` reports 0
  for it), and meta decomposes into a math path. Counting the function makes real and meta agree; on meta
  the output is made directly (``new_empty``) rather than through the math path.
* ``aten._grouped_mm`` (MoE experts in transformers 5) is not in the registry: 2 * rows * K * N, with the
  rows routed to each group; on meta its kernel refuses float32, so there the output is made directly.
* Like ``FlopCounterMode``, an op without a formula is decomposed when it has a decomposition, so a
  composite op's matmuls are still found.

Real tensors run the real kernels (values stay right); meta tensors cost only shape propagation.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry, sdpa_flop_count

from runtime.experts import expected_experts_read

aten = torch.ops.aten

# Metadata queries that must not be decomposed or counted (the same set FlopCounterMode passes through).
_PASSTHROUGH = {
    aten.is_contiguous.default,
    aten.is_contiguous.memory_format,
    aten.is_strides_like_format.default,
    aten.is_non_overlapping_and_dense.default,
    aten.size.default,
    aten.sym_size.default,
    aten.stride.default,
    aten.sym_stride.default,
    aten.storage_offset.default,
    aten.sym_storage_offset.default,
    aten.numel.default,
    aten.sym_numel.default,
    aten.dim.default,
    torch.ops.prim.layout.default,
    torch.ops.prim.device.default,
}
# Batched matmuls inside an attention module multiply activations by activations (Q·K^T, P·V), so their
# operand bytes are the attention core's traffic; plain mm/addmm there multiply by weights.
_ACT_ACT_OPS = {aten.bmm, aten.baddbmm}
# Gathers from a 3-D parameter select experts: they tell which expert weights a pass reads.
_GATHER_OPS = {aten.index, aten.index_select, aten.select}


@dataclass
class OpStats:
    """What the ops run directly by one module (not its children) added up to."""

    flops: int = 0
    flops_by_dtype: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    act_op_in_bytes: int = 0  # operands of attention-core ops (sdpa, bmm)
    act_op_out_bytes: int = 0
    kv_bytes: int = 0  # K and V operands of sdpa (new and past positions)
    kv_cache_bytes: int = 0  # their past part: K/V read from a cache (or an encoder), not made this step
    top_op_flops: int = 0  # the largest single op, for the parallelism score
    top_op_out_elements: int = 0
    # Expert (3-D weight) reads, for the experts' weight traffic. Real tensors: the expert indices read,
    # per weight storage. Meta: the expected share read by each call under uniform routing, from the
    # runtime's formula (``runtime.experts.expected_experts_read``: top-k distinct experts per token).
    expert_hits: dict[int, tuple[int, set[int]]] = field(default_factory=dict)
    expert_expected: list[float] = field(default_factory=list)

    def expert_fraction(self) -> float | None:
        """Share of the expert weights read, or None when no expert read was seen."""
        if self.expert_hits:
            shares = [len(hit) / groups for groups, hit in self.expert_hits.values() if groups]
            return min(1.0, sum(shares) / len(shares)) if shares else None
        if self.expert_expected:
            return min(1.0, sum(self.expert_expected) / len(self.expert_expected))
        return None

    def add_expert_read(self, weight: torch.Tensor, groups: int, indices: torch.Tensor | None, rows: int,
                        top_k: int = 1) -> None:
        """One read of a 3-D expert weight by ``rows`` routed rows (tokens x ``top_k``)."""
        if weight.device.type != "meta" and indices is not None:
            key = weight.untyped_storage().data_ptr()
            _, hit = self.expert_hits.setdefault(key, (groups, set()))
            hit.update(int(i) for i in torch.unique(indices.reshape(-1)).tolist() if 0 <= i < groups)
        elif groups > 0:

            k = max(1, min(int(top_k), groups))
            self.expert_expected.append(expected_experts_read(groups, k, max(rows, 1) / k) / groups)

    def add_op(self, flops: int, dtype: torch.dtype, out_elements: int) -> None:
        self.flops += flops
        self.flops_by_dtype[_dtype_name(dtype)] += flops
        if flops > self.top_op_flops:
            self.top_op_flops, self.top_op_out_elements = flops, out_elements


@dataclass
class Boundary:
    """Bytes crossing one module's boundary, summed over its calls."""

    calls: int = 0
    in_bytes: int = 0
    out_bytes: int = 0
    out_elements: int = 0  # largest output (elements) of one call: parallelism of elementwise units


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def tensor_bytes(tree: Any) -> int:
    """Bytes of the distinct tensors in a pytree (the same tensor passed twice counts once)."""
    seen: set[int] = set()
    total = 0
    for leaf in tree_flatten(tree)[0]:
        if isinstance(leaf, torch.Tensor) and id(leaf) not in seen:
            seen.add(id(leaf))
            total += leaf.numel() * leaf.element_size()
    return total


def _largest_numel(tree: Any) -> int:
    return max((t.numel() for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)), default=0)


def _first_tensor(args: Any) -> torch.Tensor | None:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a
    return None


class Trace:
    """Per-module statistics of one forward pass; use ``run``."""

    def __init__(self) -> None:
        self.ops: dict[str, OpStats] = defaultdict(OpStats)
        self.boundaries: dict[str, Boundary] = defaultdict(Boundary)
        self.stack: list[str] = [""]
        self.suspended = 0  # > 0 while a function-level count runs the function itself
        # top-k of a module called with a routing index (an integer (tokens, k) tensor: transformers'
        # experts(hidden, top_k_index, top_k_weights)); its expert reads are per token, k distinct each.
        self.routing_top_k: dict[str, int] = {}

    @property
    def top_k(self) -> int:
        """Experts per token of the running module's routing (1 when it was called without one)."""
        return self.routing_top_k.get(self.stack[-1], 1)

    @property
    def current(self) -> OpStats:
        return self.ops[self.stack[-1]]

    def run(self, model: nn.Module, inputs: dict[str, Any]) -> Any:
        """Runs ``model(**inputs)`` once under no_grad with hooks and modes; returns its output."""
        handles = []
        seen: set[int] = set()
        for name, module in model.named_modules():
            if id(module) in seen:
                continue
            seen.add(id(module))
            handles.append(module.register_forward_pre_hook(self._pre_hook(name), with_kwargs=True))
            handles.append(module.register_forward_hook(self._post_hook(name), with_kwargs=True, always_call=True))
        try:
            with torch.no_grad(), _FunctionCounter(self), _DispatchCounter(self):
                return model(**inputs)
        finally:
            for h in handles:
                h.remove()
            self.stack[:] = [""]

    def _pre_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            boundary = self.boundaries[name]
            boundary.calls += 1
            boundary.in_bytes += tensor_bytes((args, kwargs))
            routing = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor) and t.dim() == 2
                       and not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool]
            if routing:
                self.routing_top_k[name] = int(routing[0].shape[-1])
            self.stack.append(name)

        return hook

    def _post_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            boundary = self.boundaries[name]
            boundary.out_bytes += tensor_bytes(output)
            boundary.out_elements = max(boundary.out_elements, _largest_numel(output))
            if len(self.stack) > 1 and self.stack[-1] == name:
                self.stack.pop()

        return hook


class _FunctionCounter(TorchFunctionMode):
    """Counts scaled_dot_product_attention as one op (see module docstring)."""

    def __init__(self, trace: Trace) -> None:
        super().__init__()
        self.trace = trace

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention or self.trace.suspended:
            return func(*args, **kwargs)
        q, k, v = _sdpa_qkv(args, kwargs)
        if q.device.type == "meta":
            out = q.new_empty((*q.shape[:-1], v.shape[-1]))
        else:
            self.trace.suspended += 1
            try:
                out = func(*args, **kwargs)
            finally:
                self.trace.suspended -= 1
        flops = _sdpa_flops(q, k, v)
        stats = self.trace.current
        stats.add_op(flops, q.dtype, out.numel())
        kv = tensor_bytes((k, v))
        mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
        stats.act_op_in_bytes += tensor_bytes((q, mask)) + kv
        stats.act_op_out_bytes += tensor_bytes(out)
        stats.kv_bytes += kv
        t, s = q.shape[-2], k.shape[-2]
        if s > t:  # positions beyond the queries' own were stored before this step
            stats.kv_cache_bytes += kv * (s - t) // s
        return out


def _sdpa_qkv(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    names = ("query", "key", "value")
    values = list(args[:3]) + [kwargs[n] for n in names[len(args[:3]):]]
    return values[0], values[1], values[2]


def _sdpa_flops(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> int:
    """torch's sdpa formula (QK^T and PV, causal masking not discounted), for any number of batch dims.

    Grouped-query attention (fewer key/value heads than query heads) is counted per query head with our
    own copy of the formula: torch 2.11's ``sdpa_flop_count`` rejects those shapes.
    """
    if q.dim() == 4 and k.dim() == 4 and q.shape[1] == k.shape[1]:
        return int(sdpa_flop_count(tuple(q.shape), tuple(k.shape), tuple(v.shape)))
    batch = math.prod(q.shape[:-2])
    t, d = q.shape[-2], q.shape[-1]
    s, dv = k.shape[-2], v.shape[-1]
    return 2 * batch * t * s * d + 2 * batch * t * s * dv


class _DispatchCounter(TorchDispatchMode):
    """Charges torch's registry FLOPs of every aten op to the innermost running module."""

    def __init__(self, trace: Trace) -> None:
        super().__init__()
        self.trace = trace

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        trace = self.trace
        if trace.suspended or func in _PASSTHROUGH:
            return func(*args, **kwargs)
        packet = func._overloadpacket
        if packet is aten._grouped_mm:
            return self._grouped_mm(func, args, kwargs)
        if packet in _GATHER_OPS:
            out = func(*args, **kwargs)
            self._gather(packet, args)
            return out
        formula = flop_registry.get(packet)
        if formula is None:
            decomposed = func.decompose(*args, **kwargs)
            if decomposed is not NotImplemented:
                return decomposed
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        flops = int(formula(*args, **kwargs, out_val=out))
        first = _first_tensor(args)
        out_elements = out.numel() if isinstance(out, torch.Tensor) else 0
        stats = trace.current
        stats.add_op(flops, first.dtype if first is not None else torch.float32, out_elements)
        if packet in _ACT_ACT_OPS:
            stats.act_op_in_bytes += tensor_bytes(args)
            stats.act_op_out_bytes += tensor_bytes(out)
        return out

    def _grouped_mm(self, func, args, kwargs):
        a, b = args[0], args[1]
        offs = kwargs.get("offs", args[2] if len(args) > 2 else None)
        if a.dim() == 2 and b.dim() == 3:  # MoE forward: (rows, K) x (G, K, N) -> (rows, N)
            out_shape, flops = (a.shape[0], b.shape[-1]), 2 * a.shape[0] * a.shape[1] * b.shape[-1]
        elif a.dim() == 3 and b.dim() == 3:  # batched: (G, M, K) x (G, K, N)
            out_shape, flops = (a.shape[0], a.shape[1], b.shape[-1]), 2 * math.prod(a.shape) * b.shape[-1]
        elif a.dim() == 3:  # (G, M, K) x (K, N_total), N split into groups -> (M, N_total)
            out_shape, flops = (a.shape[1], b.shape[-1]), 2 * a.shape[1] * a.shape[2] * b.shape[-1]
        else:  # (M, K_total) x (K_total, N), K split into groups -> (G, M, N)
            groups = offs.shape[0] if offs is not None else 1
            out_shape, flops = (groups, a.shape[0], b.shape[-1]), 2 * math.prod(a.shape) * b.shape[-1]
        if a.device.type == "meta":
            out = a.new_empty(out_shape, dtype=kwargs.get("out_dtype") or a.dtype)
        else:
            out = func(*args, **kwargs)
        stats = self.trace.current
        stats.add_op(int(flops), a.dtype, out.numel())
        if a.dim() == 2 and b.dim() == 3:
            stats.add_expert_read(b, b.shape[0], _group_ids(offs), a.shape[0], self.trace.top_k)
        return out

    def _gather(self, packet, args) -> None:
        """Records ``weight[expert_ids]`` on a 3-D parameter (transformers' batched_mm and eager experts)."""
        source = args[0]
        if not isinstance(source, nn.Parameter) or source.dim() != 3:
            return
        if packet is aten.index:
            indices = args[1][0] if args[1] else None
        elif args[1] != 0:
            return
        elif packet is aten.select:  # weight[i] with a Python int: one expert
            indices = torch.tensor([int(args[2])]) if source.device.type != "meta" else None
        else:  # index_select(source, 0, index)
            indices = args[2]
        if isinstance(indices, torch.Tensor) and indices.dtype != torch.bool:
            self.trace.current.add_expert_read(source, source.shape[0], indices, max(indices.numel(), 1),
                                               self.trace.top_k)


def _group_ids(offs: torch.Tensor | None) -> torch.Tensor | None:
    """Indices of the groups with at least one row, from grouped-mm offsets (None on meta)."""
    if offs is None or offs.device.type == "meta":
        return None
    sizes = torch.diff(offs.to(torch.int64), prepend=offs.new_zeros(1, dtype=torch.int64))
    return torch.nonzero(sizes > 0).reshape(-1)
