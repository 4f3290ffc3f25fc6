"""The evaluators by name: what ``--evaluator`` offers, how each is built, and whether it measures here.

Adding an evaluator is a subclass of ``Evaluator`` plus one :func:`register` line (here or in its module);
the sweep's config and the CLI's choices derive from :func:`names`.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from autosurgeon.errors import InvalidArgumentError


@dataclass(frozen=True)
class EvaluatorKind:
    """``target`` is ``module:Class``; ``measures_here`` means it needs this machine (a measured profile)."""

    name: str
    target: str
    measures_here: bool
    description: str = ""

    def cls(self) -> type:
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


_KINDS: dict[str, EvaluatorKind] = {}


def register(name: str, target: str, *, measures_here: bool, description: str = "") -> None:
    """Register the evaluator class ``target`` (``module:Class``) as ``name``."""
    if name in _KINDS and _KINDS[name].target != target:
        raise InvalidArgumentError(f"evaluator {name!r} is registered twice ({_KINDS[name].target} and {target}).")
    _KINDS[name] = EvaluatorKind(name, target, measures_here, description)


register("runtime", "autosurgeon.evaluate.runtime:RuntimeEvaluator", measures_here=True,
         description="runs the plan end to end on the runtime (measured)")
register("profiled", "autosurgeon.evaluate.profiled:ProfiledEvaluator", measures_here=True,
         description="per-unit times measured once here, composed per plan")
register("analytic", "autosurgeon.evaluate.analytic:AnalyticEvaluator", measures_here=False,
         description="roofline cost model on a profile (paper presets work; estimated)")


def names() -> tuple[str, ...]:
    return tuple(_KINDS)


def get(name: str) -> EvaluatorKind:
    if name not in _KINDS:
        raise InvalidArgumentError(f"`evaluator` must be one of {', '.join(_KINDS)}, got {name!r}.")
    return _KINDS[name]


__all__ = ["EvaluatorKind", "get", "names", "register"]
