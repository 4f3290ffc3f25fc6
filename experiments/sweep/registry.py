"""The registry of search algorithms: one file per algorithm under ``experiments/sweep/algos/``.

A search algorithm is a function ``run(archive, context) -> generations`` registered under a name with
:func:`register`; adding one is adding a file to ``algos/`` that calls :func:`register` at import. Every
algorithm proposes through the same :class:`~experiments.sweep.problem.Archive` (same SearchSpace encoding,
same evaluator, same budget of distinct evaluations), and gets the same :class:`SearchContext`: the seeds
(the baselines' and a warm start's vectors, already evaluated in the archive) that it must use as its
starting points, the seed, the population size, the generation callback. The CLI's ``--algo`` choices and
``SweepConfig``'s validation derive from :func:`names`.
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any


from autosurgeon.errors import InvalidArgumentError

if TYPE_CHECKING:  # numpy only for annotations: the registry stays cheap to import (`--help`)
    import numpy as np

OnGeneration = Callable[[int, Any, int], None]  # (generation, archive, new records this generation)


def _noop(gen: int, archive: Any, new: int) -> None:
    return None


@dataclass(frozen=True)
class SearchContext:
    """What every algorithm is given besides the archive.

    Attributes:
        seed: every random choice of the algorithm derives from it.
        pop_size: population (or batch) size; one 'generation' of the TensorBoard curves.
        initial: vectors already evaluated in the archive (baselines, a warm start), best first: an
            algorithm starts from them (NSGA-II's first population, Optuna's first trials); random search
            needs nothing from them (they are in the archive's front already).
        on_generation: called after each generation with ``(generation, archive, new records)``.
        label: the ``algo`` (origin) its records carry (default: the registered name).
        extra: the config's ``extra`` table (algorithm-specific options, e.g. ``optuna_storage``).
        storage: an Optuna storage URL or None (memory); ``study_name`` its study; ``load_if_exists`` joins a
            study other processes share (``--storage``) instead of creating it.
    """

    seed: int = 0
    pop_size: int = 20
    initial: Sequence[np.ndarray] = ()
    on_generation: OnGeneration = _noop
    label: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    storage: Any = None
    study_name: str = "sweep"
    load_if_exists: bool = False


@dataclass(frozen=True)
class SearchAlgorithm:
    """A registered algorithm: its name, a one-line description and ``run(archive, context) -> generations``."""

    name: str
    run: Callable[[Any, SearchContext], int]
    description: str = ""


_REGISTRY: dict[str, SearchAlgorithm] = {}
_LOADED = False


def register(name: str, *, description: str = "") -> Callable[[Callable[[Any, SearchContext], int]],
                                                              Callable[[Any, SearchContext], int]]:
    """Decorator: register ``run(archive, context)`` as the search algorithm ``name``."""
    if not isinstance(name, str) or not name or name.startswith("baseline"):
        raise InvalidArgumentError(f"an algorithm's `name` must be a non-empty string not starting with 'baseline' "
                                   f"(that origin labels baseline plans), got {name!r}.")

    def deco(fn: Callable[[Any, SearchContext], int]) -> Callable[[Any, SearchContext], int]:
        if name in _REGISTRY and _REGISTRY[name].run is not fn:
            raise InvalidArgumentError(f"search algorithm {name!r} is registered twice ({_REGISTRY[name].run!r} "
                                       f"and {fn!r}); give the new one another name.")
        _REGISTRY[name] = SearchAlgorithm(name=name, run=fn, description=description)
        return fn

    return deco


def _load() -> None:
    global _LOADED
    if _LOADED:
        return
    from experiments.sweep import algos

    for info in sorted(pkgutil.iter_modules(algos.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{algos.__name__}.{info.name}")
    _LOADED = True


def names() -> tuple[str, ...]:
    """Registered algorithm names, in registration order (the files of ``algos/``, sorted)."""
    _load()
    return tuple(_REGISTRY)


def get(name: str) -> SearchAlgorithm:
    """The algorithm ``name``; InvalidArgumentError naming the registered ones otherwise."""
    _load()
    if name not in _REGISTRY:
        raise InvalidArgumentError(f"`algo` must be one of {', '.join(_REGISTRY)}, got {name!r}; a new algorithm is "
                                   "a file in experiments/sweep/algos/ calling experiments.sweep.registry.register.")
    return _REGISTRY[name]


__all__ = ["SearchAlgorithm", "SearchContext", "get", "names", "register"]
