"""Unit discovery for layer analysis: which modules are leaves, which are blocks, who owns each weight.

A *leaf* is the smallest decision unit AutoSurgeon reasons about (a linear, a conv, an embedding, a norm,
the attention core, an MoE router or expert bank). A *block* is one repeated element of the model's trunk
(a transformer decoder layer, a residual block); the leaves outside every block (embedding, final norm,
head, stem) stand beside the blocks so that blocks plus the rest cover every weight of the model.

Discovery is structural (module classes, names and the module tree), so it works unchanged on the meta
device, before any forward pass.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

# Leaf kinds that absorb their whole subtree: everything under them is part of the one unit.
ABSORBING_KINDS = ("linear", "conv", "embedding", "norm", "router", "experts")

_TORCH_NORMS = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
)
_ROUTER_NAMES = ("gate", "router")
_MOE_HINTS = ("moe", "sparse", "expert")
_BLOCK_SUFFIXES = ("Block", "Layer", "DecoderLayer", "EncoderLayer")


def _direct_tensors(module: nn.Module) -> Iterator[torch.Tensor]:
    yield from module.parameters(recurse=False)
    yield from (b for b in module.buffers(recurse=False) if b is not None)


def classify(name: str, module: nn.Module, parent: nn.Module | None) -> str | None:
    """Returns the leaf kind of ``module`` from its class and name, or None for a container.

    "attention" is returned for attention modules; unlike the other kinds it does not absorb its
    children (its projections are leaves of their own), only the ops it runs itself (the attention core).
    """
    cls = type(module).__name__
    last = name.rsplit(".", 1)[-1].lower()
    parent_cls = type(parent).__name__.lower() if parent is not None else ""
    if "router" in cls.lower():
        return "router"
    if isinstance(module, nn.Linear) or cls.endswith("Linear") or cls == "Conv1D":
        # Hugging Face's GPT-2 Conv1D is a linear with a transposed weight.
        if last in _ROUTER_NAMES and any(h in parent_cls for h in _MOE_HINTS):
            return "router"
        return "linear"
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return "embedding"
    weight = getattr(module, "weight", None)
    if cls.endswith("Embedding") and isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return "embedding"  # a rotary "Embedding" has no weight and stays a container
    if isinstance(module, _TORCH_NORMS) or cls.endswith("Norm") or cls.endswith("RMSNorm"):
        return "norm"
    if cls.endswith("Experts") or (
        "expert" in last and any(p.dim() == 3 for p in module.parameters(recurse=False))
    ):
        return "experts"
    if "Attention" in cls or isinstance(module, nn.MultiheadAttention):
        return "attention"
    return None


def _is_repeated_container(module: nn.Module) -> bool:
    children = list(module.children())
    if not isinstance(module, (nn.ModuleList, nn.Sequential)) or len(children) < 2:
        return False
    first = type(children[0])
    return all(type(c) is first for c in children)


@dataclass(frozen=True)
class UnitLayout:
    """The result of discovery.

    Attributes:
        names: FQN of every unique module, in ``named_modules`` (pre-)order; the root is "".
        classes: FQN -> the module's class name.
        kinds: leaf kind per module FQN (only modules that are leaves, see ``classify``).
        absorbed: FQNs of modules inside an absorbing leaf (they are not units themselves).
        blocks: FQNs of the blocks, in model order.
        owner: id of each parameter/buffer tensor -> FQN of the module that owns it (first in pre-order,
            so a tied weight, e.g. Llama's ``lm_head`` tied to ``embed_tokens``, is owned once).
        direct: FQN -> the tensors (params and buffers) held directly by that module, tied ones included.
        param_ids: ids of the tensors that are parameters (the rest are buffers).
        positions: FQN -> index in ``names``.
    """

    names: tuple[str, ...]
    classes: dict[str, str]
    kinds: dict[str, str]
    absorbed: frozenset[str]
    blocks: tuple[str, ...]
    owner: dict[int, str]
    direct: dict[str, tuple[torch.Tensor, ...]] = field(repr=False)
    param_ids: frozenset[int] = field(repr=False)
    positions: dict[str, int] = field(repr=False, default_factory=dict)

    def subtree(self, fqn: str) -> list[str]:
        """``fqn`` and every module below it (contiguous in pre-order)."""
        start = self.positions[fqn]
        prefix = f"{fqn}." if fqn else ""
        out = [fqn]
        for name in self.names[start + 1 :]:
            if not name.startswith(prefix):
                break
            out.append(name)
        return out

    def position(self, fqn: str) -> int:
        return self.positions[fqn]

    def owned(self, fqn: str) -> list[torch.Tensor]:
        """Tensors held directly by ``fqn`` that it owns (tied copies held elsewhere first are skipped)."""
        return [t for t in self.direct.get(fqn, ()) if self.owner.get(id(t)) == fqn]


def discover(model: nn.Module) -> UnitLayout:
    """Walks ``model`` once and classifies its modules into leaves and blocks (see module docstring)."""
    named = list(model.named_modules())
    modules = dict(named)
    kinds: dict[str, str] = {}
    absorbed: set[str] = set()
    owner: dict[int, str] = {}
    direct: dict[str, tuple[torch.Tensor, ...]] = {}
    param_ids = {id(p) for p in model.parameters()}
    # Pre-order: a module lies inside an absorbing leaf iff it lies inside the last one seen.
    last_absorbing: str | None = None
    for name, module in named:
        tensors = tuple(_direct_tensors(module))
        direct[name] = tensors
        for t in tensors:
            owner.setdefault(id(t), name)
        if last_absorbing is not None and name.startswith(last_absorbing):
            absorbed.add(name)
            continue
        parent = modules.get(name.rsplit(".", 1)[0]) if name else None
        kind = classify(name, module, parent) if name else None
        if kind is not None:
            kinds[name] = kind
            if kind in ABSORBING_KINDS:
                last_absorbing = name + "."
    blocks = _find_blocks(named, kinds)
    return UnitLayout(
        names=tuple(n for n, _ in named),
        classes={n: type(m).__name__ for n, m in named},
        kinds=kinds,
        absorbed=frozenset(absorbed),
        blocks=tuple(blocks),
        owner=owner,
        direct=direct,
        param_ids=frozenset(param_ids),
        positions={n: i for i, (n, _) in enumerate(named)},
    )


def _find_blocks(named: list[tuple[str, nn.Module]], kinds: dict[str, str]) -> list[str]:
    """Blocks: outermost children of repeated containers, or outermost "*Block"/"*Layer" modules.

    A repeated container is an ``nn.ModuleList``/``nn.Sequential`` of >= 2 children of one class (the
    decoder layers of a transformer, the stages of a ResNet). Leaves are never blocks, and nothing inside
    a block is another block, so blocks never overlap.
    """
    candidates: set[str] = set()
    for name, module in named:
        if _is_repeated_container(module):
            prefix = f"{name}." if name else ""
            candidates.update(prefix + child for child, _ in module.named_children())
        cls = type(module).__name__
        if name and cls.endswith(_BLOCK_SUFFIXES):
            candidates.add(name)
    blocks: list[str] = []
    for name, _ in named:
        if name not in candidates or name in kinds:
            continue
        if blocks and name.startswith(blocks[-1] + "."):  # pre-order: only the last block can contain it
            continue
        blocks.append(name)
    return blocks
