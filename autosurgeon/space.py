"""SearchSpace: one integer encoding of every surgery decision, shared by every proposer.

A plan is a flat vector ``x`` with one entry per *variable* — one (module FQN, knob) pair — and
``0 <= x[i] < nvec[i]``. Each variable's choices are the knob's whole vocabulary (``autosurgeon.knobs``)
reordered so that index 0 is the unmodified model's choice (its dtype, resident on the profile's default
unit, kernel ``auto``, group 128, no fusion, default layout); validity is carried by masks, so the same
model gets the same ``nvec`` on every device and a policy's action space does not change shape.

Variables (``knobs`` picks which kinds exist; default precision and placement):

* ``precision`` per linear/conv leaf, and per embedding (float choices only: the runtime has no quantized
  embedding). A tied weight (a head sharing the embedding's weight) gets no variable: it follows its owner.
  A head that owns its weight (``lm_head`` untied) may be quantized: it is a plain ``nn.Linear`` that
  ``QuantizedLinear`` replaces (note: ``SessionSpec.weight_format`` alone never quantizes it; the
  transforms do);
* ``placement`` per block (analysis blocks of kind "block"); the rest stays resident on the default unit;
* ``group_size`` and ``kernel`` per linear that can be quantized;
* ``layout`` per conv (``channels_last``) and per block (``packed``: stream the block as one unit);
* ``fusion`` per fusible group (conv+bn, q/k/v, gate/up; linear+activation is not offered: the runtime
  has no fused linear-activation kernel and the analysis does not record which activation follows).

Masks. A *static* mask per variable marks the choices valid for that layer on some unit it can run on
(rules and reasons in ``space_masks.py``). *Conditional* rules tie variables together and are resolved in
variable order (placement, precision, group_size, kernel, layout, fusion — every rule looks only
backwards): a precision must be valid on the execution unit its block's placement picks; ``group_size``
is meaningful only for int4 and ``kernel`` only for a quantized precision (otherwise index 0, their
canonical value); ``packed`` needs a streamed placement; a fused q/k/v or gate/up group needs its members
to share precision, group size and kernel. ``allowed(x)`` gives the masks under the current ``x``.

``repair(x)`` walks the variables in order and replaces each invalid entry by its *nearest* valid choice:
for precision the one closest in bits per weight (log scale), ties to the choice nearer index 0 (the
safer, unmodified side); for other knobs the nearest index, ties to the lower index. Out-of-range entries
are clipped first. Deterministic, and a valid ``x`` is returned unchanged, so ``repair`` is idempotent.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from autosurgeon._logging import get_logger
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.knobs import FUSIONS, GROUP_SIZES, KNOBS, LAYOUTS, PLACEMENTS, PRECISIONS
from autosurgeon.plan import Plan, model_fingerprint
from autosurgeon.space_masks import (
    FLOAT_PRECISIONS,
    PRECISION_BITS,
    default_placement,
    group_size_reason,
    kernel_names,
    kernel_reason,
    layer_precision_reason,
    placement_reason,
    placement_units,
    precision_reason,
)
from autosurgeon.space_units import PRECISION_KINDS, BlockRecord, LeafRecord, UnitTable, build_units

logger = get_logger(__name__)

SPACE_TYPE = "autosurgeon.SearchSpace"
SPACE_VERSION = 1
DEFAULT_KNOBS: tuple[str, ...] = ("precision", "placement")
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
        reasons: choice -> why it is masked (every masked choice has one).
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


class SearchSpace:
    """The decision variables of one model on one device; see the module docstring.

    Build with :meth:`build`; load a saved definition with :meth:`from_dict`.
    """

    def __init__(self, *, variables: Sequence[Variable], units: UnitTable, knobs: Sequence[str],
                 model_fingerprint: str | None, device_fingerprint: str | None, device_name: str,
                 default_placement: str, kernel_table: Mapping[str, Mapping[str, Sequence[str]]],
                 kernel_reasons: Mapping[str, Mapping[str, Mapping[str, str]]] | None = None) -> None:
        self.variables: tuple[Variable, ...] = tuple(variables)
        self.units = units
        self.knobs = tuple(knobs)
        self.model_fingerprint = model_fingerprint
        self.device_fingerprint = device_fingerprint
        self.device_name = device_name
        self.default_placement = default_placement
        self.kernel_table = {e: {p: tuple(ks) for p, ks in t.items()} for e, t in kernel_table.items()}
        self.kernel_reasons = {e: {p: dict(r) for p, r in t.items()} for e, t in (kernel_reasons or {}).items()}
        self._index = {(v.name, v.knob): i for i, v in enumerate(self.variables)}
        self.nvec = np.array([v.n for v in self.variables], dtype=np.int64)

    # ------------------------------------------------------------------------------------------ build
    @classmethod
    def build(cls, model: Any, profile: Any, *, inputs: Mapping[str, Any] | None = None,
              analysis: Any | None = None, knobs: Iterable[str] = DEFAULT_KNOBS,
              phase: str = "prefill") -> SearchSpace:
        """Derive the space of ``model`` on ``profile`` from its analysis.

        Args:
            model: an ``nn.Module`` (real or meta weights) or a ``zoo.LoadedModel``.
            profile: a ``HardwareProfile``, or anything ``hardware.resolve_profile`` accepts.
            inputs: ``model(**inputs)`` for the analysis; default for a LoadedModel:
                ``example_inputs(1, 16)``.
            analysis: a ``ModelAnalysis`` already made (skips the forward pass).
            knobs: which knob kinds get variables (``precision``, ``placement``, ``group_size``, ``kernel``,
                ``fusion``, ``layout``).
            phase: analysis phase when ``analysis`` is not given.
        """
        from autosurgeon.analysis import analyze
        from autosurgeon.hardware import resolve_profile
        from autosurgeon.hw_profile import HardwareProfile

        knobs = tuple(dict.fromkeys(knobs))
        unknown = [k for k in knobs if k not in KNOBS]
        if unknown or not knobs:
            raise InvalidArgumentError(f"`knobs` must be a non-empty subset of {', '.join(KNOBS)}, got {list(knobs)}.")
        if not isinstance(profile, HardwareProfile):
            profile = resolve_profile(profile)
        loaded = None
        if not isinstance(model, nn.Module):
            if not isinstance(getattr(model, "model", None), nn.Module):
                raise InvalidArgumentError(
                    f"`model` must be an nn.Module or a LoadedModel, got {type(model).__name__}.")
            loaded, model = model, model.model
        if analysis is None:
            if inputs is None:
                if loaded is None:
                    raise InvalidArgumentError(
                        "SearchSpace.build needs `inputs` (kwargs for model(**inputs)) or `analysis` for a bare "
                        "nn.Module; pass a LoadedModel to use its example_inputs().")
                inputs = loaded.example_inputs(1, 16)
            analysis = analyze(model, dict(inputs), phase=phase)
        units = build_units(model, analysis)
        builder = _Builder(units, profile, knobs)
        variables = builder.variables()
        space = cls(variables=variables, units=units, knobs=knobs, model_fingerprint=model_fingerprint(model),
                    device_fingerprint=profile.fingerprint, device_name=profile.name,
                    default_placement=default_placement(profile), kernel_table=builder.kernel_table,
                    kernel_reasons=builder.kernel_reasons)
        logger.info("search space of %s on %s: %d variables, log10 size %.1f", type(model).__name__, profile.name,
                    len(variables), space.log10_size())
        return space

    # ------------------------------------------------------------------------------------------ views
    def __len__(self) -> int:
        return len(self.variables)

    @property
    def leaves(self) -> dict[str, LeafRecord]:
        return self.units.leaves

    @property
    def blocks(self) -> tuple[BlockRecord, ...]:
        return self.units.blocks

    def variable(self, name: str, knob: str) -> Variable | None:
        i = self._index.get((name, knob))
        return None if i is None else self.variables[i]

    def index_of(self, name: str, knob: str) -> int | None:
        return self._index.get((name, knob))

    def masks(self) -> list[np.ndarray]:
        """Static masks, one bool array per variable."""
        return [np.array(v.mask, dtype=bool) for v in self.variables]

    def log10_size(self, *, valid_only: bool = True) -> float:
        """log10 of the number of vectors (static masks, ignoring conditional rules, when ``valid_only``)."""
        counts = [sum(v.mask) if valid_only else v.n for v in self.variables]
        return float(sum(math.log10(c) for c in counts if c > 0))

    def default_vector(self) -> np.ndarray:
        """The unmodified model: every index 0."""
        return np.zeros(len(self.variables), dtype=np.int64)

    def check_vector(self, x: Any) -> np.ndarray:
        """``x`` as an int64 array of the right length and ranges; InvalidArgumentError otherwise."""
        arr = np.asarray(x)
        if arr.shape != (len(self.variables),):
            raise InvalidArgumentError(f"`x` must have shape ({len(self.variables)},), got {arr.shape}.")
        if arr.dtype.kind not in "iu":
            if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
                arr = arr.astype(np.int64)
            else:
                raise InvalidArgumentError(f"`x` must hold integers, got dtype {arr.dtype}.")
        arr = arr.astype(np.int64)
        bad = np.nonzero((arr < 0) | (arr >= self.nvec))[0]
        if bad.size:
            i = int(bad[0])
            v = self.variables[i]
            raise InvalidArgumentError(
                f"`x[{i}]` ({v.name} {v.knob}) must be in [0, {v.n}), got {int(arr[i])}; "
                f"{bad.size} entr{'y is' if bad.size == 1 else 'ies are'} out of range (repair() clips them).")
        return arr

    def values(self, x: Any) -> dict[tuple[str, str], Any]:
        """``{(fqn, knob): value}`` of every variable under ``x``."""
        arr = self.check_vector(x)
        return {(v.name, v.knob): v.choices[int(arr[i])] for i, v in enumerate(self.variables)}

    # ------------------------------------------------------------------------------------------ masks
    def exec_kind(self, i: int, x: np.ndarray) -> str:
        """Execution-unit kind of variable ``i`` under ``x`` (via its block's placement, else the default)."""
        v = self.variables[i]
        anchor = v.parent
        if v.knob in ("group_size", "kernel") and anchor is not None:
            anchor = self.variables[anchor].parent
        if anchor is None or self.variables[anchor].knob != "placement":
            return self.default_placement.partition("<-")[0]
        return self.variables[anchor].choices[int(x[anchor])].partition("<-")[0]

    def allowed(self, i: int, x: Any) -> tuple[np.ndarray, dict[str, str]]:
        """Mask and reasons of variable ``i`` given the entries of ``x`` it depends on (all before it)."""
        v = self.variables[i]
        mask = np.array(v.mask, dtype=bool)
        reasons = dict(v.reasons)
        # A placement on a unit the profile lacks is that placement's own problem; its layers are then
        # held to their static masks only (no cascade of follow-on problems).
        if v.knob == "precision" and self.exec_kind(i, x) in v.by_exec:
            kind = self.exec_kind(i, x)
            exec_mask, exec_reasons = v.by_exec[kind]
            for j, c in enumerate(v.choices):
                if mask[j] and not exec_mask[j]:
                    mask[j] = False
                    reasons[c] = exec_reasons.get(c, f"not valid on the {kind} unit")
        elif v.knob == "group_size" and v.parent is not None:
            precision = self.variables[v.parent].choices[int(x[v.parent])]
            if precision != "int4":  # canonical "not applicable": index 0, even where it is masked for int4
                mask[:] = False
                mask[0] = True
                reasons.pop(str(v.choices[0]), None)
                for c in v.choices[1:]:
                    reasons[c] = f"group_size applies to int4 only; {v.name} is {precision}"
        elif v.knob == "kernel" and v.parent is not None and self.exec_kind(i, x) in self.kernel_table:
            precision = self.variables[v.parent].choices[int(x[v.parent])]
            kind = self.exec_kind(i, x)
            ok = set(self.kernel_table.get(kind, {}).get(precision, ("auto",)))
            why = self.kernel_reasons.get(kind, {}).get(precision, {})
            for j, c in enumerate(v.choices):
                if mask[j] and c not in ok:
                    mask[j] = False
                    reasons[c] = why.get(c, f"not a kernel for {precision} on the {kind} unit")
        elif v.knob == "layout" and v.kind == "block" and v.parent is not None:
            placement = self.variables[v.parent].choices[int(x[v.parent])]
            if "<-" not in placement:
                j = v.choices.index("packed")
                if mask[j]:
                    mask[j] = False
                    reasons["packed"] = f"packed applies to streamed blocks; {v.name} is resident ({placement})"
        elif v.knob == "fusion" and v.members:
            by_knob: dict[str, set[Any]] = {}
            for m in v.members:
                mv = self.variables[m]
                by_knob.setdefault(mv.knob, set()).add(mv.choices[int(x[m])])
            if any(len(vals) > 1 for vals in by_knob.values()):
                j = v.choices.index("fuse")
                if mask[j]:
                    mask[j] = False
                    reasons["fuse"] = (f"fused members of {v.name} must share "
                                       f"{', '.join(k for k, vals in by_knob.items() if len(vals) > 1)}")
        return mask, reasons

    def allowed_all(self, x: Any) -> list[np.ndarray]:
        """Conditional masks of every variable under ``x`` (for masked policies)."""
        arr = self.check_vector(x)
        return [self.allowed(i, arr)[0] for i in range(len(self.variables))]

    def is_valid(self, x: Any) -> bool:
        arr = self.check_vector(x)
        return all(self.allowed(i, arr)[0][int(arr[i])] for i in range(len(self.variables)))

    def problems(self, x: Any) -> list[tuple[int, str]]:
        """``[(variable index, reason)]`` for every entry of ``x`` that its (conditional) mask refuses."""
        arr = self.check_vector(x)
        out = []
        for i, v in enumerate(self.variables):
            mask, reasons = self.allowed(i, arr)
            value = v.choices[int(arr[i])]
            if not mask[int(arr[i])]:
                out.append((i, reasons.get(value, "masked")))
        return out

    # ------------------------------------------------------------------------------------------ repair / sample
    def _nearest(self, v: Variable, j: int, mask: np.ndarray) -> int:
        valid = np.nonzero(mask)[0]
        if valid.size == 0:  # cannot happen for spaces built here: index 0 or a float stays valid
            raise InvalidArgumentError(f"{v.name}: no valid `{v.knob}` choice under this plan.")
        if v.knob == "precision":
            bits = math.log2(PRECISION_BITS[v.choices[j]])
            key = lambda k: (abs(math.log2(PRECISION_BITS[v.choices[k]]) - bits), k)  # noqa: E731
        else:
            key = lambda k: (abs(k - j), k)  # noqa: E731
        return int(min(valid, key=key))

    def repair(self, x: Any) -> np.ndarray:
        """The nearest valid vector (module docstring: rule); valid entries are kept, so it is idempotent."""
        arr = np.asarray(x)
        if arr.shape != (len(self.variables),):
            raise InvalidArgumentError(f"`x` must have shape ({len(self.variables)},), got {arr.shape}.")
        out = np.clip(np.rint(arr.astype(np.float64)), 0, self.nvec - 1).astype(np.int64)
        for i, v in enumerate(self.variables):
            mask, _ = self.allowed(i, out)
            if not mask[out[i]]:
                out[i] = self._nearest(v, int(out[i]), mask)
        return out

    def random_vector(self, rng: np.random.Generator) -> np.ndarray:
        """A uniformly drawn valid choice per variable, in variable order (conditional rules respected)."""
        if not isinstance(rng, np.random.Generator):
            raise InvalidArgumentError(
                f"`rng` must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}.")
        out = self.default_vector()
        for i in range(len(self.variables)):
            valid = np.nonzero(self.allowed(i, out)[0])[0]
            out[i] = int(rng.choice(valid))
        return out

    # ------------------------------------------------------------------------------------------ encode / decode
    def encode(self, plan: Plan) -> np.ndarray:
        """The vector of ``plan``: each variable's resolved decision (``Plan.decisions_for``), 0 where unset.

        Knobs that mean nothing under the plan's precision are canonicalised to index 0 (a default
        ``group_size`` on a float layer, a kernel of a float layer), so plans that differ only there
        encode alike. Values that are no choice of the space raise InvalidArgumentError; validity
        (masks) is ``check_plan``'s job, not encode's.
        """
        if not isinstance(plan, Plan):
            raise InvalidArgumentError(f"`plan` must be an autosurgeon.plan.Plan, got {type(plan).__name__}.")
        x = self.default_vector()
        cache: dict[str, dict[str, Any]] = {}
        for i, v in enumerate(self.variables):
            decisions = cache.get(v.name)
            if decisions is None:
                decisions = cache[v.name] = plan.decisions_for(v.name)
            if v.knob in decisions:
                x[i] = v.index(decisions[v.knob])
        for i, v in enumerate(self.variables):
            if v.knob in ("group_size", "kernel") and v.parent is not None:
                precision = self.variables[v.parent].choices[int(x[v.parent])]
                if (v.knob == "group_size" and precision != "int4") or (
                        v.knob == "kernel" and precision in FLOAT_PRECISIONS):
                    x[i] = 0
        return x

    def decode(self, x: Any, *, metadata: Mapping[str, Any] | None = None) -> Plan:
        """A plan of exact-FQN rules with every variable's value, fingerprints filled.

        ``group_size`` is written only for int4 layers and ``kernel`` only for quantized ones (elsewhere
        they are canonical index 0), so ``encode(decode(x)) == x`` for every valid ``x``.
        """
        arr = self.check_vector(x)
        decisions: dict[str, dict[str, Any]] = {}
        for i, v in enumerate(self.variables):
            value = v.choices[int(arr[i])]
            if v.knob in ("group_size", "kernel") and v.parent is not None:
                precision = self.variables[v.parent].choices[int(arr[v.parent])]
                if (v.knob == "group_size" and precision != "int4") or (
                        v.knob == "kernel" and precision in FLOAT_PRECISIONS):
                    continue
            decisions.setdefault(v.name, {})[v.knob] = value
        meta = {"space": self.digest(), "proposer": "SearchSpace.decode", **dict(metadata or {})}
        return Plan.from_decisions(decisions, model_fingerprint=self.model_fingerprint,
                                   device_fingerprint=self.device_fingerprint, metadata=meta)

    # ------------------------------------------------------------------------------------------ features
    def features(self) -> tuple[np.ndarray, list[str]]:
        """Per-variable features for RL, ``(array (n_vars, n_features) float32, names)``.

        ``log_flops``/``log_bytes``: log1p of the unit's FLOPs and weight bytes (as it is now), divided by
        the largest in the space (so in [0, 1]); ``log_intensity`` likewise; ``parallelism`` from the
        analysis; ``position``: the unit's place in model order in [0, 1]; one-hots of the unit kind
        (``kind_*``) and of the knob (``knob_*``); ``n_valid``: the share of choices the static mask allows.
        """
        rows = []
        n_leaves = max(1, len(self.leaves) - 1)
        for v in self.variables:
            if v.kind == "block":
                b = next(b for b in self.blocks if b.name == v.name)
                flops, nbytes, inten, par = b.flops, b.weight_bytes, b.intensity, b.parallelism
                members = [self.leaves[n] for n in b.leaves]
                pos = members[0].position / n_leaves if members else 0.0
            elif v.kind == "group":
                group = next(g for g in self.units.groups if g.name == v.name)
                members = [self.leaves[n] for n in group.members]
                flops = sum(m.flops for m in members)
                nbytes = sum(m.own_bytes for m in members)
                mem = sum(m.memory_bytes for m in members)
                inten, par = flops / max(mem, 1), max(m.parallelism for m in members)
                pos = members[0].position / n_leaves
            else:
                leaf = self.leaves[v.name]
                flops, nbytes, inten, par = leaf.flops, leaf.own_bytes, leaf.intensity, leaf.parallelism
                pos = leaf.position / n_leaves
            rows.append([math.log1p(flops), math.log1p(nbytes), math.log1p(inten), par, pos,
                         *[float(v.kind == k) for k in FEATURE_KINDS],
                         *[float(v.knob == k) for k in KNOB_ORDER], sum(v.mask) / v.n])
        arr = np.array(rows, dtype=np.float64).reshape(len(rows), -1)
        for col in range(3):
            top = arr[:, col].max() if len(arr) else 0.0
            if top > 0:
                arr[:, col] /= top
        names = ["log_flops", "log_bytes", "log_intensity", "parallelism", "position",
                 *[f"kind_{k}" for k in FEATURE_KINDS], *[f"knob_{k}" for k in KNOB_ORDER], "n_valid"]
        return arr.astype(np.float32), names

    # ------------------------------------------------------------------------------------------ summary / io
    def describe(self) -> str:
        """A few lines for people: variables per knob, valid choices, masked reasons, size of the space."""
        lines = [f"SearchSpace on {self.device_name} (device {self.device_fingerprint}, model "
                 f"{self.model_fingerprint}): {len(self.variables)} variables, "
                 f"10^{self.log10_size():.1f} valid vectors (static masks)"]
        for knob in KNOB_ORDER:
            vs = [v for v in self.variables if v.knob == knob]
            if not vs:
                continue
            valid: dict[Any, int] = {}
            for v in vs:
                for c, ok in zip(v.choices, v.mask):
                    valid[c] = valid.get(c, 0) + int(ok)
            shown = ", ".join(f"{c}:{n}" for c, n in valid.items() if n)
            lines.append(f"  {knob:<10} {len(vs):>4} vars; valid per choice: {shown}")
            masked: dict[str, int] = {}
            for v in vs:
                for c, why in v.reasons.items():
                    key = f"{c}: {_strip_name(why, v.name)}"
                    masked[key] = masked.get(key, 0) + 1
            for text, n in sorted(masked.items(), key=lambda t: -t[1])[:6]:
                lines.append(f"      masked x{n}  {text}")
        return "\n".join(lines)

    def digest(self) -> str:
        """Short hash of the definition (variables, choices, static masks): same digest, same encoding."""
        blob = json.dumps([[v.name, v.knob, list(map(str, v.choices)), list(v.mask)] for v in self.variables])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """The space definition as versioned JSON-ready data (a saved policy carries it)."""
        return {"_type": SPACE_TYPE, "_version": SPACE_VERSION, "_data": {
            "knobs": list(self.knobs), "model_fingerprint": self.model_fingerprint,
            "device_fingerprint": self.device_fingerprint, "device_name": self.device_name,
            "default_placement": self.default_placement, "digest": self.digest(),
            "kernel_table": {e: {p: list(ks) for p, ks in t.items()} for e, t in self.kernel_table.items()},
            "kernel_reasons": self.kernel_reasons,
            "variables": [v.to_dict() for v in self.variables], "units": self.units.to_dict()}}

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> SearchSpace:
        if not isinstance(obj, Mapping) or obj.get("_type") != SPACE_TYPE:
            raise InvalidArgumentError(f"`_type` must be {SPACE_TYPE!r}, got "
                                       f"{obj.get('_type') if isinstance(obj, Mapping) else type(obj).__name__!r}.")
        version = obj.get("_version")
        if version != SPACE_VERSION:
            raise InvalidArgumentError(f"search space `_version` must be {SPACE_VERSION}, got {version!r}.")
        d = obj["_data"]
        space = cls(variables=[Variable.from_dict(v) for v in d["variables"]], units=UnitTable.from_dict(d["units"]),
                    knobs=d["knobs"], model_fingerprint=d["model_fingerprint"],
                    device_fingerprint=d["device_fingerprint"], device_name=d["device_name"],
                    default_placement=d["default_placement"], kernel_table=d["kernel_table"],
                    kernel_reasons=d.get("kernel_reasons"))
        if d.get("digest") not in (None, space.digest()):
            raise InvalidArgumentError(f"search space `digest` {d['digest']!r} does not match its variables "
                                       f"({space.digest()!r}); the definition was edited or corrupted.")
        return space

    def to_json(self, *, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> SearchSpace:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise InvalidArgumentError(f"search space: not valid JSON ({exc}).") from None


class _Builder:
    """Makes the variables of one (units, profile, knobs) triple; see the module docstring for the rules."""

    def __init__(self, units: UnitTable, profile: Any, knobs: tuple[str, ...]) -> None:
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
                staged["group_size"].append((leaf.position, self._group_size(leaf, precision_of.get(name))))
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
            return [self.default.partition("<-")[0]]
        kinds = [c.partition("<-")[0] for c, ok in zip(parent.choices, parent.mask) if ok]
        return list(dict.fromkeys(kinds))

    def _placement(self, block: BlockRecord) -> Variable:
        choices = _first(self.default, PLACEMENTS)
        reasons = {c: r for c in choices if (r := placement_reason(c, self.profile)) is not None}
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

    def _group_size(self, leaf: LeafRecord, precision: Variable | None) -> Variable:
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


def _strip_name(reason: str, name: str) -> str:
    """A reason without its leading module name, so equal reasons of many layers group together."""
    if reason.startswith(name):
        rest = reason[len(name):]
        return rest.split(": ", 1)[1] if ": " in rest else rest
    return reason
