"""Weight bytes under a precision, and a plan's resident bytes per memory tier — the one byte formula.

``weight_bytes`` matches the runtime's stored layouts exactly (``runtime/kernels/formats.py`` and
``QuantizedLinear``'s buffers), so a memory budget checked here is the budget the runtime charges:

* float32 / bfloat16 / float16: ``numel * itemsize`` (weight and bias cast alike);
* int8 and int8-dynamic: int8 codes (N, K) + float32 per-channel ``scales`` (N,);
* int4: uint8 (N, Kp/2) + float32 ``scales`` and ``offsets`` (N, Kp/g) each, Kp = K rounded up to the group;
* fp8: float8_e4m3fn (N, K) + float32 ``scales`` (N,);
* a quantized layer keeps its bias in float32 (``QuantizedLinear.from_linear``).

``plan_memory`` places those bytes the way ``runtime.Session`` does (``runtime/session.py``,
``runtime/streaming.py``): a resident block's tensors on its execution tier; a streamed block's tensors
on its home tier (each tensor 256-byte aligned in a memory tier's arena, exact on disk), except
vectors-only modules (norms: every tensor <= 1-D) which stay resident on the execution tier; and, per
execution device that runs streamed units, ``lookahead + 1`` staging slots the size of its largest streamed unit (each tensor 256-byte aligned, as ``TensorStore.group_nbytes`` does).
Units are modules (``granularity="module"``, the runtime default) unless a block's layout is ``packed``,
which streams the whole block, vectors included, as one unit. Kernels that keep a packed copy of a *resident* weight
(fbgemm for int8-dynamic; tinygemm for CUDA int4 with kernel auto; torch's CPU int4 kernel) add it on the execution tier, as the
streamer charges it (``QuantizedLinear.prepared_nbytes``). Fusion
decisions change the tensors as ``transforms/fuse.py`` does (a folded BatchNorm vanishes and its conv gains
a bias; concatenated q/k/v or gate/up linears are one unit). Modules outside the blocks are resident on
the profile's default unit. A DLA shares the board's DRAM; its bytes are counted on the "gpu" tier (the
integrated GPU's memory, the same DRAM).
"""
from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from autosurgeon.errors import InvalidArgumentError

if TYPE_CHECKING:  # pragma: no cover
    from autosurgeon.plan import Plan
    from autosurgeon.space import SearchSpace

FLOAT_ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}
_ALIGN = 256  # runtime.tensors.ALIGN
_TINYGEMM_K_TILE = 128  # runtime.kernels.cuda: tinygemm needs Kp % 128 == 0 and N % 8 == 0
TIERS = ("gpu", "cpu", "disk")


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def tensor_bytes(numel: int, out_features: int, precision: str, group_size: int = 128, *,
                 bias: bool = False) -> list[int]:
    """Bytes of each stored tensor of one (out_features, numel/out_features) weight under ``precision``.

    Order: weight (codes), scales, offsets (int4), bias. See the module docstring for the layouts.
    """
    if numel <= 0 or out_features <= 0 or numel % out_features:
        raise InvalidArgumentError(
            f"`numel` ({numel}) must be a positive multiple of `out_features` ({out_features}).")
    n, k = out_features, numel // out_features
    if precision in FLOAT_ITEMSIZE:
        size = FLOAT_ITEMSIZE[precision]
        return [numel * size] + ([n * size] if bias else [])
    if precision in ("int8", "int8-dynamic", "fp8"):
        parts = [n * k, 4 * n]
    elif precision == "int4":
        if not isinstance(group_size, int) or group_size <= 0 or group_size % 32:
            raise InvalidArgumentError(f"`group_size` must be a positive multiple of 32 for int4, got {group_size!r}.")
        kp = -(-k // group_size) * group_size
        groups = kp // group_size
        parts = [n * kp // 2, 4 * n * groups, 4 * n * groups]
    else:
        raise InvalidArgumentError(
            f"`precision` must be one of float32, bfloat16, float16, int8, int4, int8-dynamic, fp8; got {precision!r}.")
    return parts + ([4 * n] if bias else [])


def weight_bytes(numel: int, out_features: int, precision: str, group_size: int = 128, *,
                 bias: bool = False) -> int:
    """Bytes a weight of ``numel`` elements and ``out_features`` rows takes stored in ``precision``.

    Args:
        numel: elements of the float weight (N * K; for a conv N * Cin * kh * kw).
        out_features: N (rows; per-channel scales are one per row).
        precision: a precision from ``autosurgeon.knobs.PRECISIONS``.
        group_size: int4 group along K (ignored otherwise).
        bias: include an (N,) bias (float32 for quantized layers, the float dtype otherwise).
    """
    return sum(tensor_bytes(numel, out_features, precision, group_size, bias=bias))


def packed_copy_bytes(numel: int, out_features: int, precision: str, group_size: int = 128, *,
                      kernel: str = "auto", exec_kind: str = "cpu") -> int:
    """Bytes of the packed copy a kernel keeps next to a resident weight (0 for kernels that read it as is).

    fbgemm (int8-dynamic) counts as the int8 weight size, as ``QuantizedLinear.prepared_nbytes`` does;
    tinygemm (CUDA int4, the default kernel there) holds the repacked codes (N * Kp / 2) and a bfloat16
    (groups, N, 2) scale/zero table, when the shape fits it (N % 8 == 0, Kp % 128 == 0); torch's CPU int4
    kernel (``torch-int4pack-cpu``, never the default) the codes and a float32 table when N % 16 == 0.
    """
    n, k = out_features, numel // out_features
    if precision == "int8-dynamic" or kernel == "int8-dynamic":
        return n * k
    kp = -(-k // group_size) * group_size
    if precision == "int4" and exec_kind == "gpu" and kernel in ("auto", "cuda-int4-tinygemm"):
        if n % 8 == 0 and kp % _TINYGEMM_K_TILE == 0 and group_size in (32, 64, 128, 256):
            return n * kp // 2 + 4 * n * (kp // group_size)  # codes + bfloat16 (groups, N, 2)
    if precision == "int4" and exec_kind == "cpu" and kernel == "torch-int4pack-cpu" and n % 16 == 0:
        return n * kp // 2 + 8 * n * (kp // group_size)  # codes + float32 (groups, N, 2)
    return 0


def plan_memory(space: SearchSpace, plan: Plan | Any, *, lookahead: int = 2) -> dict[str, int]:
    """Resident bytes per tier (``gpu``, ``cpu``, ``disk``) of the model under ``plan`` (see module docstring).

    Args:
        space: the SearchSpace of the model and device (holds every unit's shapes).
        plan: a :class:`~autosurgeon.plan.Plan` or an encoded vector of ``space``.
        lookahead: the runtime's streaming lookahead (``SessionSpec.lookahead``, default 2).
    """
    return memory_breakdown(space, plan, lookahead=lookahead)["tiers"]


def memory_breakdown(space: SearchSpace, plan: Plan | Any, *, lookahead: int = 2) -> dict[str, Any]:
    """``plan_memory`` with detail: ``tiers``, ``by_unit`` {tier: {unit: bytes}}, and ``staging`` {tier: bytes}."""
    from autosurgeon.plan import Plan

    x = space.encode(plan) if isinstance(plan, Plan) else space.check_vector(plan)
    return FootprintTracker(space, x, lookahead=lookahead).breakdown()


class FootprintTracker:
    """Bytes per tier of a vector that changes one entry at a time, recomputing only the affected block.

    Every decision touches one block-level unit (a leaf's precision its block, a fusion its members'
    block), and the tiers are sums over blocks plus staging (a max over blocks), so a greedy search over
    thousands of variables (``plan_check.smallest_footprint``) stays fast on 70B-parameter shapes.
    """

    def __init__(self, space: SearchSpace, x: Any, *, lookahead: int = 2) -> None:
        if lookahead < 0:
            raise InvalidArgumentError(f"`lookahead` must be >= 0, got {lookahead}.")
        self.space, self.lookahead = space, lookahead
        self.x = space.check_vector(x).copy()
        self.values = space.values(self.x)
        index = {b.name: k for k, b in enumerate(space.blocks)}
        block_of_leaf = {leaf.name: index[leaf.block] for leaf in space.leaves.values() if leaf.block in index}
        groups = {g.name: g for g in space.units.groups}
        # Blocks each variable touches: a fusion touches every member's block (a conv and its BatchNorm
        # may sit in different block-level units, e.g. a stem outside the blocks).
        self.blocks_of_var: list[tuple[int, ...]] = []
        for v in space.variables:
            if v.knob == "fusion":
                self.blocks_of_var.append(tuple(sorted({block_of_leaf[m] for m in groups[v.name].members})))
            else:
                k = index[v.name] if v.name in index else block_of_leaf.get(v.name)
                self.blocks_of_var.append(() if k is None else (k,))
        self.fused = _fusions(space.units.groups, self.values)
        self.usage = [self._block(k) for k in range(len(space.blocks))]

    def set(self, i: int, j: int) -> None:
        """Give variable ``i`` choice ``j`` and recompute the blocks it touches."""
        v = self.space.variables[i]
        self.x[i] = j
        self.values[(v.name, v.knob)] = v.choices[j]
        if v.knob == "fusion":
            self.fused = _fusions(self.space.units.groups, self.values)
        for k in self.blocks_of_var[i]:
            self.usage[k] = self._block(k)

    def tiers(self) -> dict[str, int]:
        out = dict.fromkeys(TIERS, 0)
        slots: dict[str, int] = defaultdict(int)
        for totals, _, slot in self.usage:
            for tier, n in totals.items():
                out[tier] += n
            for tier, n in slot.items():
                slots[tier] = max(slots[tier], n)
        for tier, n in slots.items():
            out[tier] += (self.lookahead + 1) * n
        return out

    def breakdown(self) -> dict[str, Any]:
        by_unit: dict[str, dict[str, int]] = defaultdict(dict)
        slots: dict[str, int] = defaultdict(int)
        for _, units, slot in self.usage:
            for tier, names in units.items():
                for name, n in names.items():
                    _add(by_unit, tier, name, n)
            for tier, n in slot.items():
                slots[tier] = max(slots[tier], n)
        staging = {tier: (self.lookahead + 1) * n for tier, n in slots.items() if n}
        return {"tiers": self.tiers(), "by_unit": {t: dict(v) for t, v in by_unit.items()}, "staging": staging}

    def _block(self, k: int) -> tuple[dict[str, int], dict[str, dict[str, int]], dict[str, int]]:
        """(bytes per tier, {tier: {unit: bytes}}, {exec tier: largest streamed unit}) of block ``k``."""
        space, values = self.space, self.values
        block = space.blocks[k]
        default_kind = space.default_placement
        placement = values.get((block.name, "placement"), default_kind) if block.is_block else default_kind
        exec_kind, _, home = placement.partition("<-")
        exec_tier = "gpu" if exec_kind in ("gpu", "dla") else "cpu"
        home_tier = home or exec_tier
        packed = values.get((block.name, "layout")) == "packed" and home_tier != exec_tier
        removed, with_bias, merged = self.fused
        by_unit: dict[str, dict[str, int]] = defaultdict(dict)
        slot = 0
        for leaf_name in block.leaves:
            if leaf_name in removed:
                continue
            leaf = space.leaves[leaf_name]
            if leaf_name in merged:
                group = merged[leaf_name]
                leaf = _concatenated(leaf, [space.leaves[m] for m in group.members])
                leaf_name = group.name
            parts, resident_parts, extra = _leaf_parts(leaf, values, exec_kind, add_bias=leaf_name in with_bias)
            if packed:  # the whole block is one streamed unit: its vectors travel with it
                parts, resident_parts = parts + resident_parts, []
            if home_tier == exec_tier:
                _add(by_unit, exec_tier, leaf_name, sum(parts) + sum(resident_parts) + extra)
                continue
            # A streamed unit's home copy: disk stores exact bytes; a memory tier copies it into an arena
            # with every tensor aligned (TensorStore.register(copy=True)).
            home_bytes = sum(parts) if home_tier == "disk" else sum(_aligned(p) for p in parts)
            _add(by_unit, home_tier, leaf_name, home_bytes)
            _add(by_unit, exec_tier, leaf_name, sum(resident_parts))
            staged = sum(_aligned(p) for p in parts)
            slot = slot + staged if packed else max(slot, staged)
        totals = {tier: sum(names.values()) for tier, names in by_unit.items()}
        return totals, by_unit, ({exec_tier: slot} if slot else {})


def _add(by_unit: dict[str, dict[str, int]], tier: str, name: str, nbytes: int) -> None:
    if nbytes:
        by_unit[tier][name] = by_unit[tier].get(name, 0) + nbytes


def _fusions(groups: Any, values: dict[tuple[str, str], Any]) -> tuple[set[str], set[str], dict[str, Any]]:
    """What fusion decisions do to the tensors (``transforms/fuse.py``): (leaves whose tensors disappear,
    convs that gain a bias, first member -> concatenated group).

    conv+bn: the BatchNorm becomes an identity and the conv gets a bias. q/k/v, gate/up: one linear with
    the members' weights (and biases, zeros for a member without one) concatenated along the rows.
    """
    removed: set[str] = set()
    with_bias: set[str] = set()
    merged: dict[str, Any] = {}
    for group in groups:
        if values.get((group.name, "fusion")) != "fuse":
            continue
        if group.kind == "conv-bn":
            removed.add(group.members[1])
            with_bias.add(group.members[0])
        else:
            merged[group.members[0]] = group
            removed.update(group.members[1:])
    return removed, with_bias, merged


def _concatenated(first: Any, members: list[Any]) -> Any:
    """A leaf record standing for the members concatenated along the output rows (named like the first)."""
    from dataclasses import replace

    numel = sum(m.weight_numel for m in members)
    out = sum(m.out_features for m in members)
    bias = any(m.bias for m in members)
    size = FLOAT_ITEMSIZE.get(first.dtype, 4)
    sizes = (numel * size, *((out * size,) if bias else ()))
    return replace(first, weight_numel=numel, out_features=out, bias=bias, tensor_sizes=sizes)


def _leaf_parts(leaf: Any, values: dict[tuple[str, str], Any], exec_kind: str, *,
                add_bias: bool = False) -> tuple[list[int], list[int], int]:
    """(streamable tensor sizes, always-resident sizes, packed-copy bytes) of one leaf under the plan.

    The runtime streams a module's tensors together unless *all* of them are vectors (<= 1-D), which
    stay resident; a QuantizedLinear's scales and bias travel with its codes. ``add_bias``: a folded
    BatchNorm gave this conv a bias it did not have.
    """
    precision = values.get((leaf.name, "precision"))
    bias = leaf.bias or add_bias
    if precision is None:
        sizes = list(leaf.tensor_sizes)
        if add_bias and not leaf.bias and leaf.out_features:
            sizes.append(leaf.out_features * FLOAT_ITEMSIZE.get(leaf.dtype, 4))
        return (sizes, [], 0) if leaf.streamable else ([], sizes, 0)
    group = values.get((leaf.name, "group_size"), 128)
    kernel = values.get((leaf.name, "kernel"), "auto")
    parts = tensor_bytes(leaf.weight_numel, leaf.out_features, precision, group, bias=bias)
    parts += list(leaf.other_sizes)  # tensors besides weight and bias (none for nn.Linear/Conv), as they are
    extra = packed_copy_bytes(leaf.weight_numel, leaf.out_features, precision, group, kernel=kernel,
                              exec_kind=exec_kind)
    return parts, [], extra


__all__ = ["FLOAT_ITEMSIZE", "TIERS", "FootprintTracker", "memory_breakdown", "packed_copy_bytes", "plan_memory", "tensor_bytes",
           "weight_bytes"]
