"""Placement fitted by the runtime's exact bytes, for plans that leave placement open.

A plan made by a search decides where every block runs. A plan made from ``autosurgeon run``'s flags (or
``api.apply`` without a plan) decides only precisions and session knobs; its blocks are then placed by
``planners.default_placement.build_spec`` on the *transformed* model: resident on the execution device while
its budget lasts (after the expert cache when experts stream), the rest streamed from the next slower tier.
Measuring the transformed model's own bytes (not a cost model's estimate) is why this runs after the
transforms and why it cannot exceed the budget it was given.
"""
from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from autosurgeon.planners.default_placement import build_spec
from autosurgeon.transforms.session import SessionOptions
from runtime.experts import cache_slots, find_expert_modules
from runtime.spec import SessionSpec
from runtime.streaming import DEFAULT_DISK_IO


def expert_cache_bytes(model: nn.Module, capacity: float | int) -> tuple[set[int], int]:
    """(ids of the streamed experts modules, bytes of their cache) for an expert cache of ``capacity``
    (a share of all experts, or a count of slots); at least one layer's experts fit, as the runtime needs."""

    found = find_expert_modules(model)
    if not found:
        return set(), 0
    first = found[0][1]
    per_expert = (first.gate_up_proj[0].numel() + first.down_proj[0].numel()) * first.gate_up_proj.element_size()
    slots = cache_slots(capacity, num_layers=len(found), num_experts=int(first.num_experts))  # as the runtime sizes it
    return {id(m) for _, m, _ in found}, slots * per_expert


def fit_spec(model: nn.Module, options: SessionOptions, *, device: str, budgets: Mapping[str, int],
             lookahead: int, offload_dir: str | None, disk_io: str = DEFAULT_DISK_IO, reserve: int = 0) -> SessionSpec:
    """The default placement of ``model`` (as transformed) on ``device`` within ``budgets`` (module docstring);
    ``reserve`` bytes of the execution tier are left free (the decode's static KV cache on CUDA)."""
    import dataclasses

    exclude: set[int] = set()
    if options.experts is not None:
        exclude, cache = expert_cache_bytes(model, options.experts.capacity)
        reserve += cache
    spec = build_spec(model, device=device, budgets=dict(budgets), lookahead=lookahead, offload_dir=offload_dir,
                      exclude=exclude, reserve=reserve)
    return spec if disk_io == spec.disk_io else dataclasses.replace(spec, disk_io=disk_io)


__all__ = ["expert_cache_bytes", "fit_spec"]
