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
canonical value); ``packed`` needs a streamed placement, and all streamed blocks share one layout (the
runtime streams a session at one granularity; the first streamed block decides); a fused q/k/v or gate/up group needs its members
to share precision, group size and kernel. ``allowed(x)`` gives the masks under the current ``x``.

Session variables (only when ``knobs`` names session knobs: ``kv_precision``, ``kv_budget``, ``kv_tier``,
``kv_window``, ``prefetch``, ``prefetch_depth``) belong to one model-level unit named ``"<session>"``
(``knobs.SESSION_UNIT``), come after every module variable, and map to ``Plan.session`` in encode/decode;
which exist and their masks are in ``space_session.py``. Spaces built without them are unchanged.

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
from typing import Any

import numpy as np
from torch import nn

from autosurgeon._logging import get_logger
from autosurgeon.analysis.model_analysis import analyze
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.files.envelope import unwrap, wrap
from autosurgeon.hardware.profile import HardwareProfile
from autosurgeon.hardware.resolve import resolve_profile
from autosurgeon.knobs import ALL_KNOBS, KNOBS, SESSION_KNOBS, SESSION_UNIT, canonical_placement, placement_kind
from autosurgeon.plan import Plan, model_fingerprint
from autosurgeon.space.masks import FLOAT_PRECISIONS, PRECISION_BITS, default_placement
from autosurgeon.space.session import SESSION_KIND, SessionRecord, build_session_record, session_variables
from autosurgeon.space.units import BlockRecord, LeafRecord, UnitTable, build_units
from autosurgeon.space.variables import FEATURE_KINDS, KNOB_ORDER, Variable, VariableBuilder

logger = get_logger(__name__)

SPACE_TYPE = "autosurgeon.SearchSpace"
SPACE_VERSION = 1
DEFAULT_KNOBS: tuple[str, ...] = ("precision", "placement")


class SearchSpace:
    """The decision variables of one model on one device; see the module docstring.

    Build with :meth:`build`; load a saved definition with :meth:`from_dict`.
    """

    def __init__(self, *, variables: Sequence[Variable], units: UnitTable, knobs: Sequence[str],
                 model_fingerprint: str | None, device_fingerprint: str | None, device_name: str,
                 default_placement: str, kernel_table: Mapping[str, Mapping[str, Sequence[str]]],
                 kernel_reasons: Mapping[str, Mapping[str, Mapping[str, str]]] | None = None,
                 session: SessionRecord | None = None) -> None:
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
        self._block_layouts = [i for i, v in enumerate(self.variables)
                               if v.knob == "layout" and v.kind == "block" and v.parent is not None]
        self.nvec = np.array([v.n for v in self.variables], dtype=np.int64)
        self.session = session  # what session decisions need to know of the model (None: a space saved before it)

    # ------------------------------------------------------------------------------------------ build
    @classmethod
    def build(cls, model: Any, profile: HardwareProfile | str, *, inputs: Mapping[str, Any] | None = None,
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
                ``fusion``, ``layout``; and the session knobs ``kv_precision``, ``kv_budget``, ``kv_tier``,
                ``kv_window``, ``prefetch``, ``prefetch_depth``, variables of the ``"<session>"`` unit).
            phase: analysis phase when ``analysis`` is not given.
        """

        knobs = tuple(dict.fromkeys(knobs))
        unknown = [k for k in knobs if k not in ALL_KNOBS]
        if unknown or not knobs:
            raise InvalidArgumentError(f"`knobs` must be a non-empty subset of {', '.join(ALL_KNOBS)}, got "
                                       f"{list(knobs)}; unknown: {unknown or 'none (the list is empty)'}.")
        dependent = [k for k in ("group_size", "kernel") if k in knobs]
        if dependent and "precision" not in knobs:
            raise InvalidArgumentError(f"`knobs` {dependent} only mean something with a precision; add 'precision'.")
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
        builder = VariableBuilder(units, profile, tuple(k for k in knobs if k in KNOBS))
        variables = builder.variables()
        # The session record is cheap and always kept: a plan's session decisions are counted (footprint)
        # and checked (plan_check) against it even in spaces without session variables.
        record = build_session_record(model, task=getattr(loaded, "task", None))
        if any(k in SESSION_KNOBS for k in knobs):
            variables += session_variables(record, profile, knobs, model_name=type(model).__name__)
            if record.kv_reason is not None and any(k in knobs for k in ("kv_precision", "kv_budget", "kv_tier",
                                                                          "kv_window")):
                logger.info("no KV knobs for %s: %s", type(model).__name__, record.kv_reason)
        space = cls(variables=variables, units=units, knobs=knobs, model_fingerprint=model_fingerprint(model),
                    device_fingerprint=profile.fingerprint, device_name=profile.name,
                    default_placement=default_placement(profile), kernel_table=builder.kernel_table,
                    kernel_reasons=builder.kernel_reasons, session=record)
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
            return placement_kind(self.default_placement)
        return placement_kind(self.variables[anchor].choices[int(x[anchor])])

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
                    reasons[str(c)] = f"group_size applies to int4 only; {v.name} is {precision}"
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
            else:
                # The runtime streams every block of a session at one granularity: the first streamed
                # block's layout decides for all streamed blocks.
                first = next((j for j in self._block_layouts if j < i and self._streamed(j, x)), None)
                if first is not None:
                    required = self.variables[first].choices[int(x[first])]
                    for j, c in enumerate(v.choices):
                        if mask[j] and c != required:
                            mask[j] = False
                            reasons[str(c)] = (f"the runtime streams all blocks at one granularity: "
                                               f"{self.variables[first].name} (streamed) has layout {required!r}")
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

    def _streamed(self, layout_index: int, x: np.ndarray) -> bool:
        parent = self.variables[layout_index].parent
        return parent is not None and "<-" in self.variables[parent].choices[int(x[parent])]

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
                out.append((i, reasons.get(str(value), "masked")))
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

    def repair_one(self, y: Any, base: np.ndarray, i: int) -> np.ndarray:
        """``repair(y)``, given ``base = repair(y')`` for a ``y'`` that differs from ``y`` at entry ``i`` only.

        Entries before ``i`` and entries whose mask reads no changed entry (:meth:`reads`) are ``base``'s, as
        :meth:`repair` (which walks the variables in order, each mask reading earlier entries) would leave
        them; the rest are repaired from ``y``. Exact, and far cheaper than ``repair`` for one changed entry
        (the env's budget shield tries every choice of a unit this way)."""
        reads = self.reads()
        if self._reads_forward:  # a mask reading a later entry: walk them all
            return self.repair(y)
        arr = np.asarray(y)
        out = np.array(base, dtype=np.int64, copy=True)
        changed: set[int] = set()
        for j in range(i, len(self.variables)):
            if j != i and not (reads[j] & changed):
                continue
            v = self.variables[j]
            out[j] = min(max(int(arr[j]), 0), v.n - 1)
            mask, _ = self.allowed(j, out)
            if not mask[out[j]]:
                out[j] = self._nearest(v, int(out[j]), mask)
            if out[j] != base[j]:
                changed.add(j)
        return out

    def reads(self) -> list[frozenset[int]]:
        """Per variable, the entries its conditional mask (:meth:`allowed`) reads (a superset; all earlier)."""
        if getattr(self, "_reads", None) is None:
            out = []
            for i, v in enumerate(self.variables):
                r: set[int] = set()
                if v.parent is not None:
                    r.add(v.parent)
                    grand = self.variables[v.parent].parent
                    if grand is not None:
                        r.add(grand)
                if v.knob == "layout" and v.kind == "block":
                    for j in self._block_layouts:
                        if j < i:
                            r.add(j)
                            if self.variables[j].parent is not None:
                                r.add(self.variables[j].parent)
                r.update(v.members or ())
                out.append(frozenset(r))
            self._reads: list[frozenset[int]] | None = out
            self._reads_forward = any(r and max(r) >= j for j, r in enumerate(out))
        return self._reads

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
        cache: dict[str, dict[str, Any]] = {SESSION_UNIT: dict(plan.session)}
        for i, v in enumerate(self.variables):
            decisions = cache.get(v.name) if v.kind != SESSION_KIND else cache[SESSION_UNIT]
            if decisions is None:
                decisions = cache[v.name] = plan.decisions_for(v.name)
            if v.knob in decisions:
                value = decisions[v.knob]
                x[i] = v.index(canonical_placement(value) if v.knob == "placement" else value)
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
        session: dict[str, Any] = {}
        for i, v in enumerate(self.variables):
            value = v.choices[int(arr[i])]
            if v.kind == SESSION_KIND:
                session[v.knob] = value
                continue
            if v.knob in ("group_size", "kernel") and v.parent is not None:
                precision = self.variables[v.parent].choices[int(arr[v.parent])]
                if (v.knob == "group_size" and precision != "int4") or (
                        v.knob == "kernel" and precision in FLOAT_PRECISIONS):
                    continue
            decisions.setdefault(v.name, {})[v.knob] = value
        meta = {"space": self.digest(), "proposer": "SearchSpace.decode", **dict(metadata or {})}
        return Plan.from_decisions(decisions, model_fingerprint=self.model_fingerprint,
                                   device_fingerprint=self.device_fingerprint, metadata=meta, session=session)

    # ------------------------------------------------------------------------------------------ features
    def unit_summary(self, v: Variable) -> tuple[float, float, float, float, float]:
        """``(flops, weight bytes, intensity, parallelism, position in [0, 1])`` of the unit ``v`` decides for:
        a block, a fusion group (its members summed), a leaf, or the whole model for a session variable
        (position 1.0: decided after every module). What ``features`` scales, for any consumer."""
        n_leaves = max(1, len(self.leaves) - 1)
        if v.kind == SESSION_KIND:
            return (float(sum(b.flops for b in self.blocks)), float(sum(b.weight_bytes for b in self.blocks)),
                    max((b.intensity for b in self.blocks), default=0.0),
                    max((b.parallelism for b in self.blocks), default=0.0), 1.0)
        if v.kind == "block":
            b = next(b for b in self.blocks if b.name == v.name)
            members = [self.leaves[n] for n in b.leaves]
            pos = members[0].position / n_leaves if members else 0.0
            return float(b.flops), float(b.weight_bytes), b.intensity, b.parallelism, pos
        if v.kind == "group":
            group = next(g for g in self.units.groups if g.name == v.name)
            members = [self.leaves[n] for n in group.members]
            flops = sum(m.flops for m in members)
            mem = sum(m.memory_bytes for m in members)
            return (float(flops), float(sum(m.own_bytes for m in members)), flops / max(mem, 1),
                    max(m.parallelism for m in members), members[0].position / n_leaves)
        leaf = self.leaves[v.name]
        return float(leaf.flops), float(leaf.own_bytes), leaf.intensity, leaf.parallelism, leaf.position / n_leaves

    def features(self) -> tuple[np.ndarray, list[str]]:
        """Per-variable features for RL, ``(array (n_vars, n_features) float32, names)``.

        ``log_flops``/``log_bytes``: log1p of the unit's FLOPs and weight bytes (as it is now), divided by
        the largest in the space (so in [0, 1]); ``log_intensity`` likewise; ``parallelism`` from the
        analysis; ``position``: the unit's place in model order in [0, 1]; one-hots of the unit kind
        (``kind_*``) and of the knob (``knob_*``); ``n_valid``: the share of choices the static mask allows.
        Session variables (model-level) have no unit of their own: FLOPs, bytes, intensity and parallelism
        are the whole model's (so the largest, 1.0 after scaling), position 1.0 (decided after every
        module), no ``kind_*`` set; their ``knob_*`` columns exist only in spaces that have session variables,
        so the features of a space without them are what they always were.
        """
        rows = []
        session_knobs = [k for k in SESSION_KNOBS if any(v.knob == k for v in self.variables)]
        for v in self.variables:
            flops, nbytes, inten, par, pos = self.unit_summary(v)
            rows.append([math.log1p(flops), math.log1p(nbytes), math.log1p(inten), par, pos,
                         *[float(v.kind == k) for k in FEATURE_KINDS],
                         *[float(v.knob == k) for k in (*KNOB_ORDER, *session_knobs)], sum(v.mask) / v.n])
        arr = np.array(rows, dtype=np.float64).reshape(len(rows), -1)
        for col in range(3):
            top = arr[:, col].max() if len(arr) else 0.0
            if top > 0:
                arr[:, col] /= top
        names = ["log_flops", "log_bytes", "log_intensity", "parallelism", "position",
                 *[f"kind_{k}" for k in FEATURE_KINDS], *[f"knob_{k}" for k in (*KNOB_ORDER, *session_knobs)],
                 "n_valid"]
        return arr.astype(np.float32), names

    # ------------------------------------------------------------------------------------------ summary / io
    def describe(self) -> str:
        """A few lines for people: variables per knob, valid choices, masked reasons, size of the space."""
        lines = [f"SearchSpace on {self.device_name} (device {self.device_fingerprint}, model "
                 f"{self.model_fingerprint}): {len(self.variables)} variables, "
                 f"10^{self.log10_size():.1f} valid vectors (static masks)"]
        for knob in (*KNOB_ORDER, *SESSION_KNOBS):
            vs = [v for v in self.variables if v.knob == knob]
            if not vs:
                continue
            valid: dict[Any, int] = {}
            for v in vs:
                for c, ok in zip(v.choices, v.mask):
                    valid[c] = valid.get(c, 0) + int(ok)
            shown = ", ".join(f"{c}:{n}" for c, n in valid.items() if n)
            lines.append(f"  {knob:<10} {len(vs):>4} var{'s' if len(vs) != 1 else ''}; valid per choice: {shown}"
                         if knob in KNOB_ORDER else f"  {knob:<14} session; valid choices: {shown}")
            masked: dict[str, int] = {}
            for v in vs:
                for c, why in v.reasons.items():
                    key = f"{c}: {_strip_name(why, v.name)}"
                    masked[key] = masked.get(key, 0) + 1
            for text, n in sorted(masked.items(), key=lambda t: -t[1])[:6]:
                lines.append(f"      masked x{n}  {text}")
        if (self.session is not None and not self.session.has_kv
                and any(k in self.knobs for k in ("kv_precision", "kv_budget", "kv_tier", "kv_window"))):
            lines.append(f"  no KV knobs: {self.session.kv_reason}")
        return "\n".join(lines)

    def digest(self) -> str:
        """Short hash of the definition (variables, choices, static masks): same digest, same encoding."""
        blob = json.dumps([[v.name, v.knob, list(map(str, v.choices)), list(v.mask)] for v in self.variables])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """The space definition as versioned JSON-ready data (a saved policy carries it)."""
        return wrap(SPACE_TYPE, SPACE_VERSION, {
            "knobs": list(self.knobs), "model_fingerprint": self.model_fingerprint,
            "device_fingerprint": self.device_fingerprint, "device_name": self.device_name,
            "default_placement": self.default_placement, "digest": self.digest(),
            "kernel_table": {e: {p: list(ks) for p, ks in t.items()} for e, t in self.kernel_table.items()},
            "kernel_reasons": self.kernel_reasons,
            "variables": [v.to_dict() for v in self.variables], "units": self.units.to_dict(),
            **({"session": self.session.to_dict()} if self.session is not None else {})})

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> SearchSpace:
        d = unwrap(obj, type_name=SPACE_TYPE, version=SPACE_VERSION, what="search space",
                   fix="rebuild the space from the model")
        space = cls(variables=[Variable.from_dict(v) for v in d["variables"]], units=UnitTable.from_dict(d["units"]),
                    knobs=d["knobs"], model_fingerprint=d["model_fingerprint"],
                    device_fingerprint=d["device_fingerprint"], device_name=d["device_name"],
                    default_placement=d["default_placement"], kernel_table=d["kernel_table"],
                    kernel_reasons=d.get("kernel_reasons"),
                    session=SessionRecord.from_dict(d["session"]) if d.get("session") is not None else None)
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


def _strip_name(reason: str, name: str) -> str:
    """A reason without its leading module name, so equal reasons of many layers group together."""
    if reason.startswith(name):
        rest = reason[len(name):]
        return rest.split(": ", 1)[1] if ": " in rest else rest
    return reason


__all__ = ["DEFAULT_KNOBS", "KNOB_ORDER", "SPACE_VERSION", "SearchSpace", "Variable"]
