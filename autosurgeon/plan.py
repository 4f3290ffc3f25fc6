"""Plan: surgery decisions keyed by module name, as plain versioned data.

A plan says, per module FQN, which value each knob (``autosurgeon.knobs``) takes. It is written by any
proposer (PPO, NSGA-II, Optuna, the knapsack baseline, a person) and read by ``check_plan`` and
``apply_plan``. It never holds tensors or objects: a plan written today must load next year, or fail
saying which field and version it could not read.

Precedence, per module and per knob independently:
  1. a rule whose target is the module's exact FQN;
  2. else the first ``re:PATTERN`` rule, in the plan's order, whose pattern ``re.fullmatch``-es the FQN
     and sets that knob;
  3. else the plan's ``default``;
  4. else nothing: the module keeps what it has (the unmodified model's behaviour).
Resolving per knob lets a plan say "everything int8" by default and "layer 3 streamed" by name without
repeating the precision for layer 3.

Besides per-module decisions a plan may hold *session* decisions (``Plan.session``): model-level choices
about the runtime session — KV cache precision, budget, tier and window, expert prefetcher and prefetch
depth (``autosurgeon.knobs.SESSION_KNOBS``). A plan without them leaves the session as the runtime's
defaults (Hugging Face's own KV cache, block lookahead 2, experts resident).

On disk: ``{"_type": "autosurgeon.Plan", "_version": 1, "_data": {...}}`` (the same envelope torchao uses
for its configs), so a reader can tell a plan from another JSON file and which reader it needs. The
``session`` field of ``_data`` is optional and written only when the plan has session decisions, so a
plan without them is byte for byte what version 1 always wrote, and every version-1 plan (with or without
the field) loads; a reader from before session knobs existed refuses a plan that has them, naming the field.
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from autosurgeon.budget import MemoryBudget
from autosurgeon.errors import AutoSurgeonError
from autosurgeon.files.atomic import write_text_atomic
from autosurgeon.files.envelope import unwrap, wrap
from autosurgeon.knobs import validate_decision, validate_session

PLAN_TYPE = "autosurgeon.Plan"
PLAN_VERSION = 1
REGEX_PREFIX = "re:"
# Bounds on what a plan may hold. Exact rules are looked up by name (a dict), so many are cheap; every
# `re:` rule is tried against every module name, so their number bounds the cost of resolving a plan.
MAX_RULES = 1_000_000
MAX_PATTERN_RULES = 10_000


class PlanFormatError(AutoSurgeonError, ValueError):
    """A plan file or mapping cannot be read: names the field, the value and the supported version."""


@dataclass(frozen=True)
class Rule:
    """Decisions for one target: an exact module FQN, or ``re:PATTERN`` matched against whole FQNs."""

    target: str
    decisions: Mapping[str, Any]

    def __post_init__(self) -> None:
        if not isinstance(self.target, str) or not self.target:
            raise PlanFormatError(f"rule `target` must be a non-empty string, got {self.target!r}.")
        compiled = None
        if self.target.startswith(REGEX_PREFIX):
            try:
                compiled = re.compile(self.pattern)
            except re.error as exc:
                raise PlanFormatError(f"rule target {self.target!r} is not a valid regular expression: {exc}.") from None
            except RecursionError:
                raise PlanFormatError(f"rule target {self.target[:80]!r}...: regular expression nested too "
                                      f"deeply to compile; simplify it.") from None
        # Compiled once here: re's own cache holds 512 patterns, so a plan with more recompiled them per lookup.
        object.__setattr__(self, "_compiled", compiled)
        # type() first: isinstance against the Mapping ABC costs microseconds, which a 200,000-rule plan feels.
        if not (type(self.decisions) is dict or isinstance(self.decisions, Mapping)) or not self.decisions:
            raise PlanFormatError(f"rule {self.target!r}: `decisions` must be a non-empty mapping of knob -> value.")
        where = None
        for knob, value in self.decisions.items():
            validate_decision(knob, value, where=where or (where := f"rule {self.target!r}"))
        object.__setattr__(self, "decisions", dict(self.decisions))

    @property
    def is_pattern(self) -> bool:
        return self._compiled is not None

    @property
    def pattern(self) -> str:
        return self.target[len(REGEX_PREFIX):]

    def matches(self, fqn: str) -> bool:
        if self._compiled is not None:
            return self._compiled.fullmatch(fqn) is not None
        return fqn == self.target


@dataclass(frozen=True)
class Plan:
    """Decisions keyed by module FQN, with the fingerprints of the model and device it was made for.

    Attributes:
        rules: exact-FQN and ``re:`` rules; see the module docstring for precedence.
        default: decisions for every module no rule sets.
        model_fingerprint: ``model_fingerprint(model)`` of the model planned for (``None``: any model).
        device_fingerprint: ``HardwareProfile.fingerprint`` of the device planned for (``None``: any).
        metadata: free-form provenance (who proposed it, objectives, metrics at proposal time).
        session: model-level session decisions, ``{session knob: value}`` (``autosurgeon.knobs.SESSION_KNOBS``):
            ``kv_precision``, ``kv_budget``, ``kv_tier``, ``kv_window``, ``prefetch``, ``prefetch_depth``.
        budgets: the memory budget the plan was made for (``autosurgeon.budget.MemoryBudget``: bytes or shares
            per tier), enforced by ``apply_plan`` unless the caller passes other budgets. Empty: none.
    """

    rules: tuple[Rule, ...] = ()
    default: Mapping[str, Any] = field(default_factory=dict)
    model_fingerprint: str | None = None
    device_fingerprint: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    session: Mapping[str, Any] = field(default_factory=dict)
    budgets: MemoryBudget = field(default_factory=MemoryBudget)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))
        object.__setattr__(self, "budgets", MemoryBudget.parse(self.budgets, argument="plan budgets"))
        object.__setattr__(self, "session", validate_session(self.session, where="plan session"))
        for knob, value in dict(self.default).items():
            validate_decision(knob, value, where="plan default")
        object.__setattr__(self, "default", dict(self.default))
        object.__setattr__(self, "metadata", dict(self.metadata))
        patterns = tuple(r for r in self.rules if r.is_pattern)
        _check_rule_counts(len(self.rules), len(patterns), "plan")
        counts = Counter(r.target for r in self.rules if not r.is_pattern)
        duplicates = sorted(t for t, n in counts.items() if n > 1)
        if duplicates:
            shown = ", ".join(duplicates[:10]) + (f" and {len(duplicates) - 10} more" if len(duplicates) > 10 else "")
            raise PlanFormatError(f"plan has more than one rule for {shown}; merge them into one.")
        # Lookup tables (not fields: equality, repr and serialisation see only the rules).
        object.__setattr__(self, "_exact", {r.target: r.decisions for r in self.rules if not r.is_pattern})
        object.__setattr__(self, "_patterns", patterns)

    @classmethod
    def from_decisions(cls, decisions: Mapping[str, Mapping[str, Any]], **kwargs: Any) -> Plan:
        """Build a plan of exact-FQN rules from ``{fqn: {knob: value}}`` (how proposers emit plans)."""
        return cls(rules=tuple(Rule(fqn, d) for fqn, d in decisions.items() if d), **kwargs)

    def decisions_for(self, fqn: str) -> dict[str, Any]:
        """The resolved decisions for module ``fqn``, knob by knob (module docstring: precedence)."""
        resolved = dict(self.default)
        for rule in reversed([r for r in self._patterns if r.matches(fqn)]):
            resolved.update(rule.decisions)  # reversed, so the first matching pattern wins
        resolved.update(self._exact.get(fqn, {}))
        return resolved

    def resolve(self, fqns: Iterable[str]) -> dict[str, dict[str, Any]]:
        """``{fqn: decisions}`` for every given module that the plan touches."""
        out = {}
        for fqn in fqns:
            decisions = self.decisions_for(fqn)
            if decisions:
                out[fqn] = decisions
        return out

    def unmatched_targets(self, fqns: Iterable[str]) -> list[str]:
        """Rule targets that name no module among ``fqns`` (a typo, or a plan for another model)."""
        names = list(fqns)
        known = set(names)
        missing = []
        for rule in self.rules:
            if rule.is_pattern:
                if not any(rule.matches(n) for n in names):
                    missing.append(rule.target)
            elif rule.target not in known:
                missing.append(rule.target)
        return missing

    # -- serialisation -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "model_fingerprint": self.model_fingerprint,
            "device_fingerprint": self.device_fingerprint,
            "default": dict(self.default),
            "rules": [{"target": r.target, "decisions": dict(r.decisions)} for r in self.rules],
        }
        if self.session:  # optional: plans without session decisions stay as version 1 always wrote them
            data["session"] = dict(self.session)
        if self.budgets:  # optional too: a plan made without a budget is written as before
            data["budgets"] = self.budgets.to_json()
        data["metadata"] = dict(self.metadata)
        return wrap(PLAN_TYPE, PLAN_VERSION, data)

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_dict(cls, obj: Any, *, source: str = "plan") -> Plan:
        data = unwrap(obj, type_name=PLAN_TYPE, version=PLAN_VERSION, what="plan", source=source, error=PlanFormatError,
                      fix="write the plan again with this version")
        version = obj["_version"]
        known = {"model_fingerprint", "device_fingerprint", "default", "rules", "metadata", "session", "budgets"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PlanFormatError(f"{source}: unknown field(s) {', '.join(map(repr, unknown))} in `_data` of a version "
                                  f"{version} plan; known fields are {', '.join(sorted(known))}.")
        rules = data.get("rules", [])
        if not isinstance(rules, list):
            raise PlanFormatError(f"{source}: `rules` must be a list, got {type(rules).__name__}.")
        _check_rule_counts(len(rules), sum(isinstance(r, dict) and isinstance(r.get("target"), str)
                                           and r["target"].startswith(REGEX_PREFIX) for r in rules), source)
        parsed = []
        for i, rule in enumerate(rules):
            if not isinstance(rule, dict) or len(rule) != 2 or "target" not in rule or "decisions" not in rule:
                raise PlanFormatError(f"{source}: `rules[{i}]` must be an object with exactly `target` and "
                                      f"`decisions`, got {rule!r}.")
            parsed.append(Rule(rule["target"], rule["decisions"]))
        return cls(
            rules=tuple(parsed),
            default=data.get("default") or {},
            model_fingerprint=data.get("model_fingerprint"),
            device_fingerprint=data.get("device_fingerprint"),
            metadata=data.get("metadata") or {},
            session=data.get("session") or {},
            budgets=MemoryBudget.from_json(data.get("budgets"), source=source),
        )

    @classmethod
    def from_json(cls, text: str, *, source: str = "plan") -> Plan:
        with _collector_paused():
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise PlanFormatError(f"{source}: not valid JSON ({exc}).") from None
            except RecursionError:
                raise PlanFormatError(f"{source}: JSON nested too deeply to be a plan.") from None
            return cls.from_dict(obj, source=source)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically (a crash never leaves half a plan)."""

        return write_text_atomic(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Plan:
        path = Path(path)
        if not path.is_file():
            raise PlanFormatError(f"plan file {str(path)!r} does not exist; pass the path a plan was saved to.")
        return cls.from_json(path.read_text(), source=str(path))


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a plan is parsed, restoring its state after.

    Every object a plan's parse makes stays alive, yet each collection scans all tracked objects (a loaded
    model's included): with the collector on, a 200,000-rule plan loaded next to a model took twice as long.
    Reference counting still frees everything that dies."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _check_rule_counts(rules: int, patterns: int, source: str) -> None:
    """Refuse more rules than a plan may hold (``MAX_RULES``, ``MAX_PATTERN_RULES``), before any is parsed."""
    if rules > MAX_RULES:
        raise PlanFormatError(f"{source} has {rules} rules, more than the {MAX_RULES} a plan may hold; use `re:` "
                              f"patterns or a `default` for decisions many modules share.")
    if patterns > MAX_PATTERN_RULES:
        raise PlanFormatError(f"{source} has {patterns} `re:` rules, more than the {MAX_PATTERN_RULES} a plan may "
                              f"hold (each is tried against every module name); merge them into fewer patterns "
                              f"or give exact module names.")


def model_fingerprint(model: nn.Module) -> str:
    """A short stable hash of a model's architecture: class, and every parameter/buffer name, shape and dtype.

    Weights' values are left out on purpose: a plan is about structure, so it stays valid for a fine-tuned
    copy of the same architecture, and fingerprinting a meta-device model gives the same answer.
    """
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        dtype = str(tensor.dtype).removeprefix("torch.")
        h.update(f"{name}:{tuple(tensor.shape)}:{dtype};".encode())
    return h.hexdigest()[:16]

