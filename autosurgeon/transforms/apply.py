"""apply_plan: check a plan, turn it into per-module transform configs, apply them, return a runtime Session.

Steps (each finishes before the next starts, and nothing touches the model until the last two):

1. ``check_plan`` lists every problem of the plan for this model and device; any error raises
   ``PlanCheckError`` with all of them (``check=False`` skips it; ``force=True`` lets fingerprint
   mismatches through as warnings).
2. ``resolve_surgery``: decisions per module from ``Plan.decisions_for`` (exact FQN > first ``re:`` rule >
   default, knob by knob), kept only where the module takes that knob in the search space (a default
   precision means "every layer that has one"); ``group_size`` only for int4, ``kernel`` only for a
   quantized precision. Members of a fused q/k/v or gate/up group become one step on the fused linear.
3. Placement and ``packed`` layouts are recorded and the ``SessionSpec`` is built and validated
   (granularity, devices present here) — still without touching the model.
4. The model is deep-copied (unless ``inplace=True``) and the transforms run in this order:
   fuse -> prune -> quantize -> kernel -> layout. Fusion comes first so a fused q/k/v quantizes as one
   matrix; pruning before quantization so it reads float weights; kernels once the layers are quantized;
   layout last (it changes only memory format). Every handler skips a module already in its target state,
   so applying the same plan again to the transformed model changes nothing (the model carries the
   resolved steps in ``_autosurgeon_applied``; a different plan on a transformed model is refused).
5. ``open_session`` (``transforms/open_session.py``) builds the ``runtime.Session`` that places (resident or
   streamed) the weights as planned, with the plan's session decisions (``Plan.session``: KV cache, expert
   prefetcher, prefetch depth) turned into runtime options by ``transforms/session.py``. Steps 1-4 are
   ``prepare_plan``, which returns the transformed model, its spec and the options without opening it.

``placement="fit"`` is for plans that leave placement open (``autosurgeon run`` without ``--plan``,
``api.apply`` without a plan): step 3 is skipped and, after step 4, the runtime's default placement fits the
transformed model's exact bytes into the budget (``transforms/fit_placement.py``).
"""
from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from autosurgeon._logging import get_logger
from autosurgeon.cost.footprint import DEFAULT_KV_CONTEXT, EXPERT_CAPACITY, resolve_budget
from autosurgeon.errors import InvalidArgumentError, UnsupportedTransformError
from autosurgeon.hardware.profile import HardwareProfile
from autosurgeon.hardware.resolve import resolve_profile
from autosurgeon.knobs import KNOBS
from autosurgeon.plan import Plan
from autosurgeon.plan_check import check_plan, raise_for_problems
from autosurgeon.precisions import QUANTIZED_PRECISIONS
from autosurgeon.space.search_space import SearchSpace
from autosurgeon.transforms.configs import (
    FuseConfig,
    KernelConfig,
    LayoutConfig,
    PlaceConfig,
    PruneConfig,
    QuantizeConfig,
)
from autosurgeon.transforms.fit_placement import fit_spec
from autosurgeon.transforms.fuse import CONCAT_GROUPS
from autosurgeon.transforms.open_session import PreparedPlan, open_session
from autosurgeon.transforms.place import build_session_spec, default_device
from autosurgeon.transforms.prune import is_prunable
from autosurgeon.transforms.registry import TransformContext, transform
from autosurgeon.transforms.session import session_options
from runtime.kernels import KernelSelector, QuantizedLinear
from runtime.streaming import DEFAULT_DISK_IO

if TYPE_CHECKING:  # annotations only
    from autosurgeon.zoo import LoadedModel
    from runtime.spec import SessionSpec

logger = get_logger(__name__)

STAGES: tuple[str, ...] = ("place", "fuse", "prune", "quantize", "kernel", "layout")
MARKER = "_autosurgeon_applied"
_QUANTIZED = QUANTIZED_PRECISIONS


@dataclass(frozen=True)
class Step:
    """One transform of a surgery: ``config`` applied to the module at ``fqn``, in stage ``stage``."""

    stage: str
    fqn: str
    config: Any


@dataclass(frozen=True)
class Surgery:
    """The resolved steps of a plan, in application order (``STAGES``)."""

    steps: tuple[Step, ...]

    def stage(self, name: str) -> list[Step]:
        return [s for s in self.steps if s.stage == name]


def resolve_surgery(plan: Plan, space: SearchSpace, *, prune: Mapping[str, float] | None = None,
                    model: nn.Module | None = None) -> Surgery:
    """The steps ``plan`` asks for on the model of ``space`` (module docstring, step 2).

    Args:
        plan: the plan.
        space: the model's SearchSpace on the target device (built with every knob).
        prune: extra structured pruning, ``{fqn or "re:PATTERN": ratio}`` over gate/up/down MLPs (not a
            plan knob yet); needs ``model`` to find the MLPs.
        model: the model (only for ``prune``).
    """
    decisions: dict[str, dict[str, Any]] = {}

    def get(name: str, knob: str) -> Any:
        if name not in decisions:
            decisions[name] = plan.decisions_for(name)
        return decisions[name].get(knob)

    steps: list[Step] = []
    for v in space.variables:
        if v.knob == "placement":
            steps.append(Step("place", v.name, PlaceConfig(get(v.name, "placement") or space.default_placement)))
    fused_member: dict[str, str] = {}  # member leaf -> FQN of the fused linear it became part of
    groups = {g.name: g for g in space.units.groups}
    for v in space.variables:
        if v.knob == "fusion" and get(v.name, "fusion") == "fuse":
            group = groups[v.name]
            steps.append(Step("fuse", v.name, FuseConfig(group.kind)))
            if group.kind in CONCAT_GROUPS:
                fused = f"{v.name}.{CONCAT_GROUPS[group.kind][0]}" if v.name else CONCAT_GROUPS[group.kind][0]
                fused_member.update({m: fused for m in group.members})
    steps += _prune_steps(prune, model)
    quantize: dict[str, tuple[QuantizeConfig, str, str]] = {}  # target -> (config, kernel, first member)
    for v in space.variables:
        if v.knob != "precision":
            continue
        precision = get(v.name, "precision")
        if precision is None:
            if v.name not in fused_member:
                continue  # no decision: the module keeps what it has
            precision = v.choices[0]  # a fused member without one keeps its own: the others must match it
        group_size = (get(v.name, "group_size") or 128) if precision == "int4" else 128
        kernel = (get(v.name, "kernel") or "auto") if precision in _QUANTIZED else "auto"
        target = fused_member.get(v.name, v.name)
        config = QuantizeConfig(precision, group_size)
        if target in quantize:
            if (quantize[target][0], quantize[target][1]) != (config, kernel):
                raise InvalidArgumentError(
                    f"{v.name} and {quantize[target][2]} are fused into {target} but ask for different precision, "
                    f"group size or kernel ({config}, {kernel} vs {quantize[target][0]}, {quantize[target][1]}); "
                    "give the members of a fused group the same decisions.")
            continue
        quantize[target] = (config, kernel, v.name)
    steps += [Step("quantize", t, c) for t, (c, _, _) in quantize.items()]
    steps += [Step("kernel", t, KernelConfig(k)) for t, (c, k, _) in quantize.items()
              if c.precision in _QUANTIZED and k != "auto"]
    for v in space.variables:
        if v.knob == "layout" and get(v.name, "layout") not in (None, "default"):
            steps.append(Step("layout", v.name, LayoutConfig(get(v.name, "layout"))))
    order = {s: i for i, s in enumerate(STAGES)}
    return Surgery(tuple(sorted(steps, key=lambda s: order[s.stage])))  # stable: model order within a stage


def _prune_steps(prune: Mapping[str, float] | None, model: nn.Module | None) -> list[Step]:
    if not prune:
        return []
    if model is None:
        raise InvalidArgumentError("`prune` needs the model to find its MLPs; pass `model`.")
    mlps = [n for n, m in model.named_modules() if n and is_prunable(m)]
    steps: dict[str, Step] = {}
    for target, ratio in prune.items():
        config = PruneConfig(ratio)
        if target.startswith("re:"):
            hits = [n for n in mlps if re.fullmatch(target[3:], n)]
        else:
            hits = [target] if target in mlps else []
        if not hits:
            raise InvalidArgumentError(f"`prune` target {target!r} names no gate/up/down MLP; MLPs of this model: "
                                       f"{', '.join(mlps[:4]) or 'none'}{' ...' if len(mlps) > 4 else ''}.")
        for n in hits:
            steps.setdefault(n, Step("prune", n, config))  # first matching target wins, as in a plan
    return list(steps.values())


def apply_surgery(model: nn.Module, surgery: Surgery, context: TransformContext,
                  *, stages: tuple[str, ...] = STAGES) -> TransformContext:
    """Run ``surgery``'s steps of ``stages`` on ``model`` in order; the context logs what each did."""
    for step in surgery.steps:
        if step.stage in stages:
            transform(model, step.config, fqn=step.fqn, context=context)
    return context


def default_inputs(model: nn.Module, loaded: LoadedModel | None = None) -> dict[str, Any]:
    """Inputs for building the search space: a LoadedModel's example, or token ids for a language model."""
    if loaded is not None:
        return loaded.example_inputs(1, 16)
    if getattr(getattr(model, "config", None), "vocab_size", None):
        return {"input_ids": torch.zeros(1, 8, dtype=torch.long)}
    raise InvalidArgumentError(f"apply_plan needs `inputs` (kwargs for model(**inputs)) to analyse a "
                               f"{type(model).__name__}, or a LoadedModel (which has example_inputs), or `space`.")


def _marker_key(plan: Plan, profile: HardwareProfile, prune: Mapping[str, float] | None) -> str:
    return f"{plan.to_json(indent=None)}|{profile.fingerprint}|{sorted((prune or {}).items())}"


def apply_plan(model: Any, plan: Plan, profile: HardwareProfile, *, inplace: bool = False,
               budgets: Mapping[str, Any] | None = None, check: bool = True, force: bool = False,
               prune: Mapping[str, float] | None = None, inputs: Mapping[str, Any] | None = None,
               space: SearchSpace | None = None, lookahead: int = 2, offload_dir: str | os.PathLike[str] | None = None,
               disk_io: str = DEFAULT_DISK_IO, energy_watts: float | None = None, autotune_kernels: bool = False,
               batch: int = 1, kv_context: int = DEFAULT_KV_CONTEXT, kv_batch: int = 1,
               expert_capacity: float | None = None, placement: str = "plan", device: str | None = None,
               reserve_bytes: int = 0, adapt: bool | None = None) -> Any:
    """Apply ``plan`` to ``model`` for ``profile`` and return a ready ``runtime.Session`` (module docstring).

    ``prepare_plan`` (every argument but ``energy_watts``, ``autotune_kernels``, ``batch`` and ``adapt``)
    checks and transforms; ``open_session`` builds the Session. See ``prepare_plan`` for the arguments.

    Args:
        energy_watts: power figure for the Session's energy estimate where no counter is readable.
        autotune_kernels: give each *resident* quantized layer whose plan kernel is ``"auto"`` the fastest
            weight-only kernel by micro-benchmark on its execution device at ``batch`` rows
            (``runtime.kernels.KernelSelector(allow_activation_quant=False)``). Without it (default, no
            benchmark at apply time) ``"auto"`` is the runtime's per-device default; streamed layers always
            keep that default (their weights are not on the device until they run).
        batch: rows per call the kernels are tuned for (``autotune_kernels`` only).
        adapt: retune between steps under memory pressure (``runtime.adapt``); None: the runtime's default.

    Returns:
        A ``runtime.Session`` over the transformed model (``session.model``); close it when done.
    """

    prepared = prepare_plan(model, plan, profile, inplace=inplace, budgets=budgets, check=check, force=force,
                            prune=prune, inputs=inputs, space=space, lookahead=lookahead, offload_dir=offload_dir,
                            disk_io=disk_io, kv_context=kv_context, kv_batch=kv_batch,
                            expert_capacity=expert_capacity, placement=placement, device=device,
                            reserve_bytes=reserve_bytes)
    session = open_session(prepared, energy_watts=energy_watts, adapt=adapt)
    if autotune_kernels:
        _autotune(session.model, batch=batch)
    return session


# long: the five steps of the module docstring in order, each needing the state of the one before
def prepare_plan(model: Any, plan: Plan, profile: HardwareProfile | str, *, inplace: bool = False,
                 budgets: Mapping[str, Any] | None = None, check: bool = True, force: bool = False,
                 prune: Mapping[str, float] | None = None, inputs: Mapping[str, Any] | None = None,
                 space: SearchSpace | None = None, lookahead: int = 2,
                     offload_dir: str | os.PathLike[str] | None = None,
                 disk_io: str = DEFAULT_DISK_IO, kv_context: int = DEFAULT_KV_CONTEXT, kv_batch: int = 1,
                 expert_capacity: float | None = None, placement: str = "plan",
                 device: str | None = None, reserve_bytes: int = 0) -> Any:
    """Check ``plan``, transform ``model`` and return a ``PreparedPlan`` (model, spec, session options).

    Args:
        model: an ``nn.Module`` or a ``zoo.LoadedModel``; left untouched unless ``inplace=True``.
        plan: the plan.
        profile: a ``HardwareProfile`` or anything ``hardware.resolve_profile`` accepts.
        inplace: transform ``model`` itself (no copy: for models too large to copy). Plan problems are
            still found before anything changes.
        budgets: the memory budget for ``check_plan`` and the Session: a ``MemoryBudget``, its text
            (``"gpu=3GiB"``, ``"25%"``) or tier -> bytes; None (default): the plan's own ``Plan.budgets``, so a
            plan made under a budget is run under it.
        check: run ``check_plan`` first (default; skipping it is for callers that just checked).
        force: fingerprint mismatches become warnings.
        prune: extra MLP pruning ``{fqn or "re:PATTERN": ratio}`` (see ``transforms/prune.py``).
        inputs: ``model(**inputs)`` for analysing a bare module (default: token ids for a language model).
        space: the model's SearchSpace on ``profile`` built with every knob (built when None).
        lookahead, offload_dir, disk_io: the Session's streaming options (``runtime.spec.SessionSpec``); a
            ``prefetch_depth`` in the plan's session overrides ``lookahead``.
        kv_context, kv_batch: the workload a ``kv_budget`` share in the plan's session is of (positions cached
            at a decode step, sequences); see ``transforms/session.py``.
        expert_capacity: expert cache slots when the plan streams experts (share or count; None: 0.25).
        placement: ``"plan"`` (default): blocks run where the plan places them; ``"fit"``: the plan leaves
            placement open and the runtime's default placement fits the transformed model's exact bytes into
            the budget (``transforms/fit_placement.py``: what ``autosurgeon run`` without ``--plan`` does).
        device: with ``placement="fit"``, the execution device (``"cpu"``, ``"cuda:N"``; default: the
            profile's default unit).
        reserve_bytes: with ``placement="fit"``, bytes of the execution tier the fitted placement leaves free
            (``autosurgeon run``: the captured decode's static KV cache, ``runtime.decode_graph.static_kv_nbytes``).

    Raises:
        PlanCheckError: the plan has problems (all listed); the model is untouched.
        UnsupportedTransformError: a decision the runtime cannot carry out here (a DLA placement, a GPU
            placement without CUDA, mixed packed/unpacked streaming); the model is untouched.
    """

    if not isinstance(plan, Plan):
        raise InvalidArgumentError(f"`plan` must be an autosurgeon.plan.Plan, got {type(plan).__name__}.")
    if placement not in ("plan", "fit"):
        raise InvalidArgumentError(f"`placement` must be 'plan' or 'fit', got {placement!r}.")
    if not isinstance(profile, HardwareProfile):
        profile = resolve_profile(profile)
    loaded = None
    if not isinstance(model, nn.Module):
        if not isinstance(getattr(model, "model", None), nn.Module):
            raise InvalidArgumentError(f"`model` must be an nn.Module or a LoadedModel, got {type(model).__name__}.")
        loaded, model = model, model.model
    fit = placement == "fit"
    key = _marker_key(plan, profile, prune) + ("|fit" if fit else "")
    marker = getattr(model, MARKER, None)
    if plan.session.get("prefetch_depth") is not None:
        lookahead = int(plan.session["prefetch_depth"])  # the plan decides the streaming lookahead
    if marker is not None:
        if marker["key"] != key:
            raise InvalidArgumentError(
                f"this {type(model).__name__} was already transformed by another plan (or for another device); "
                "plans apply to the unmodified model — apply_plan deep-copies it unless inplace=True.")
        surgery = marker["surgery"]  # checked when first applied; every handler now finds its target state
        limits = marker["budgets"] if budgets is None else resolve_budget(None, budgets)
    else:
        if space is None:
            space = SearchSpace.build(loaded if loaded is not None else model, profile,
                                      inputs=inputs if inputs is not None else default_inputs(model, loaded),
                                      knobs=KNOBS)
        limits = resolve_budget(space, plan.budgets if budgets is None else budgets, lookahead=lookahead)
        if check:  # a fitted placement is within the budget by construction (exact bytes), so not priced here
            raise_for_problems(check_plan(model, plan, profile, space=space, budgets=None if fit else limits,
                                          force=force, lookahead=lookahead, kv_context=kv_context,
                                          kv_batch=kv_batch))
        surgery = resolve_surgery(plan, space, prune=prune, model=model)
        if fit:
            surgery = Surgery(tuple(s for s in surgery.steps if s.stage != "place"))

    # Record placements and packed layouts, and build the spec: all before the model is touched.
    context = TransformContext(profile=profile)
    record_only = [s for s in surgery.steps
                   if s.stage == "place" or (s.stage == "layout" and s.config.layout == "packed")]
    apply_surgery(model, Surgery(tuple(record_only)), context)
    offload = None if offload_dir is None else os.fspath(offload_dir)
    spec = None
    if not fit:
        spec = build_session_spec(model, context, budgets=limits, lookahead=lookahead, offload_dir=offload,
                                  disk_io=disk_io)
        _check_devices(spec, profile)
        exec_device = spec.block(0).device if spec.blocks else spec.rest_spec.device
    else:
        exec_device = device or default_device(profile)

    target = model if inplace else copy.deepcopy(model)
    recorded = {id(s) for s in record_only}
    rest = Surgery(tuple(s for s in surgery.steps if id(s) not in recorded))
    apply_surgery(target, rest, context)
    setattr(target, MARKER, {"key": key, "surgery": surgery, "budgets": limits})
    applied = sum(1 for *_, what in context.log if what == "applied")
    logger.info("plan applied to %s: %d steps applied, %d already in place", type(target).__name__, applied,
                len(context.log) - applied)
    options = session_options(plan.session, target, exec_device=exec_device, kv_context=kv_context,
                              kv_batch=kv_batch, task=getattr(loaded, "task", None),
                              expert_capacity=EXPERT_CAPACITY if expert_capacity is None else expert_capacity)
    for note in options.notes:
        logger.info("plan session: %s", note)
    if fit:
        spec = fit_spec(target, options, device=exec_device, budgets=limits or {}, lookahead=lookahead,
                        offload_dir=offload, disk_io=disk_io, reserve=reserve_bytes)
    return PreparedPlan(target.eval(), spec, options)


def _autotune(model: nn.Module, *, batch: int) -> dict[str, str]:
    """Fastest weight-only kernel for every resident QuantizedLinear left on ``"auto"`` (kernel None)."""

    selector = KernelSelector(allow_activation_quant=False)
    chosen = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantizedLinear) and module.kernel is None and module.qweight.device.type != "meta":
            module.kernel = chosen[name] = selector.choose(module.quantized_weight(), batch=batch).name
            module.release_prepared()
    logger.info("kernels tuned for %d resident quantized layers at batch %d", len(chosen), batch)
    return chosen


def _check_devices(spec: SessionSpec, profile: HardwareProfile) -> None:
    """A plan for a GPU needs one here; say so before anything is touched."""
    devices = {b.device for b in (*spec.blocks, spec.rest_spec)}
    cuda = sorted(d for d in devices if d.startswith("cuda"))
    if not cuda:
        return
    if not torch.cuda.is_available():
        raise UnsupportedTransformError(
            f"the plan runs blocks on {', '.join(cuda)} (profile {profile.name!r}), but no CUDA device is visible "
            "here; apply it on that device, or evaluate it analytically (a profile on paper).")
    count = torch.cuda.device_count()
    missing = [d for d in cuda if (int(d.split(":")[1]) if ":" in d else 0) >= count]
    if missing:
        raise UnsupportedTransformError(f"the plan uses {', '.join(missing)} but only {count} CUDA device(s) are "
                                        "visible here.")


def session_from_plan(model: Any, plan: Plan | str | os.PathLike[str], *, profile: Any = "local",
                      budgets: Mapping[str, Any] | None = None, force: bool = False, lookahead: int = 2,
                      offload_dir: str | None = None, energy_watts: float | None = None,
                      session: Mapping[str, Any] | None = None, kv_context: int = DEFAULT_KV_CONTEXT,
                      kv_batch: int = 1, expert_capacity: float | None = None) -> Any:
    """What ``autosurgeon run --plan FILE`` calls: load the plan, apply it in place, return the Session.

    In place because the CLI loaded the model for this run only (no second copy of the weights).
    ``session`` overrides the plan's session decisions knob by knob (the CLI's ``--kv-*``/``--prefetch``
    flags); the merged plan is checked as a whole. ``kv_context``/``kv_batch``: the workload a ``kv_budget``
    share is of (``autosurgeon run``: prompt + new tokens - 1 positions, one sequence).
    """
    if not isinstance(plan, Plan):
        plan = Plan.load(plan)
    if session:
        from dataclasses import replace

        plan = replace(plan, session={**plan.session, **session})
    return apply_plan(model, plan, profile, inplace=True, budgets=budgets, force=force, lookahead=lookahead,
                      offload_dir=offload_dir, energy_watts=energy_watts, kv_context=kv_context, kv_batch=kv_batch,
                      expert_capacity=expert_capacity)


__all__ = ["MARKER", "STAGES", "Step", "Surgery", "apply_plan", "apply_surgery", "default_inputs",
           "prepare_plan", "resolve_surgery", "session_from_plan"]
