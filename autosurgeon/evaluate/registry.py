"""The evaluators by name: what ``--evaluator`` offers, how each is built, and whether it measures here.

Adding an evaluator is a subclass of ``Evaluator`` in its own module plus one :func:`register` line here; the
sweep's config, the env and every command's ``--evaluator`` choices derive from :func:`names`. This module
imports nothing heavy (the package's ``__init__`` loads evaluators lazily), so ``--help`` can read it.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autosurgeon.errors import InvalidArgumentError

if TYPE_CHECKING:  # annotations only
    from autosurgeon.hardware.profile import HardwareProfile
    from autosurgeon.zoo import LoadedModel


@dataclass(frozen=True)
class EvaluatorKind:
    """``target`` is ``module:Class``; ``measures_here`` means it needs this machine (a measured profile);
    ``cheap`` means it prices a plan without running it, fast enough to be an RL reward or a tuning objective
    (``train`` and ``tune`` offer only these)."""

    name: str
    target: str
    measures_here: bool
    description: str = ""
    cheap: bool = True

    def cls(self) -> type:
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)

    def build(self, loaded: LoadedModel, profile: HardwareProfile, **kwargs: Any) -> Any:
        """The evaluator, built by its class's ``build`` (``Evaluator.build``: space, cache, sensitivity, quality)."""
        return self.cls().build(loaded, profile, **kwargs)


_KINDS: dict[str, EvaluatorKind] = {}


def register(name: str, target: str, *, measures_here: bool, description: str = "", cheap: bool = True) -> None:
    """Register the evaluator class ``target`` (``module:Class``) as ``name``."""
    if name in _KINDS and _KINDS[name].target != target:
        raise InvalidArgumentError(f"evaluator {name!r} is registered twice ({_KINDS[name].target} and {target}).")
    _KINDS[name] = EvaluatorKind(name, target, measures_here, description, cheap)


register("runtime", "autosurgeon.evaluate.runtime:RuntimeEvaluator", measures_here=True,
         description="runs the plan end to end on the runtime (measured)", cheap=False)
register("profiled", "autosurgeon.evaluate.profiled:ProfiledEvaluator", measures_here=True,
         description="per-unit times measured once here, composed per plan")
register("analytic", "autosurgeon.evaluate.analytic:AnalyticEvaluator", measures_here=False,
         description="roofline cost model on a profile (paper presets work; estimated)")


def names(*, cheap: bool | None = None) -> tuple[str, ...]:
    """Registered names in registration order; ``cheap=True`` only those that price without running."""
    return tuple(n for n, k in _KINDS.items() if cheap is None or k.cheap == cheap)


def get(name: str) -> EvaluatorKind:
    if name not in _KINDS:
        raise InvalidArgumentError(f"`evaluator` must be one of {', '.join(_KINDS)}, got {name!r}.")
    return _KINDS[name]


__all__ = ["EvaluatorKind", "get", "names", "register"]
