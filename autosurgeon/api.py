"""The Python API: load a model, get a plan, run it on the runtime — the CLI's steps in three lines.

    import autosurgeon as asg
    model = asg.load("tiny-llama")                                  # zoo name, HF directory or module:factory
    plan = asg.make_plan(model, memory_budget="50%", max_quality_loss=0.02)   # sensitivity-aware knapsack plan
    with asg.apply(model, plan, memory_budget="cpu=8MiB") as session:     # a runtime Session within budgets
        out = session.generate(asg.prompt(model, "def "), max_new_tokens=16)
        print(session.stats())                                      # tokens/s, peak bytes per tier, energy

Budgets take the CLI's ``--memory-budget`` grammar (``"25%"``, ``"2GiB"``, ``"gpu=3GiB,cpu=20GiB"``); a share
is of the unmodified model's weight bytes. ``apply`` works in place (like ``autosurgeon run``): load the model
again for another plan. Nothing here is imported by ``import autosurgeon`` until first used.
"""
from __future__ import annotations

import os
import re
from typing import Any

from autosurgeon.budget import MemoryBudget
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.hardware.resolve import resolve_profile
from autosurgeon.models.prompt import parse_prompt_ids, prompt_ids_tensor, tokenizer
from autosurgeon.plan import Plan
from autosurgeon.planners.knapsack import PLANNER_KNOBS, plan_knapsack
from autosurgeon.quality.sensitivity import DEFAULT_PRECISIONS, measure_sensitivity
from autosurgeon.space.search_space import SearchSpace
from autosurgeon.transforms.apply import apply_plan, session_from_plan
from autosurgeon.zoo import load_model
from runtime.session import module_bytes


def load(spec: str | os.PathLike[str], *, device: str = "cpu", dtype: Any = None,
         cache_dir: str | os.PathLike[str] | None = None) -> Any:
    """A ``LoadedModel`` (``.model``, ``.task``, ``.metrics``): see ``autosurgeon.zoo.load_model``."""

    return load_model(spec, device=device, dtype=dtype, cache_dir=cache_dir)


def make_plan(model: Any, *, device: Any = "local", memory_budget: str | int | None = None,
         max_quality_loss: float | None = None, objective: str = "auto", group_sizes: tuple[int, ...] = (128,),
         cache_dir: str | os.PathLike[str] | None = None) -> Any:
    """The knapsack plan (``autosurgeon plan``) of ``model`` on ``device`` under the budget and quality bound.

    Args:
        model: a ``LoadedModel`` from ``load``.
        device: ``"local"`` (this machine, measured and cached), a preset name, a profile path or a profile.
        memory_budget: bytes on the fastest tier: ``"25%"`` of the unmodified weights, or a size (``"2GiB"``).
        max_quality_loss: bound on the predicted relative quality loss (0.01 = 1 %).
        objective: ``"auto"``, ``"quality"``, ``"memory"``, ``"latency"`` or ``"energy"``.
        group_sizes: int4 group sizes the planner may choose between.
    """

    if memory_budget is None and max_quality_loss is None:
        raise InvalidArgumentError("give `memory_budget` (e.g. '25%' or '2GiB'), `max_quality_loss` (e.g. 0.01), "
                                   "or both.")
    if not group_sizes:
        raise InvalidArgumentError("`group_sizes` must name at least one int4 group size, e.g. (128,).")
    profile = resolve_profile(device)
    space = SearchSpace.build(model, profile, knobs=PLANNER_KNOBS)
    tables = [measure_sensitivity(model, precisions=DEFAULT_PRECISIONS if k == 0 else ("int4",), group_size=g,
                                  cache_dir=cache_dir) for k, g in enumerate(group_sizes)]
    result = plan_knapsack(model, profile, tables, budget=memory_budget, max_quality_loss=max_quality_loss,
                           objective=objective, space=space, metadata={"model": model.name, "device": profile.name})
    return result.plan


def apply(model: Any, plan: Plan | None = None, *, device: Any = "local", memory_budget: Any = None,
          watts: float | None = None, offload_dir: str | None = None) -> Any:
    """Apply ``plan`` (a ``Plan``, a plan JSON path, or None: unmodified) in place; return a runtime ``Session``.

    The plan is checked first (``check_plan``: every problem, before the model is touched). ``memory_budget``
    bounds each tier as ``autosurgeon run --memory-budget`` does, streaming what does not fit.
    ``device``: a profile (``"local"``, a preset, a path, a ``HardwareProfile``), or ``"cpu"`` / ``"cuda[:N]"``
    for this machine's profile executing there. ``watts``: a power figure for the energy estimate where no
    counter is readable.
    """

    exec_device = None
    if isinstance(device, str) and re.fullmatch(r"cpu|cuda(:\d+)?", device):  # this machine, run there
        exec_device, device = device, "local"
    budget = MemoryBudget.parse(memory_budget, argument="memory_budget")
    fastest = _fastest(device) if exec_device is None else ("gpu" if exec_device.startswith("cuda") else "cpu")
    budgets = budget.resolve(reference_bytes=module_bytes(model.model), fastest=fastest) if budget else None
    if plan is None:  # unmodified: an empty plan placed within the budgets, as `autosurgeon run` without --plan

        return apply_plan(model, Plan(), device, inplace=True, budgets=budgets or {}, offload_dir=offload_dir,
                          energy_watts=watts, placement="fit",
                          device=exec_device or ("cuda:0" if fastest == "gpu" else "cpu"))
    if not isinstance(plan, Plan):
        plan = Plan.load(plan)
    return session_from_plan(model, plan, profile=device, budgets=budgets, energy_watts=watts,
                             offload_dir=offload_dir)


def prompt(model: Any, text: str | None = None, *, ids: str | None = None) -> Any:
    """The ``(1, T)`` token ids for ``text`` (byte-level zoo LMs, or the directory's tokenizer), or for
    ``ids`` in ``--prompt-ids`` form (``"1,2,3"`` or ``"random:16"``)."""
    import torch


    if (text is None) == (ids is None):
        raise InvalidArgumentError("give exactly one of `text` and `ids` (e.g. ids='random:16').")
    if ids is not None:
        return prompt_ids_tensor(model, parse_prompt_ids(ids))
    return torch.tensor([tokenizer(model)[0](text)], dtype=torch.long)


def _fastest(device: Any) -> str:
    # A bare budget ("25%") is the execution tier's: the GPU where the profile has one and CUDA is here.
    import torch

    if isinstance(device, str) and device == "local":
        return "gpu" if torch.cuda.is_available() else "cpu"
    units = getattr(device, "units", None)
    return "gpu" if units and any(getattr(u, "kind", "") == "gpu" for u in units) else "cpu"
