"""Markov placement model: learns how earlier Pareto fronts set each knob, to warm-start and propose plans.

Fitted on plans from earlier fronts (any model, any device), it models the decisions along the unit
sequence — one first-order chain per knob, along the SearchSpace variables in order — conditioned on the
unit's kind and bucketed features (``agents.markov_features``) and on the previous decision of the same
knob. Choices are counted and matched by *value* (``"int8"``, ``"gpu<-cpu"``, ``128``), never by index,
so a model fitted on one model/device proposes for another whose choices are ordered differently.

Estimate: interpolated additive smoothing with backoff to less context. With counts ``n_k(c)`` at
context level ``k`` (most specific first: knob+kind+size+position+intensity+prev, knob+kind+position+prev,
knob+kind+position, knob+kind, knob) and ``N_k`` their sum,
``p_k(c) = (n_k(c) + alpha * p_{k+1}(c)) / (N_k + alpha)``, ending in the uniform distribution over the
variable's choices. A context seen often is followed closely; an unseen one falls back smoothly.

Sampling walks the variables in order and draws from ``p`` restricted to ``space.allowed(i, x)`` (the
conditional masks under the choices made so far), renormalised; the vector is then passed through
``space.repair`` (a no-op for such a vector, kept as the guarantee). ``predict`` takes the most likely
allowed choice at each step (greedy decoding: the joint MAP is not tractable under the masks).

Saved as versioned JSON: ``{"_type": "autosurgeon.MarkovPlacementModel", "_version": 1, "_data": ...}``.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.markov_features import (
    INTENSITY_EDGES,
    POSITION_BINS,
    SIZE_RATIOS,
    VarContext,
    variable_contexts,
)
from autosurgeon._logging import get_logger
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.files.atomic import write_text_atomic
from autosurgeon.files.envelope import unwrap
from autosurgeon.plan import Plan
from autosurgeon.space.search_space import DEFAULT_KNOBS, SearchSpace
from autosurgeon.zoo import load_model

logger = get_logger(__name__)

MARKOV_TYPE = "autosurgeon.MarkovPlacementModel"
MARKOV_VERSION = 1
FRONT_TYPE = "autosurgeon.Front"  # experiments.reporting.front_files writes it (agents/ may not import experiments/)
FRONT_VERSION = 1
START = "<start>"
# Context levels, most specific first; each names the VarContext fields (and "prev": the previous choice).
LEVELS: tuple[tuple[str, ...], ...] = (
    ("knob", "kind", "size", "position", "intensity", "prev"),
    ("knob", "kind", "position", "prev"),
    ("knob", "kind", "position"),
    ("knob", "kind"),
    ("knob",),
)


def _value_key(value: Any) -> str:
    """A choice as a JSON text: ``"int8"`` and ``128`` stay distinct types, and keys survive JSON."""
    return json.dumps(value)


class MarkovPlacementModel:
    """First-order Markov chains over knob choices along the units; see the module docstring.

    Args:
        alpha: smoothing strength (pseudo-count given to the less specific estimate); > 0.
        position_bins, intensity_edges, size_ratios: feature buckets (``agents.markov_features``).
    """

    def __init__(self, *, alpha: float = 1.0, position_bins: int = POSITION_BINS,
                 intensity_edges: Sequence[float] = INTENSITY_EDGES,
                 size_ratios: Sequence[float] = SIZE_RATIOS) -> None:
        if not (isinstance(alpha, (int, float)) and alpha > 0 and math.isfinite(alpha)):
            raise InvalidArgumentError(f"`alpha` must be a finite number > 0, got {alpha!r}.")
        if not (isinstance(position_bins, int) and position_bins >= 1):
            raise InvalidArgumentError(f"`position_bins` must be an integer >= 1, got {position_bins!r}.")
        self.alpha = float(alpha)
        self.position_bins = position_bins
        self.intensity_edges = tuple(float(e) for e in intensity_edges)
        self.size_ratios = tuple(float(r) for r in size_ratios)
        self.counts: list[dict[str, dict[str, float]]] = [{} for _ in LEVELS]
        self.n_sequences = 0
        self.sources: list[str] = []

    # ------------------------------------------------------------------------------------------ contexts
    def contexts(self, space: Any) -> list[VarContext]:
        return variable_contexts(space, position_bins=self.position_bins, intensity_edges=self.intensity_edges,
                                 size_ratios=self.size_ratios)

    @staticmethod
    def _keys(ctx: VarContext, prev_value: str) -> list[str]:
        fields = {"knob": ctx.knob, "kind": ctx.kind, "size": ctx.size, "position": ctx.position,
                  "intensity": ctx.intensity, "prev": prev_value}
        return [json.dumps([fields[f] for f in level]) for level in LEVELS]

    @staticmethod
    def _prev_value(space: Any, ctx: VarContext, x: np.ndarray) -> str:
        if ctx.prev is None:
            return START
        return _value_key(space.variables[ctx.prev].choices[int(x[ctx.prev])])

    # ------------------------------------------------------------------------------------------ fitting
    def fit(self, data: Iterable[Any]) -> MarkovPlacementModel:
        """Forget earlier counts and fit on ``data`` (see :meth:`update`); returns ``self``."""
        self.counts = [{} for _ in LEVELS]
        self.n_sequences = 0
        self.sources = []
        return self.update(data)

    def update(self, data: Iterable[Any]) -> MarkovPlacementModel:
        """Add counts from ``data``: ``(space, x)`` pairs, or run directories / ``front.json`` paths."""
        for item in data:
            if isinstance(item, (str, os.PathLike)):
                pairs = front_pairs(item)
                self.sources.append(os.fspath(item))
            elif isinstance(item, tuple) and len(item) == 2:
                pairs = [item]
            else:
                raise InvalidArgumentError(
                    f"`fit` takes (space, x) pairs or run directories, got {type(item).__name__}.")
            for space, x in pairs:
                self._count(space, x)
        return self

    def _count(self, space: Any, x: Any) -> None:
        arr = space.check_vector(x)
        for i, ctx in enumerate(self.contexts(space)):
            value = _value_key(space.variables[i].choices[int(arr[i])])
            for level, key in zip(self.counts, self._keys(ctx, self._prev_value(space, ctx, arr))):
                table = level.setdefault(key, {})
                table[value] = table.get(value, 0.0) + 1.0
        self.n_sequences += 1

    # ------------------------------------------------------------------------------------------ probabilities
    def probabilities(self, space: Any, i: int, x: np.ndarray, *, contexts: Sequence[VarContext] | None = None
                      ) -> np.ndarray:
        """``p`` over variable ``i``'s choices given the choices in ``x`` before it (masks not applied)."""
        ctx = (contexts or self.contexts(space))[i]
        return self._probs(space.variables[i], ctx, self._prev_value(space, ctx, x))

    def _probs(self, v: Any, ctx: VarContext, prev_value: str) -> np.ndarray:
        values = [_value_key(c) for c in v.choices]
        p = np.full(len(values), 1.0 / len(values))
        for level, key in reversed(list(zip(self.counts, self._keys(ctx, prev_value)))):
            table = level.get(key)
            if not table:
                continue
            n = np.array([table.get(val, 0.0) for val in values])
            p = (n + self.alpha * p) / (sum(table.values()) + self.alpha)
        return p / p.sum()  # counts of values this space lacks leave mass behind: renormalise

    def _walk(self, space: Any, choose: Any) -> np.ndarray:
        contexts = self.contexts(space)
        cache: dict[tuple[int, str], np.ndarray] = {}
        x = space.default_vector()
        for i, (v, ctx) in enumerate(zip(space.variables, contexts)):
            prev = self._prev_value(space, ctx, x)
            p = cache.get((i, prev))
            if p is None:
                p = cache[(i, prev)] = self._probs(v, ctx, prev)
            mask = space.allowed(i, x)[0]
            q = np.where(mask, p, 0.0)
            q = q / q.sum() if q.sum() > 0 else mask / mask.sum()
            x[i] = choose(q)
        return space.repair(x)

    def sample(self, space: Any, n: int, rng: np.random.Generator, *, temperature: float = 1.0
               ) -> list[np.ndarray]:
        """``n`` valid vectors of ``space`` drawn from the model (warm-start population).

        ``temperature`` > 1 flattens the distribution (more diverse populations), < 1 sharpens it.
        """
        if not isinstance(rng, np.random.Generator):
            raise InvalidArgumentError(
                f"`rng` must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}.")
        if not (isinstance(n, (int, np.integer)) and n >= 0):
            raise InvalidArgumentError(f"`n` must be an integer >= 0, got {n!r}.")
        if not (temperature > 0 and math.isfinite(temperature)):
            raise InvalidArgumentError(f"`temperature` must be a finite number > 0, got {temperature!r}.")

        def draw(q: np.ndarray) -> int:
            if temperature != 1.0:
                q = q ** (1.0 / temperature)
                q = q / q.sum()
            return int(rng.choice(len(q), p=q))

        return [self._walk(space, draw) for _ in range(int(n))]

    def predict(self, space: Any) -> np.ndarray:
        """The most likely allowed choice at each step, in variable order (ties: the lower index, i.e.
        nearer the unmodified model). ``space.decode(model.predict(space))`` is a plan for a new model."""
        return self._walk(space, lambda q: int(np.argmax(q)))

    def log_prob(self, space: Any, x: Any) -> float:
        """log-probability of ``x`` under the model with the same masked renormalisation as sampling."""
        arr = space.check_vector(x)
        contexts = self.contexts(space)
        total = 0.0
        for i, (v, ctx) in enumerate(zip(space.variables, contexts)):
            p = self._probs(v, ctx, self._prev_value(space, ctx, arr))
            q = np.where(space.allowed(i, arr)[0], p, 0.0)
            total += math.log(q[int(arr[i])] / q.sum()) if q[int(arr[i])] > 0 else -math.inf
        return total

    # ------------------------------------------------------------------------------------------ io
    def to_dict(self) -> dict[str, Any]:
        return {"_type": MARKOV_TYPE, "_version": MARKOV_VERSION, "_data": {
            "alpha": self.alpha, "position_bins": self.position_bins,
            "intensity_edges": list(self.intensity_edges), "size_ratios": list(self.size_ratios),
            "levels": [list(level) for level in LEVELS], "n_sequences": self.n_sequences,
            "sources": list(self.sources), "counts": [dict(sorted(level.items())) for level in self.counts]}}

    @classmethod
    def from_dict(cls, obj: Any, *, source: str = "Markov model") -> MarkovPlacementModel:
        d = unwrap(obj, type_name=MARKOV_TYPE, version=MARKOV_VERSION, what="Markov model", source=source,
                   fix="refit with `autosurgeon markov fit`")
        if [tuple(level) for level in d.get("levels", [])] != list(LEVELS):
            raise InvalidArgumentError(f"{source}: context `levels` {d.get('levels')!r} differ from this "
                                       f"reader's {[list(lv) for lv in LEVELS]}; refit the model.")
        try:
            model = cls(alpha=d["alpha"], position_bins=d["position_bins"], intensity_edges=d["intensity_edges"],
                        size_ratios=d["size_ratios"])
            model.counts = [{k: {v: float(c) for v, c in t.items()} for k, t in level.items()}
                            for level in d["counts"]]
            model.n_sequences = int(d["n_sequences"])
            model.sources = [str(s) for s in d.get("sources", [])]
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise InvalidArgumentError(f"{source}: malformed `_data` ({type(exc).__name__}: {exc}).") from None
        if len(model.counts) != len(LEVELS):
            raise InvalidArgumentError(f"{source}: `counts` must hold {len(LEVELS)} levels, got {len(model.counts)}.")
        return model

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically as JSON; returns the path."""

        return write_text_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MarkovPlacementModel:
        path = Path(path)
        if not path.is_file():
            raise InvalidArgumentError(f"Markov model file {str(path)!r} does not exist; write one with "
                                       "`autosurgeon markov fit RUN_DIR ... --out markov.json`.")
        return cls.from_dict(path.read_text(), source=str(path))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MarkovPlacementModel) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return (f"MarkovPlacementModel(alpha={self.alpha}, n_sequences={self.n_sequences}, "
                f"contexts={len(self.counts[0])})")


# ---------------------------------------------------------------------------------------------- runs
def _read_front(path: Path) -> dict[str, Any]:
    file = path / "front.json" if path.is_dir() else path
    if not file.is_file():
        raise InvalidArgumentError(f"front file {str(file)!r} does not exist; pass a run directory written by "
                                   "`autosurgeon sweep` (it holds front.json) or the front.json itself.")
    return unwrap(file.read_text(), type_name=FRONT_TYPE, version=FRONT_VERSION, what="front", source=str(file),
                  fix="run the sweep again")


def space_for_run(run_dir: str | os.PathLike[str], config: Mapping[str, Any]) -> Any:
    """The SearchSpace a run searched: ``run_dir/space.json`` if the sweep saved it, else rebuilt on the meta
    device from the config's ``model``, ``device`` and ``knobs`` (default precision + placement)."""

    run_dir = Path(run_dir)
    saved = (run_dir if run_dir.is_dir() else run_dir.parent) / "space.json"
    if saved.is_file():
        return SearchSpace.from_json(saved.read_text())
    missing = [k for k in ("model", "device") if not config.get(k)]
    if missing:
        raise InvalidArgumentError(f"{run_dir}: no space.json and the front's config lacks {missing}; the Markov "
                                   "model needs the run's search space to read its plans.")

    loaded = load_model(str(config["model"]), device="meta")
    return SearchSpace.build(loaded, config["device"], knobs=config.get("knobs") or DEFAULT_KNOBS)


def front_pairs(run_dir: str | os.PathLike[str]) -> list[tuple[Any, np.ndarray]]:
    """``(space, x)`` for every front member of a run (its plan encoded in the run's space)."""

    data = _read_front(Path(run_dir))
    space = space_for_run(run_dir, data.get("config") or {})
    pairs = []
    for member in data.get("members", []):
        plan = Plan.from_dict(member["plan"], source=f"{run_dir} member {member.get('member')}")
        pairs.append((space, space.encode(plan)))
    logger.info("markov: %d front members from %s", len(pairs), run_dir)
    return pairs


def fit_from_runs(run_dirs: Iterable[str | os.PathLike[str]], **kwargs: Any) -> MarkovPlacementModel:
    """A model fitted on the fronts of ``run_dirs`` (keyword arguments go to :class:`MarkovPlacementModel`)."""
    run_dirs = list(run_dirs)
    if not run_dirs:
        raise InvalidArgumentError("`run_dirs` must name at least one run directory holding a front.json.")
    model = MarkovPlacementModel(**kwargs).fit(run_dirs)
    if model.n_sequences == 0:
        raise InvalidArgumentError(f"the fronts of {[os.fspath(d) for d in run_dirs]} hold no members to fit on.")
    return model


__all__ = ["LEVELS", "MARKOV_TYPE", "MARKOV_VERSION", "MarkovPlacementModel", "fit_from_runs", "front_pairs",
           "space_for_run"]
