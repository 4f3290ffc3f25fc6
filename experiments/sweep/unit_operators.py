"""NSGA-II's variation over decision units (``units.UnitStructure``), not over loose genes.

* :class:`UnitCrossover`: a child takes each unit whole (a layer's precision *with* its group size and
  kernel) from one parent: half the matings uniformly unit by unit, half as one contiguous run of units in
  model order (two-point), which keeps a parent's stretch of layers together.
* :class:`UnitMutation`: one or more moves per child, each either a *unit move* (one head takes another
  choice valid under the child, a precision half the time to its neighbour in bits, and its followers are
  re-drawn uniformly among their valid choices) or a *segment move* (a contiguous run of layers set to one
  precision, where each layer allows it): plans near a uniform one with a few layers changed, or a stretch
  of layers at another precision, are one move away, as the baselines' neighbourhoods are where fronts grow.
* :class:`ArchiveDuplicates`: an offspring the archive has already evaluated is a duplicate like one in the
  population, so pymoo draws again and every slot of a generation is a new plan (re-proposals cost no
  budget but would waste the generation). On ``--resume`` the records not yet replayed do not count
  (``Archive.proposed_before``), so the replay follows the first attempt's draws.

Every draw comes from pymoo's seeded ``random_state``; anything a move leaves invalid (a placement change
that a layer's precision no longer fits) goes through ``operators.UniformRepair`` afterwards, without bias.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from pymoo.core.crossover import Crossover
from pymoo.core.duplicate import DuplicateElimination
from pymoo.core.mutation import Mutation

from autosurgeon.precisions import PRECISION_BITS
from experiments.sweep.operators import repair_uniform
from experiments.sweep.units import UnitStructure, followers_free, redraw_followers


class UnitCrossover(Crossover):
    """Two parents, two children; units travel whole (module docstring)."""

    def __init__(self, space: Any, *, prob: float = 0.9) -> None:
        super().__init__(2, 2, prob=prob)
        self.structure = UnitStructure.of(space)
        self.gene_index = [np.asarray(g, dtype=np.int64) for g in self.structure.genes]

    def _do(self, problem: Any, X: Any, *args: Any, random_state: Any = None, **kwargs: Any) -> np.ndarray:
        rng = random_state if random_state is not None else np.random.default_rng(0)
        _, n_matings, _ = X.shape
        out = np.array(X, dtype=np.int64, copy=True)
        n_units = len(self.gene_index)
        for k in range(n_matings):
            if rng.random() < 0.5:
                take = rng.random(n_units) < 0.5
            else:
                a, b = sorted(rng.choice(n_units + 1, size=2, replace=False))
                take = np.zeros(n_units, dtype=bool)
                take[a:b] = True
            for u in np.nonzero(take)[0]:
                g = self.gene_index[u]
                out[0, k, g], out[1, k, g] = X[1, k, g], X[0, k, g]
        return out


class UnitMutation(Mutation):
    """Unit and segment moves (module docstring); ``segment_prob`` the share of segment moves."""

    def __init__(self, space: Any, *, segment_prob: float = 0.5, extra_moves: float = 0.5) -> None:
        super().__init__(prob=1.0)
        self.space = space
        self.structure = UnitStructure.of(space)
        self.segment_prob = float(segment_prob)
        self.extra_moves = float(extra_moves)

    def _do(self, problem: Any, X: Any, *args: Any, random_state: Any = None, **kwargs: Any) -> np.ndarray:
        rng = random_state if random_state is not None else np.random.default_rng(0)
        X = np.asarray(X, dtype=np.int64).copy()
        for r in range(X.shape[0]):
            X[r] = self.mutate(X[r], rng)
        return X

    def mutate(self, x: np.ndarray, rng: np.random.Generator, *, moves: int | None = None) -> np.ndarray:
        """``x`` after ``moves`` (default 1 + Poisson(``extra_moves``)) moves, then repaired (draws from ``rng``)."""
        x = np.asarray(x, dtype=np.int64).copy()
        if not self.structure.mutable_heads:
            return x
        for _ in range(moves if moves is not None else 1 + int(rng.poisson(self.extra_moves))):
            if len(self.structure.precision_heads) > 1 and rng.random() < self.segment_prob:
                self._segment(x, rng)
            else:
                self._unit(x, rng)
        return repair_uniform(self.space, x, rng)

    def _unit(self, x: np.ndarray, rng: np.random.Generator) -> None:
        head = int(rng.choice(self.structure.mutable_heads))
        mask = self.space.allowed(head, x)[0].copy()
        current = int(x[head])
        mask[current] = False
        options = np.nonzero(mask)[0]
        if options.size == 0 or (followers_free(self.space, self.structure, x, head) and rng.random() < 0.5):
            before = x.copy()  # the followers alone (an int4 layer's group size): a different combination
            for _ in range(8):
                redraw_followers(self.space, self.structure, x, head, rng)
                if not np.array_equal(x, before):
                    return
            if options.size == 0:
                return
        v = self.space.variables[head]
        if v.knob == "precision" and rng.random() < 0.5:
            x[head] = self._neighbour(v, current, options, rng)
        else:
            x[head] = int(rng.choice(options))
        redraw_followers(self.space, self.structure, x, head, rng)

    @staticmethod
    def _neighbour(v: Any, current: int, options: np.ndarray, rng: np.random.Generator) -> int:
        """The valid precision nearest in bits above or below ``current`` (direction drawn; ties: any)."""
        bits = math.log2(PRECISION_BITS[v.choices[current]])
        diffs = np.array([math.log2(PRECISION_BITS[v.choices[j]]) - bits for j in options])
        side = diffs < 0 if rng.random() < 0.5 else diffs > 0
        if not side.any():
            side = diffs != 0 if (diffs != 0).any() else np.ones_like(side)
        near = np.abs(diffs[side])
        pick = options[side][near == near.min()]
        return int(rng.choice(pick))

    def _segment(self, x: np.ndarray, rng: np.random.Generator) -> None:
        """A contiguous run of layers (or of blocks, a third of the time) set to one choice where each allows it;
        the layers' followers take one common draw (one group size for the run) where valid."""
        heads = self.structure.precision_heads
        if len(self.structure.placement_heads) > 1 and (len(heads) < 2 or rng.random() < 1 / 3):
            heads = self.structure.placement_heads
        a, b = sorted(rng.choice(len(heads) + 1, size=2, replace=False))
        anchor = self.space.variables[heads[int(rng.integers(a, b))]]
        valid = [c for c, ok in zip(anchor.choices, anchor.mask) if ok]
        value = valid[int(rng.integers(len(valid)))]
        common: dict[str, Any] = {}  # follower knob -> the run's one value
        for h in heads[a:b]:
            v = self.space.variables[h]
            if value not in v.choices:
                continue
            j = v.choices.index(value)
            if not self.space.allowed(h, x)[0][j]:
                continue
            x[h] = j
            for f in self.structure.followers.get(h, ()):
                fv = self.space.variables[f]
                ok = self.space.allowed(f, x)[0]
                if fv.knob not in common:
                    common[fv.knob] = fv.choices[int(rng.choice(np.nonzero(ok)[0]))]
                k = fv.choices.index(common[fv.knob]) if common[fv.knob] in fv.choices else -1
                x[f] = k if k >= 0 and ok[k] else int(rng.choice(np.nonzero(ok)[0]))


class ArchiveDuplicates(DuplicateElimination):
    """Duplicates within the offspring, of the population, and of any plan the archive has evaluated.

    Against the archive only when comparing with another population (offspring vs. population): the first
    population holds the seeds, which the archive has already evaluated, on purpose."""

    def __init__(self, archive: Any) -> None:
        super().__init__()
        self.archive = archive

    def _do(self, pop: Any, other: Any, is_duplicate: np.ndarray) -> np.ndarray:
        X = np.asarray(pop.get("X"), dtype=np.int64)
        if other is None:
            seen: set[bytes] = set()
            for i, x in enumerate(X):
                key = x.tobytes()
                is_duplicate[i] = is_duplicate[i] or key in seen
                seen.add(key)
            return is_duplicate
        others = {x.tobytes() for x in np.asarray(other.get("X"), dtype=np.int64)}
        for i, x in enumerate(X):
            if x.tobytes() in others or self.archive.proposed_before(x):
                is_duplicate[i] = True
        return is_duplicate


__all__ = ["ArchiveDuplicates", "UnitCrossover", "UnitMutation"]
