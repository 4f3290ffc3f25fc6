"""Place transform: placement decisions -> the runtime's ``BlockSpec``s, and the ``SessionSpec`` from them.

``PlaceConfig("EXEC<-HOME")`` on a block records ``BlockSpec(device, home)`` in the context; it does not
touch the module (where weights live is the Session's business). ``gpu`` runs on the profile's first GPU
unit (``cuda:N``), ``cpu`` on the host; ``<-cpu``/``<-disk`` is the home tier the block streams from, none
means resident. ``dla`` is plan-on-paper only (the runtime has no DLA backend): refused here.

``build_session_spec`` turns the recorded placements into a ``SessionSpec``: one BlockSpec per block of
the runtime's block list (``runtime.session.find_blocks``: the ModuleList holding the most parameters),
the modules outside the blocks resident on the profile's default unit, ``weight_format=None`` everywhere
(precision is the quantize transform's job, per layer), and the streaming granularity from the ``packed``
layouts. A model without a ModuleList (a small CNN) runs with its first ``nn.Sequential`` standing in as
the block list; then every planned block outside that list must be resident on the default unit.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import nn

from autosurgeon.errors import InvalidArgumentError, UnsupportedTransformError
from autosurgeon.knobs import placement_parts
from autosurgeon.multi.devices import runtime_device
from autosurgeon.transforms.configs import PlaceConfig
from autosurgeon.transforms.registry import TransformContext, register_transform
from runtime.errors import JalapenoError
from runtime.session import find_blocks
from runtime.spec import BlockSpec, SessionSpec
from runtime.streaming import DEFAULT_DISK_IO

if TYPE_CHECKING:  # annotations only
    from autosurgeon.hardware.profile import HardwareProfile


def gpu_device(profile: HardwareProfile) -> str:
    """``cuda:N`` of the profile's first GPU unit (``cuda:0`` without a profile)."""
    if profile is None:
        return "cuda:0"
    for unit in profile.units:
        if unit.kind == "gpu":
            return unit.name if unit.name.startswith("cuda") else "cuda:0"
    raise UnsupportedTransformError(f"profile {profile.name!r} has no GPU unit; a 'gpu' placement cannot run on it.")


def default_device(profile: HardwareProfile) -> str:
    """Execution device of modules no placement names: the profile's default unit."""
    if profile is None:
        return "cpu"
    return gpu_device(profile) if profile.default_unit().kind == "gpu" else "cpu"


def block_spec(placement: str, profile: HardwareProfile, *, fqn: str = "block") -> BlockSpec:
    """The BlockSpec a placement means on ``profile``; ``dla`` refused (see the module docstring)."""
    unit, home = placement_parts(placement)
    if unit == "dla":
        raise UnsupportedTransformError(
            f"{fqn}: placement 'dla' is plan-on-paper only: the runtime has no DLA backend, so this plan can be "
            "evaluated analytically but not applied. Place the block on 'gpu' or 'cpu' to run it.")
    if unit.startswith("gpu:"):  # one GPU of several (autosurgeon.multi.devices)
        try:
            device = runtime_device(profile, unit)
        except InvalidArgumentError as exc:
            raise UnsupportedTransformError(f"{fqn}: placement {placement!r}: {exc}") from None
    else:
        device = gpu_device(profile) if unit == "gpu" else "cpu"
    return BlockSpec(device=device, home=home)


@register_transform(PlaceConfig)
def place(module: nn.Module, config: PlaceConfig, *, fqn: str, context: TransformContext) -> nn.Module:
    """Record where block ``fqn`` runs and where its weights live; the module is not changed."""
    entry = (config.placement, block_spec(config.placement, context.profile, fqn=fqn))
    if context.placements.get(fqn) == entry:
        context.skipped(fqn, config)
    context.placements[fqn] = entry
    return module


def block_path(model: nn.Module) -> str:
    """Dotted path of the list of blocks the Session will use (see the module docstring)."""

    try:
        return find_blocks(model)[0]
    except JalapenoError:
        pass
    for name, module in model.named_modules():
        if name and isinstance(module, (nn.Sequential, nn.ModuleList)) and len(module):
            return name
    raise UnsupportedTransformError(f"{type(model).__name__} has no nn.ModuleList or nn.Sequential of blocks; the "
                                    "runtime Session needs one.")


def build_session_spec(model: nn.Module, context: TransformContext, *, budgets: Mapping[str, Any] | None = None,
                       lookahead: int = 2, offload_dir: str | None = None, disk_io: str = DEFAULT_DISK_IO,
                       path: str | None = None) -> SessionSpec:
    """The SessionSpec of the placements and packed layouts recorded in ``context`` (module docstring)."""

    path = path or block_path(model)
    try:
        _, blocks = find_blocks(model, path)
    except JalapenoError as exc:
        raise InvalidArgumentError(str(exc)) from None
    rest = BlockSpec(device=default_device(context.profile))
    names = [f"{path}.{i}" for i in range(len(blocks))]
    specs = [context.placements[n][1] if n in context.placements else rest for n in names]
    outside = [f"{n} ({p})" for n, (p, s) in context.placements.items() if n not in names and s != rest]
    if outside:
        raise UnsupportedTransformError(
            f"placements {', '.join(outside)} name blocks outside the runtime's block list {path!r}; the runtime "
            f"runs modules outside it resident on {rest.device}. Place them '{_name_of(rest)}' or restructure the "
            "model's blocks into an nn.ModuleList.")
    streamed = {n for n, s in zip(names, specs) if s.streamed}
    packed = set(context.packed)
    if packed and packed != streamed:
        raise UnsupportedTransformError(
            "the runtime streams all blocks of a session at one granularity (SessionSpec.granularity): layout "
            f"'packed' must be given to every streamed block or to none; packed: {sorted(packed) or 'none'}, "
            f"streamed without packed: {sorted(streamed - packed) or 'none'}.")
    try:
        return SessionSpec(blocks=tuple(specs), default=rest, rest=rest, budgets=dict(budgets or {}),
                           lookahead=lookahead, granularity="block" if packed else "module", block_path=path,
                           offload_dir=offload_dir, disk_io=disk_io)
    except JalapenoError as exc:
        raise InvalidArgumentError(str(exc)) from None


def _name_of(spec: BlockSpec) -> str:
    return "gpu" if spec.device.startswith("cuda") else "cpu"


__all__ = ["block_path", "block_spec", "build_session_spec", "default_device", "gpu_device", "place"]
