"""Hessian-trace estimates per unit by Hutchinson's method, as HAWQ (Dong et al., 2019/2020) does.

For a loss L and the weights w_i of unit i, ``Tr(H_ii) = E_v[v_i^T H_ii v_i]`` for Rademacher v (entries
+-1). One Hessian-vector product ``Hv`` (double backprop: ``grad(grad(L) . v)``) over ALL units' weights at
once gives every unit's estimate: ``v_i^T (Hv)_i = v_i^T H_ii v_i + sum_{j!=i} v_i^T H_ij v_j``, and the cross
terms have mean zero because v_i and v_j are independent. So ``n_samples`` HVPs cost ``n_samples`` double
backward passes in total, whatever the number of units.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from autosurgeon.errors import InvalidArgumentError
from autosurgeon.quality.calibration import CalibrationData, run_model


def hutchinson_trace(loss_fns: Sequence[Callable[[], torch.Tensor]], params: Mapping[str, torch.Tensor], *,
                     n_samples: int = 8, seed: int = 0) -> dict[str, float]:
    """Estimate ``Tr(H_ii)`` for each named parameter tensor of ``sum(loss_fns[k]())``.

    Args:
        loss_fns: callables returning scalar losses whose SUM is the objective (one per calibration batch,
            each already weighted, so big calibration sets need not fit one graph).
        params: ``{name: tensor}`` with ``requires_grad=True``; each gets its own trace.
        n_samples: Rademacher vectors drawn (the estimate's variance falls as 1/n_samples).
        seed: seeds the vectors (a CPU generator, so the draw is device independent).
    """
    if n_samples < 1:
        raise InvalidArgumentError(f"`n_samples` must be >= 1, got {n_samples}.")
    names, tensors = list(params), list(params.values())
    generator = torch.Generator().manual_seed(seed)
    totals = dict.fromkeys(names, 0.0)
    for _ in range(n_samples):
        vs = [(torch.randint(0, 2, t.shape, generator=generator) * 2 - 1).to(t) for t in tensors]
        for loss_fn in loss_fns:
            loss = loss_fn()
            grads = torch.autograd.grad(loss, tensors, create_graph=True)
            hvs = torch.autograd.grad(grads, tensors, grad_outputs=vs)
            for name, v, hv in zip(names, vs, hvs):
                totals[name] += float((v.double() * hv.double()).sum())
    return {name: total / n_samples for name, total in totals.items()}


@contextlib.contextmanager
def _double_backward_ready(model: nn.Module, wanted: Sequence[torch.Tensor]) -> Iterator[None]:
    """Eager attention (fused SDPA kernels have no double backward) and grads only for ``wanted``."""
    config = getattr(model, "config", None)
    previous_attn = getattr(config, "_attn_implementation", None)
    switch = previous_attn not in (None, "eager") and hasattr(model, "set_attn_implementation")
    flags = [(p, p.requires_grad) for p in model.parameters()]
    wanted_ids = {id(t) for t in wanted}
    try:
        if switch:
            model.set_attn_implementation("eager")
        for p, _ in flags:
            p.requires_grad_(id(p) in wanted_ids)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        if switch:
            model.set_attn_implementation(previous_attn)


def unit_hessian_traces(model: nn.Module, calibration: CalibrationData, units: Sequence[str], *,
                        n_samples: int = 8, seed: int = 0, batch_size: int = 8) -> dict[str, float]:
    """``{fqn: Tr(H)}`` of the calibration cross-entropy with respect to each unit's weight.

    The loss is the mean next-token cross-entropy (tokens) or the mean label cross-entropy (images) over
    the whole calibration set, computed batch by batch (weights = batch share), in eval mode.
    """
    weights = {fqn: model.get_submodule(fqn).weight for fqn in units}
    device = next(iter(weights.values())).device
    total = calibration.n_samples
    batches = list(calibration.batches(batch_size, device))

    def make_loss(x: torch.Tensor, y: torch.Tensor) -> Callable[[], torch.Tensor]:
        def loss() -> torch.Tensor:
            logits = run_model(model, calibration.kind, x).float()
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            return ce * (x.shape[0] / total)

        return loss

    with _double_backward_ready(model, list(weights.values())), torch.enable_grad():
        return hutchinson_trace([make_loss(x, y) for x, y in batches], weights, n_samples=n_samples, seed=seed)
