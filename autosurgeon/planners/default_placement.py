"""The default placement of an unplanned model within per-tier budgets (``autosurgeon run`` and ``api.apply``).

Blocks stay resident on the execution device while its budget lasts (after the embeddings, head and the
staging slots streaming needs); the rest stream from the next slower tier (pinned host memory next to a GPU;
the disk tier on a CPU-only machine).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from autosurgeon.planners.least_budget import check_budget_floor
from runtime.session import find_blocks, module_bytes, own_bytes
from runtime.spec import SessionSpec
from runtime.tensors import tier_of


def build_spec(model: Any, *, device: str, budgets: dict[str, int], lookahead: int, offload_dir: str | None,
               exclude: set[int] | None = None, reserve: int = 0, argument: str = "budget") -> Any:
    """The default placement (see the module docstring), from the exact bytes of the (formatted) model.

    ``exclude``: ids of modules managed elsewhere (streamed experts), left out of the block sizes;
    ``reserve``: bytes of the execution tier's budget already spoken for (the expert cache).

    Raises:
        InvalidArgumentError: the execution tier's budget is below the least the model can run in
            (``least_budget``), named in the message (``argument``: the flag or argument to name)."""

    exclude = exclude or set()
    check_budget_floor(model, device=device, budgets=budgets, exclude=exclude, reserve=reserve, argument=argument,
                       format_argument=None)

    def size(module: Any) -> int:
        return sum(own_bytes(m) for m in module.modules() if id(m) not in exclude)

    _, blocks = find_blocks(model)
    block_bytes = max(size(b) for b in blocks)
    rest_bytes = module_bytes(model) - sum(module_bytes(b) for b in blocks)
    unit = max(own_bytes(m) for b in blocks for m in b.modules() if id(m) not in exclude)
    tier = tier_of(device)
    fit_budgets = dict(budgets)
    if reserve and budgets.get(tier) is not None:  # place blocks in what the expert cache leaves
        fit_budgets[tier] = max(0, budgets[tier] - reserve)
    spec = SessionSpec.fit(n_blocks=len(blocks), block_bytes=block_bytes, rest_bytes=rest_bytes, device=device,
                           budgets=fit_budgets, stream_unit_bytes=unit, lookahead=lookahead, offload_dir=offload_dir)
    return dataclasses.replace(spec, budgets=budgets) if reserve else spec
