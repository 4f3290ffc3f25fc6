"""SearchSpace variables and how they are made from a model's units and a device profile.

Split from ``space.py`` (which holds the encoding, masks under a vector, repair, sampling and I/O): this
module decides *which* variables exist and their static masks, following the rules in the module
docstring of ``space.py`` and the device rules of ``space_masks.py``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from autosurgeon.errors import InvalidArgumentError
from autosurgeon.knobs import FUSIONS, GROUP_SIZES, LAYOUTS, PLACEMENTS, PRECISIONS, placement_kind
from autosurgeon.multi.devices import device_placements
from autosurgeon.space.masks import (
    default_placement,
    group_size_reason,
    kernel_names,
    kernel_reason,
    layer_precision_reason,
    placement_reason,
    placement_units,
    precision_reason,
)
from autosurgeon.space.units import PRECISION_KINDS, BlockRecord, LeafRecord, UnitTable

if TYPE_CHECKING:  # annotations only
    from autosurgeon.hardware.profile import HardwareProfile

KNOB_ORDER: tuple[str, ...] = ("placement", "precision", "group_size", "kernel", "layout", "fusion")
DEFAULT_GROUP_SIZE = 128  # runtime default (QuantizedLinear, BlockSpec)
FEATURE_KINDS: tuple[str, ...] = ("linear", "conv", "embedding", "block", "group")


@dataclass(frozen=True)
class Variable:
    """One decision: a knob of one module.

    Attributes:
        name: module FQN the decision is keyed by in a plan.
        knob: the knob ("precision", "placement", ...).
        choices: the knob's values, index 0 the unmodified model's choice.
        mask: static validity of each choice for this module on this device.
        reasons: str(choice) -> why it is masked (every masked choice has one; string keys, as in JSON).
        kind: unit kind for features ("linear", "conv", "embedding", "block", "group").
        parent: index of the variable this one depends on (precision/layout: the block's placement;
            group_size/kernel: the precision), or None.
        members: fusion only: indices of the members' precision, group_size and kernel variables.
        by_exec: precision only: execution-unit kind -> (mask, reasons) on that unit.
    """

    name: str
    knob: str
    choices: tuple[Any, ...]
    mask: tuple[bool, ...]
    reasons: Mapping[str, str] = field(default_factory=dict)
    kind: str = "linear"
    parent: int | None = None
    members: tuple[int, ...] = ()
    by_exec: Mapping[str, tuple[tuple[bool, ...], Mapping[str, str]]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.choices)

    def index(self, value: Any) -> int:
        """Index of ``value`` among the choices; InvalidArgumentError naming module, knob and choices otherwise."""
        try:
            return self.choices.index(value)
        except ValueError:
            raise InvalidArgumentError(
                f"{self.name}: `{self.knob}` {value!r} is not a choice of this space; choices are "
                f"{', '.join(map(str, self.choices))}.") from None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "knob": self.knob, "choices": list(self.choices), "mask": list(self.mask),
                "reasons": dict(self.reasons), "kind": self.kind, "parent": self.parent,
                "members": list(self.members),
                "by_exec": {k: [list(m), dict(r)] for k, (m, r) in self.by_exec.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Variable:
        return cls(name=d["name"], knob=d["knob"], choices=tuple(d["choices"]), mask=tuple(d["mask"]),
                   reasons=dict(d["reasons"]), kind=d["kind"], parent=d["parent"], members=tuple(d["members"]),
                   by_exec={k: (tuple(m), dict(r)) for k, (m, r) in d["by_exec"].items()})


def _first(value: Any, values: Sequence[Any]) -> tuple[Any, ...]:
    """``values`` reordered so that ``value`` comes first (the unmodified choice at index 0)."""
    return (value, *(v for v in values if v != value))


class VariableBuilder:
    """Makes the variables of one (units, profile, knobs) triple; see the module docstring for the rules."""

    def __init__(self, units: UnitTable, profile: HardwareProfile, knobs: tuple[str, ...]) -> None:
        self.units, self.profile, self.knobs = units, profile, knobs
        self.exec_units = {k: u for k, u in placement_units(profile).items() if u is not None}
        self.default = default_placement(profile)
        self.kernels = kernel_names()
        self.kernel_table: dict[str, dict[str, list[str]]] = {}
        self.kernel_reasons: dict[str, dict[str, dict[str, str]]] = {}
        for kind, unit in self.exec_units.items():
            for p in PRECISIONS:
                ok, why = [], {}
                for k in self.kernels:
                    reason = kernel_reason(k, p, unit, profile)
                    if reason is None:
                        ok.append(k)
                    else:
                        why[k] = reason
                self.kernel_table.setdefault(kind, {})[p] = ok
                self.kernel_reasons.setdefault(kind, {})[p] = why

    def variables(self) -> list[Variable]:
        staged: dict[str, list[tuple[int, Variable]]] = {k: [] for k in KNOB_ORDER}
        leaves = self.units.leaves
        placement_of: dict[str, Variable] = {}
        if "placement" in self.knobs:
            for b in self.units.blocks:
                if b.is_block:
                    v = self._placement(b)
                    placement_of[b.name] = v
                    staged["placement"].append((b.position, v))
        precision_of: dict[str, Variable] = {}
        for name, leaf in leaves.items():
            if leaf.kind not in PRECISION_KINDS or not leaf.weight_numel:
                continue
            parent = placement_of.get(leaf.block)
            if "precision" in self.knobs:
                v = self._precision(leaf, parent)
                precision_of[name] = v
                staged["precision"].append((leaf.position, v))
            quantizable = layer_precision_reason("int4", leaf.kind, leaf.module_class, tied_to=leaf.tied_to) is None
            if quantizable and "group_size" in self.knobs:
                staged["group_size"].append((leaf.position, self._group_size(leaf)))
            if quantizable and "kernel" in self.knobs:
                staged["kernel"].append((leaf.position, self._kernel(leaf, precision_of.get(name), parent)))
            if leaf.kind == "conv" and "layout" in self.knobs:
                staged["layout"].append((leaf.position, self._layout(name, "conv", None)))
        if "layout" in self.knobs:
            for b in self.units.blocks:
                if b.is_block:
                    staged["layout"].append((b.position, self._layout(b.name, "block", placement_of.get(b.name))))
        if "fusion" in self.knobs:
            for g in self.units.groups:
                staged["fusion"].append((leaves[g.members[0]].position, Variable(
                    name=g.name, knob="fusion", choices=FUSIONS, mask=(True, True), kind="group",
                    members=(), reasons={})))
        # Order: knob stage, then model position; then resolve parent references to indices.
        ordered: list[Variable] = []
        for knob in KNOB_ORDER:
            ordered += [v for _, v in sorted(staged[knob], key=lambda t: t[0])]
        index = {(v.name, v.knob): i for i, v in enumerate(ordered)}
        out = []
        groups = {g.name: g for g in self.units.groups}
        for v in ordered:
            parent = None
            members: tuple[int, ...] = ()
            if v.knob in ("precision",):
                block = leaves[v.name].block
                parent = index.get((block, "placement"))
            elif v.knob in ("group_size", "kernel"):
                parent = index.get((v.name, "precision"))
            elif v.knob == "layout" and v.kind == "block":
                parent = index.get((v.name, "placement"))
            elif v.knob == "fusion":
                g = groups[v.name]
                if g.kind != "conv-bn":  # concatenated weights share one precision, group size and kernel
                    members = tuple(i for k in ("precision", "group_size", "kernel") for m in g.members
                                    if (i := index.get((m, k))) is not None)
            out.append(Variable(name=v.name, knob=v.knob, choices=v.choices, mask=v.mask, reasons=v.reasons,
                                kind=v.kind, parent=parent, members=members, by_exec=v.by_exec))
        return out

    # ---- one variable per knob kind
    def _reachable(self, parent: Variable | None) -> list[str]:
        """Execution-unit kinds a leaf can run on: its block's valid placements, else the default unit."""
        if parent is None:
            return [placement_kind(self.default)]
        kinds = [placement_kind(c) for c, ok in zip(parent.choices, parent.mask) if ok]
        return list(dict.fromkeys(kinds))

    def _placement(self, block: BlockRecord) -> Variable:
        choices = _first(self.default, PLACEMENTS + device_placements(self.profile))  # + gpu:N on several GPUs
        reasons = {c: r for c in choices if (r := placement_reason(c, self.profile)) is not None}
        if not block.runtime_block:
            # The runtime places and streams only the blocks of its block list (one nn.ModuleList, see
            # runtime.session.find_blocks); every other module runs resident on the default unit.
            for c in choices[1:]:
                reasons.setdefault(c, f"{block.name} is not in the runtime's block list (runtime.session."
                                      "find_blocks), so it runs resident on the default unit")
        return Variable(name=block.name, knob="placement", choices=choices,
                        mask=tuple(c not in reasons for c in choices), reasons=reasons, kind="block")

    def _precision(self, leaf: LeafRecord, parent: Variable | None) -> Variable:
        original = leaf.dtype if leaf.dtype in PRECISIONS else "float32"
        choices = _first(original, PRECISIONS)
        by_exec: dict[str, tuple[tuple[bool, ...], dict[str, str]]] = {}
        for kind, unit in self.exec_units.items():
            why = {c: r for c in choices if (r := precision_reason(c, unit, self.profile)) is not None}
            by_exec[kind] = (tuple(c not in why for c in choices), why)
        reachable = self._reachable(parent)
        reasons: dict[str, str] = {}
        for c in choices:
            layer = layer_precision_reason(c, leaf.kind, leaf.module_class, tied_to=leaf.tied_to)
            if layer is not None:
                reasons[c] = f"{leaf.name} ({leaf.kind}): {layer}"
                continue
            if not any(by_exec[k][0][choices.index(c)] for k in reachable if k in by_exec):
                details = "; ".join(by_exec[k][1].get(c, "") for k in reachable if k in by_exec)
                reasons[c] = f"{c} is not available on {self.profile.name}: {details}"
        kind = leaf.kind if leaf.kind in FEATURE_KINDS else "linear"
        return Variable(name=leaf.name, knob="precision", choices=choices,
                        mask=tuple(c not in reasons for c in choices), reasons=reasons, kind=kind, by_exec=by_exec)

    def _group_size(self, leaf: LeafRecord) -> Variable:
        choices = _first(DEFAULT_GROUP_SIZE, GROUP_SIZES)
        reasons = {str(g): r for g in choices if (r := group_size_reason(g, leaf.in_features)) is not None}
        return Variable(name=leaf.name, knob="group_size", choices=choices,
                        mask=tuple(str(g) not in reasons for g in choices),
                        reasons={k: f"{leaf.name}: {r}" for k, r in reasons.items()}, kind="linear")

    def _kernel(self, leaf: LeafRecord, precision: Variable | None, parent: Variable | None) -> Variable:
        choices = self.kernels
        precisions = [c for c, ok in zip(precision.choices, precision.mask) if ok] if precision else list(PRECISIONS)
        ok: set[str] = {"auto"}
        for kind in self._reachable(parent):
            for p in precisions:
                ok.update(self.kernel_table.get(kind, {}).get(p, ()))
        reasons = {k: f"{leaf.name}: no precision/unit of {self.profile.name} this layer can take runs kernel {k}"
                   for k in choices if k not in ok}
        return Variable(name=leaf.name, knob="kernel", choices=choices, mask=tuple(k in ok for k in choices),
                        reasons=reasons, kind="linear")

    def _layout(self, name: str, kind: str, parent: Variable | None) -> Variable:
        reasons = {}
        for c in LAYOUTS[1:]:
            if kind == "conv" and c != "channels_last":
                reasons[c] = f"{name}: layout {c} applies to blocks, not convs"
            if kind == "block" and c != "packed":
                reasons[c] = f"{name}: layout {c} applies to convs, not blocks"
            if kind == "block" and c == "packed" and (parent is None or not any(
                    "<-" in p and ok for p, ok in zip(parent.choices, parent.mask))):
                reasons[c] = f"{name}: packed applies to streamed blocks and this block cannot stream"
        return Variable(name=name, knob="layout", choices=LAYOUTS, mask=tuple(c not in reasons for c in LAYOUTS),
                        reasons=reasons, kind="block" if kind == "block" else "conv")
