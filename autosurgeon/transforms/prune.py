"""Prune transform: structured pruning of a Llama-style MLP's intermediate channels, by L2 norm.

Target: a module with ``gate_proj``, ``up_proj`` and ``down_proj`` linears computing
``down(act(gate(x)) * up(x))`` (or the same after gate/up fusion: ``gate_up_proj`` with its two slices).
Channel ``j`` is row ``j`` of gate and up and column ``j`` of down; it contributes nothing to the output
once removed, so removing the channels of smallest joint norm ``sqrt(|gate_j|^2 + |up_j|^2 + |down_:j|^2)``
is the cheapest data-free proxy for "least output lost" (magnitude pruning). ``round(ratio * n)``
channels go (at least one stays); kept channels keep their order, so a ratio of 0 changes nothing.
Head pruning is not implemented (transformers' attention derives head counts from its config).

The pruned MLP records ``_autosurgeon_pruned = (original channels, ratio)``: pruning the same module again
at the same ratio is a no-op (idempotence), at another ratio an error (it would compound).
Pruning changes outputs: it is a quality trade, measured by ``quality.py``, not checked for equality.
"""
from __future__ import annotations

import torch
from torch import nn

from autosurgeon.errors import UnsupportedTransformError
from autosurgeon.transforms.configs import PruneConfig
from autosurgeon.transforms.modules import ConcatLinear, SplitOutput, rebuild_linear
from autosurgeon.transforms.registry import TransformContext, register_transform

MARK = "_autosurgeon_pruned"


def is_prunable(module: nn.Module) -> bool:
    """Whether ``module`` looks like a gate/up/down MLP this transform can prune."""
    return all(hasattr(module, p) for p in ("gate_proj", "up_proj", "down_proj"))


@register_transform(PruneConfig)
def prune(module: nn.Module, config: PruneConfig, *, fqn: str, context: TransformContext) -> nn.Module:
    """Remove the lowest-norm intermediate channels of the MLP at ``fqn`` (see the module docstring)."""
    state = getattr(module, MARK, None)
    if state is not None:
        if state[1] == config.ratio:
            context.skipped(fqn, config)
            return module
        raise UnsupportedTransformError(f"{fqn}: already pruned at ratio {state[1]} from {state[0]} channels; "
                                        f"pruning again at {config.ratio} would compound. Start from the unmodified "
                                        "model.")
    if not is_prunable(module):
        raise UnsupportedTransformError(f"{fqn}: pruning needs an MLP with gate_proj, up_proj and down_proj; "
                                        f"{fqn} is a {type(module).__name__}.")
    fused = isinstance(module.gate_proj, SplitOutput)
    down = module.down_proj
    if fused:
        concat: ConcatLinear = module.gate_proj.source
        inner = concat.linear
        n = concat.sizes[0]
        if type(inner) is not nn.Linear or concat.sizes != (n, n):
            raise UnsupportedTransformError(f"{fqn}: the fused gate/up linear is a {type(inner).__name__}; prune "
                                            "before quantizing.")
        gate_w, up_w = inner.weight[:n], inner.weight[n:]
        gate_b, up_b = (None, None) if inner.bias is None else (inner.bias[:n], inner.bias[n:])
    else:
        gate, up = module.gate_proj, module.up_proj
        for name, lin in (("gate_proj", gate), ("up_proj", up)):
            if type(lin) is not nn.Linear:
                raise UnsupportedTransformError(f"{fqn}.{name} is a {type(lin).__name__}; prune float nn.Linear "
                                                "layers before quantizing.")
        gate_w, up_w, gate_b, up_b = gate.weight, up.weight, gate.bias, up.bias
        n = gate_w.shape[0]
    if type(down) is not nn.Linear or down.in_features != n:
        raise UnsupportedTransformError(f"{fqn}.down_proj must be a float nn.Linear with in_features {n}, got "
                                        f"{type(down).__name__}.")
    keep_n = max(1, n - round(config.ratio * n))
    score = (gate_w.detach().double().pow(2).sum(1) + up_w.detach().double().pow(2).sum(1)
             + down.weight.detach().double().pow(2).sum(0))
    keep = torch.topk(score, keep_n).indices.sort().values
    take = (lambda t: None if t is None else t.detach()[keep].clone())  # noqa: E731
    if fused:
        weight = torch.cat([take(gate_w), take(up_w)])
        bias = None if gate_b is None else torch.cat([take(gate_b), take(up_b)])
        concat.linear = rebuild_linear(inner, weight, bias, cls=type(inner))
        concat.sizes = (keep_n, keep_n)
        concat.offsets = (0, keep_n)
        module.gate_proj.out_features = module.up_proj.out_features = keep_n
    else:
        module.gate_proj = rebuild_linear(gate, take(gate_w), take(gate_b))
        module.up_proj = rebuild_linear(up, take(up_w), take(up_b))
    down_bias = None if down.bias is None else down.bias.detach().clone()
    module.down_proj = rebuild_linear(down, down.weight.detach()[:, keep].clone(), down_bias)
    if hasattr(module, "intermediate_size"):
        module.intermediate_size = keep_n
    setattr(module, MARK, (n, config.ratio))
    return module


__all__ = ["MARK", "is_prunable", "prune"]
