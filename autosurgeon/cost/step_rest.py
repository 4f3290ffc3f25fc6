"""The rest of a step: what a model's step costs on this CPU besides its linears (the analytic model's fixed cost).

Instrumented on zoo models (1 thread, decode at 32 positions, process CPU clock, machine load 3-8): tiny-llama's step with every
linear replaced by a no-op cost ~16 us per remaining aten op, against 4-8 us for a bare op (``x + 1``) or a
synthetic eager block — Hugging Face's forward runs ~600 Python calls per decode step (masks, rotary, cache
bookkeeping, output records) that no op count sees, and that no micro-benchmark of ops prices across
architectures; and tiny-moe's step on the runtime cost ~3 ms more than the same model's raw forward (the runtime's
own per-step work around the experts and blocks). So on a measured CPU with the real weights at hand, the analytic
model takes that part as measured: one step of the UNMODIFIED model at the workload's shapes with its linears
nulled (``_Null``: the output shape, no op), run on the runtime all resident (``Profiler.resident_step``: warm,
median, IQR/median, re-measured once when noisy and then labelled so), CPU clock. The plan's linears are priced by
the GEMV table (``cost.gemv``), whose entries carry their own ops; the plan's other leaves (norms, attention,
experts) do not change with the plan. No plan is run and nothing is fitted to the runtime's results.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from autosurgeon.cost.base import count_ops
from autosurgeon.cost.profiled import Profiler, TimingSettings, base_inputs
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.transforms.modules import is_conv1d

if TYPE_CHECKING:  # annotations only
    from autosurgeon.cost.workload import Workload
    from autosurgeon.hardware.profile import HardwareProfile
    from autosurgeon.space.search_space import SearchSpace
    from autosurgeon.zoo import LoadedModel


class _Null(nn.Module):
    """A linear's stand-in: returns a held tensor of the output's shape (no aten op after the first call)."""

    def __init__(self, out_features: int) -> None:
        super().__init__()
        self.out_features = out_features
        self.held: dict[tuple[Any, ...], torch.Tensor] = {}

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        key = (tuple(x.shape[:-1]), x.dtype, x.device)
        out = self.held.get(key)
        if out is None:
            out = self.held[key] = torch.zeros(*x.shape[:-1], self.out_features, dtype=x.dtype, device=x.device)
        return out


def null_linears(model: nn.Module, names: set[str]) -> nn.Module:
    """A deep copy of ``model`` with the linears (or GPT-2 ``Conv1D``) named in ``names`` replaced by ``_Null``."""
    out = copy.deepcopy(model)
    for name in sorted(names):
        parent_name, _, child = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        module = getattr(parent, child)
        if isinstance(module, nn.Linear):
            width = module.out_features
        elif is_conv1d(module):
            width = module.weight.shape[1]
        else:
            raise InvalidArgumentError(f"`names` holds {name!r}, a {type(module).__name__}, not a linear.")
        setattr(parent, child, _Null(width))
    return out


def rest_on_runtime(loaded: LoadedModel, space: SearchSpace, profile: HardwareProfile, workload: Workload,
                    linears: set[str], *, timing: TimingSettings) -> dict[str, Any]:
    """The step (and prefill) of ``loaded``'s model with ``linears`` nulled, on the runtime all resident on the
    profile's default unit: ``median_s``, ``prefill_s``, ``dispersion``, ``noisy``, ``ops`` (the step's aten ops),
    ``load_average``."""
    nulled = null_linears(loaded.model, linears).eval()
    stripped = dataclasses.replace(loaded, model=nulled)
    profiler = Profiler(stripped, space, profile, workload, timing=timing, use_cache=False)
    record = profiler.resident_step()
    step_inputs = loaded.example_inputs(workload.batch, workload.context, phase="decode", seed=workload.seed) \
        if workload.task == "causal-lm" else base_inputs(loaded, workload)
    return {**record, "ops": count_ops(nulled, step_inputs), "load_average": list(os.getloadavg())}


__all__ = ["null_linears", "rest_on_runtime"]
