"""The units a SearchSpace decides about, as plain records built once from the model and its analysis.

Records hold what the space, the byte formula (``footprint.py``) and the RL features need — shapes,
owned tensor sizes, FLOPs, bytes, intensity — so a space can be saved and loaded without the model.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from autosurgeon.analysis.model_analysis import ModelAnalysis
from autosurgeon.analysis.units import ABSORBING_KINDS, discover
from runtime.errors import JalapenoError
from runtime.session import find_blocks

# Leaf kinds that take a precision variable (linear and conv per surgery.md; embeddings float-only, see space.py).
PRECISION_KINDS = ("linear", "conv", "embedding")


@dataclass(frozen=True)
class LeafRecord:
    """One analysed leaf (module FQN) and the tensors it owns.

    Attributes:
        name: module FQN.
        kind: analysis kind ("linear", "conv", "embedding", "norm", ...).
        module_class: the module's class name.
        block: FQN of the block-level unit holding it (a block, or the leaf itself outside blocks).
        dtype: dtype name of its weight (or first owned tensor); "" if it owns none.
        weight_numel / out_features / in_features: the weight's elements and rows (0 without a weight);
            for a conv ``in_features`` is Cin/groups * kh * kw (the flattened row).
        bias: whether it has a bias (counted by ``footprint.weight_bytes(bias=True)``).
        other_sizes: bytes of owned tensors besides weight and bias.
        tensor_sizes: bytes of every owned tensor as it is now.
        streamable: some owned tensor has >= 2 dimensions (the runtime streams it; vectors-only stay resident).
        tied_to: FQN owning this leaf's weight when it is shared (a tied head), else None.
        flops, memory_bytes, intensity, parallelism: from the analysis.
        position: index of the leaf among all leaves (model order).
    """

    name: str
    kind: str
    module_class: str
    block: str
    dtype: str
    weight_numel: int
    out_features: int
    in_features: int
    bias: bool
    other_sizes: tuple[int, ...]
    tensor_sizes: tuple[int, ...]
    streamable: bool
    tied_to: str | None
    flops: int
    memory_bytes: int
    intensity: float
    parallelism: float
    position: int

    @property
    def own_bytes(self) -> int:
        return sum(self.tensor_sizes)


@dataclass(frozen=True)
class BlockRecord:
    """One block-level unit of the analysis: a repeated block, or a leaf outside every block."""

    name: str
    kind: str
    leaves: tuple[str, ...]
    weight_bytes: int
    flops: int
    memory_bytes: int
    intensity: float
    parallelism: float
    position: int
    runtime_block: bool = True  # one of the runtime's block list (runtime.session.find_blocks): placeable

    @property
    def is_block(self) -> bool:
        return self.kind == "block"


@dataclass(frozen=True)
class FusionGroup:
    """Modules that can be fused into one: ``conv-bn`` (fold), ``qkv`` and ``gate-up`` (concatenation).

    ``name`` is the FQN the fusion decision is keyed by: the conv for conv+bn, the parent module (the
    attention or MLP module) for a concatenation.
    """

    name: str
    kind: str
    members: tuple[str, ...]


@dataclass(frozen=True)
class UnitTable:
    leaves: dict[str, LeafRecord]
    blocks: tuple[BlockRecord, ...]
    groups: tuple[FusionGroup, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {"leaves": [asdict(r) for r in self.leaves.values()], "blocks": [asdict(b) for b in self.blocks],
                "groups": [asdict(g) for g in self.groups]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UnitTable:
        def leaf(d: dict[str, Any]) -> LeafRecord:
            d = dict(d)
            d["other_sizes"], d["tensor_sizes"] = tuple(d["other_sizes"]), tuple(d["tensor_sizes"])
            return LeafRecord(**d)

        leaves = {d["name"]: leaf(d) for d in data["leaves"]}
        blocks = tuple(BlockRecord(**{**b, "leaves": tuple(b["leaves"])}) for b in data["blocks"])
        groups = tuple(FusionGroup(g["name"], g["kind"], tuple(g["members"])) for g in data.get("groups", ()))
        return cls(leaves, blocks, groups)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def build_units(model: nn.Module, analysis: ModelAnalysis) -> UnitTable:
    """Leaf and block records of ``model`` (real or meta), from its analysis and its module tree."""
    layout = discover(model)
    modules = dict(model.named_modules())
    block_names = [b.name for b in analysis.blocks]
    leaves: dict[str, LeafRecord] = {}
    for position, info in enumerate(analysis.leaves):
        module = modules.get(info.name)
        if module is None:
            continue
        # Absorbing leaves own their whole subtree; the attention core owns only its direct tensors (its
        # projections are leaves of their own).
        subs = layout.subtree(info.name) if info.kind in ABSORBING_KINDS else [info.name]
        owned = [t for sub in subs for t in layout.owned(sub)]
        weight = getattr(module, "weight", None)
        weight = weight if isinstance(weight, torch.Tensor) else None
        bias = getattr(module, "bias", None)
        bias = bias if isinstance(bias, torch.Tensor) else None
        tied_to = None
        if weight is not None and layout.owner.get(id(weight)) not in (None, info.name):
            tied_to = layout.owner[id(weight)]
        numel = out = in_f = 0
        if weight is not None and weight.dim() >= 2 and tied_to is None:
            numel, out = weight.numel(), weight.shape[0]
            if info.kind == "linear" and type(module).__name__ == "Conv1D":  # GPT-2: (in, out) layout
                out = weight.shape[1]
            in_f = numel // out
        skip = {id(weight), id(bias)} if numel else set()
        first = weight if weight is not None else (owned[0] if owned else None)
        leaves[info.name] = LeafRecord(
            name=info.name, kind=info.kind, module_class=type(module).__name__,
            block=next((b for b in block_names if info.name == b or info.name.startswith(b + ".")), info.name),
            dtype=str(first.dtype).removeprefix("torch.") if first is not None else "",
            weight_numel=numel, out_features=out, in_features=in_f, bias=bool(numel) and bias is not None,
            other_sizes=tuple(_nbytes(t) for t in owned if id(t) not in skip),
            tensor_sizes=tuple(_nbytes(t) for t in owned),
            streamable=any(t.dim() >= 2 for t in owned), tied_to=tied_to,
            flops=int(info.flops), memory_bytes=int(info.memory_bytes), intensity=float(info.intensity),
            parallelism=float(info.parallelism), position=position,
        )
    runtime_path = _runtime_block_path(model)
    blocks = []
    for position, b in enumerate(analysis.blocks):
        members = tuple(n for n in leaves if leaves[n].block == b.name)
        in_list = runtime_path is not None and b.name.rpartition(".")[0] == runtime_path
        blocks.append(BlockRecord(name=b.name, kind=b.kind, leaves=members, weight_bytes=int(b.weight_bytes),
                                  flops=int(b.flops), memory_bytes=int(b.memory_bytes), intensity=float(b.intensity),
                                  parallelism=float(b.parallelism), position=position, runtime_block=in_list))
    return UnitTable(leaves, tuple(blocks), tuple(_fusion_groups(model, leaves)))


def _runtime_block_path(model: nn.Module) -> str | None:
    """Dotted path of the ModuleList the runtime places and streams block by block (None: it finds none)."""

    try:
        return find_blocks(model)[0]
    except JalapenoError:
        return None


def _fusion_groups(model: nn.Module, leaves: dict[str, LeafRecord]) -> list[FusionGroup]:
    """conv followed by a BatchNorm in the same parent; q/k/v and gate/up linears under one parent."""
    groups: list[FusionGroup] = []
    modules = dict(model.named_modules())
    names = list(leaves)
    for prev, nxt in zip(names, names[1:]):
        same_parent = prev.rpartition(".")[0] == nxt.rpartition(".")[0]
        if (leaves[prev].kind == "conv" and same_parent
                and isinstance(modules.get(nxt), nn.modules.batchnorm._BatchNorm)):
            groups.append(FusionGroup(prev, "conv-bn", (prev, nxt)))
    for name, module in modules.items():
        for kind, parts in (("qkv", ("q_proj", "k_proj", "v_proj")), ("gate-up", ("gate_proj", "up_proj"))):
            children = [f"{name}.{p}" if name else p for p in parts]
            if all(isinstance(getattr(module, p, None), nn.Linear) and c in leaves and leaves[c].weight_numel
                   for p, c in zip(parts, children)):
                groups.append(FusionGroup(name, kind, tuple(children)))
    order = {n: i for i, n in enumerate(modules)}
    return sorted(groups, key=lambda g: order.get(g.name, 0))
