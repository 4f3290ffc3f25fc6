"""SurgeryProblem: the SearchSpace encoding as a pymoo problem, and the Archive every algorithm evaluates through.

The :class:`Archive` is the single door to the evaluator: it repairs a proposed vector (``space.repair``),
answers plans it has seen from memory (re-proposals are free and uncounted), refuses a new plan once the
budget of distinct evaluations is spent (:class:`BudgetReached`), and otherwise evaluates, builds the
record and persists it (``RunStore.append``) before the algorithm sees the result. Preloaded with a
run's finished records it makes a seeded algorithm *replay* its history for free, which is how
``--resume`` continues (see ``runner``).

Objectives handed to algorithms are normalised (divided by the normaliser's scales) so that crowding
distances and Optuna's samplers see comparable magnitudes; records keep raw values. Quality enters as
the inequality constraint ``quality - max_quality_loss <= 0``, as a fourth objective, or not at all.
With a power cap, ``mean power - power_cap_w <= 0`` is a further constraint (mean power = the metrics'
energy / latency; a paper profile evaluated in a mode within the cap meets it by construction, a measured
one is checked plan by plan); the record keeps ``power_w`` and ``power_excess_w``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pymoo.core.mutation import Mutation
from pymoo.core.problem import ElementwiseProblem
from pymoo.core.repair import Repair
from pymoo.core.sampling import Sampling

from autosurgeon._logging import get_logger
from experiments.sweep.ids import plan_id

logger = get_logger(__name__)


class BudgetReached(Exception):
    """Raised by :meth:`Archive.evaluate` when a new plan would exceed the evaluation budget."""


class Archive:
    """Evaluations of one sweep by vector (see the module docstring).

    Args:
        space: the sweep's SearchSpace.
        evaluator: an ``autosurgeon.evaluate.Evaluator`` on that space.
        objectives: objective names (``Metrics.objective``), quality last if it is one.
        scales: the normaliser, one per objective.
        budget: distinct evaluations allowed (records included).
        quality: ``constraint`` | ``objective`` | ``none``.
        max_quality_loss: the constraint's bound.
        store: a ``RunStore`` to append each new record to (None: memory only).
        records: finished records of an earlier attempt (replayed, not re-measured).
        on_record: called with each NEW record (progress bars, TensorBoard).
        power_cap_w: a power cap in watts: plans whose mean power exceeds it are infeasible (None: no cap).
    """

    def __init__(self, space: Any, evaluator: Any, *, objectives: Sequence[str], scales: Sequence[float],
                 budget: int, quality: str = "constraint", max_quality_loss: float = 0.01, store: Any = None,
                 records: Sequence[dict[str, Any]] = (), on_record: Callable[[dict[str, Any]], None] | None = None,
                 power_cap_w: float | None = None) -> None:
        self.space = space
        self.evaluator = evaluator
        self.objectives = tuple(objectives)
        self.scales = np.asarray(scales, dtype=np.float64)
        self.budget = int(budget)
        self.quality = quality
        self.max_quality_loss = float(max_quality_loss)
        self.store = store
        self.on_record = on_record
        self.power_cap_w = None if power_cap_w is None else float(power_cap_w)
        self.records: list[dict[str, Any]] = []
        self._by_key: dict[bytes, dict[str, Any]] = {}
        self.replayed = 0  # preloaded records the algorithm has asked for again
        for r in records:
            self._add(r)
        self._preloaded = {k for k in self._by_key}

    def _add(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        self._by_key[np.asarray(record["x"], dtype=np.int64).tobytes()] = record

    def __len__(self) -> int:
        return len(self.records)

    @property
    def exhausted(self) -> bool:
        return len(self.records) >= self.budget

    def lookup(self, x: Any) -> dict[str, Any] | None:
        return self._by_key.get(np.asarray(x, dtype=np.int64).tobytes())

    def proposed_before(self, x: Any) -> bool:
        """Whether this run has already proposed ``x`` (and so holds its record). A resumed run's records that the
        algorithm has not asked for again yet do not count: the replay must see what the first attempt saw."""
        key = np.asarray(x, dtype=np.int64).tobytes()
        return key in self._by_key and key not in self._preloaded

    def current_records(self) -> list[dict[str, Any]]:
        """The records this run has reached so far (``proposed_before``), in order: on a resume, the preloaded
        records the replay has not reached yet are left out."""
        if not self._preloaded:
            return self.records
        return [r for r in self.records if np.asarray(r["x"], dtype=np.int64).tobytes() not in self._preloaded]

    def evaluate(self, x: Any, *, algo: str, generation: int = 0,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The record of ``repair(x)``: from memory if seen, else evaluated, persisted and counted.

        ``extra`` keys (a baseline's ``family`` and ``label``) are stored in a new record."""
        xr = self.space.repair(x)
        key = xr.tobytes()
        hit = self._by_key.get(key)
        if hit is not None:
            if key in self._preloaded:
                self._preloaded.discard(key)
                self.replayed += 1
            return hit
        if self.exhausted:
            raise BudgetReached(f"{self.budget} evaluations done")
        metrics = self.evaluator.evaluate(xr)
        values = [float(v) for v in metrics.objectives(self.objectives)]
        q = metrics.quality_loss
        feasible = True
        if self.quality == "constraint":
            if q is None:
                raise ValueError("the quality constraint needs the evaluator's quality_loss (give it a "
                                 "sensitivity table, or set quality = 'none')")
            feasible = q <= self.max_quality_loss
        plan = self.space.decode(xr)
        record = {"eval": len(self.records), "id": plan_id(plan), "algo": algo, "generation": int(generation),
                  "x": [int(v) for v in xr], "plan": plan.to_dict(),
                  "metrics": metrics.to_dict(), "objectives": values, "feasible": bool(feasible),
                  "quality_loss": q, **(extra or {})}
        if self.power_cap_w is not None:
            from autosurgeon.hardware.power_cap import mean_power_w

            watts = mean_power_w(metrics)
            if watts is None:
                raise ValueError("the power cap needs the evaluator's energy_j; this evaluator produced none")
            record["power_w"] = watts
            record["power_excess_w"] = watts - self.power_cap_w
            record["feasible"] = bool(feasible and record["power_excess_w"] <= 0)
        if self.store is not None:
            self.store.append(record)
        self._add(record)
        if self.on_record is not None:
            self.on_record(record)
        return record

    # ---- views for algorithms
    def F(self, record: dict[str, Any]) -> np.ndarray:
        """Normalised objectives of a record."""
        return np.asarray(record["objectives"], dtype=np.float64) / self.scales

    @property
    def n_constraints(self) -> int:
        """Inequality constraints: the quality bound (when a constraint) and the power cap (when set)."""
        return int(self.quality == "constraint") + int(self.power_cap_w is not None)

    def constraints(self, record: dict[str, Any]) -> list[float]:
        """Every constraint of a record (<= 0 feasible): quality loss - bound, then mean power - cap."""
        out = []
        if self.quality == "constraint":
            out.append(float(record["quality_loss"]) - self.max_quality_loss)
        if self.power_cap_w is not None:
            out.append(float(record["power_excess_w"]))
        return out

    def G(self, record: dict[str, Any]) -> float:
        """The worst constraint (<= 0 is feasible); 0 when there is none."""
        return max(self.constraints(record), default=0.0)


class SurgeryProblem(ElementwiseProblem):
    """The sweep as a pymoo problem: integer variables ``0..nvec-1``, objectives and constraint via the Archive.

    ``generation`` is set by the driver before each batch so records carry it.
    """

    def __init__(self, archive: Archive, *, algo: str = "nsga2") -> None:
        from experiments.sweep.distributed import PrefetchRunner

        space = archive.space
        # The runner measures a population at once where the evaluator can (a Dask cluster); records stay serial.
        super().__init__(n_var=len(space), n_obj=len(archive.objectives),
                         n_ieq_constr=archive.n_constraints,
                         xl=np.zeros(len(space), dtype=np.int64), xu=space.nvec - 1, vtype=int,
                         elementwise_runner=PrefetchRunner(archive))
        self.archive = archive
        self.algo = algo
        self.generation = 0

    def _evaluate(self, x: Any, out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        record = self.archive.evaluate(x, algo=self.algo, generation=self.generation)
        out["F"] = self.archive.F(record)
        if self.n_ieq_constr:
            out["G"] = np.array(self.archive.constraints(record))


class SpaceRepair(Repair):
    """``space.repair`` on every row: rounds, clips, and moves masked entries to their nearest valid choice."""

    def __init__(self, space: Any) -> None:
        super().__init__()
        self.space = space

    def _do(self, problem: Any, X: Any, **kwargs: Any) -> np.ndarray:
        return np.array([self.space.repair(x) for x in X], dtype=np.int64)


class SpaceSampling(Sampling):
    """Initial population: ``initial`` vectors first (a warm start), then ``space.random_vector`` draws."""

    def __init__(self, space: Any, initial: Sequence[np.ndarray] = ()) -> None:
        super().__init__()
        self.space = space
        self.initial = [self.space.repair(x) for x in initial]

    def _do(self, problem: Any, n_samples: int, *args: Any, random_state: Any = None, **kwargs: Any) -> np.ndarray:
        rng = random_state if random_state is not None else np.random.default_rng(0)
        rows = list(self.initial[:n_samples])
        while len(rows) < n_samples:
            rows.append(self.space.random_vector(rng))
        return np.array(rows, dtype=np.int64)


class ResetMutation(Mutation):
    """Random resetting: each variable, with probability ``prob_var`` (default 1/n), takes another choice
    its static mask allows (uniformly); conditional validity is restored by :class:`SpaceRepair`."""

    def __init__(self, space: Any, *, prob_var: float | None = None) -> None:
        super().__init__(prob=1.0)
        self.space = space
        self.valid = [np.nonzero(m)[0] for m in space.masks()]
        self.rate = prob_var

    def _do(self, problem: Any, X: Any, *args: Any, random_state: Any = None, **kwargs: Any) -> np.ndarray:
        rng = random_state if random_state is not None else np.random.default_rng(0)
        X = np.asarray(X, dtype=np.int64).copy()
        rate = self.rate if self.rate is not None else 1.0 / max(1, X.shape[1])
        hits = rng.random(X.shape) < rate
        for r, c in zip(*np.nonzero(hits)):
            options = self.valid[c][self.valid[c] != X[r, c]]
            if options.size:
                X[r, c] = int(rng.choice(options))
        return X


__all__ = ["Archive", "BudgetReached", "ResetMutation", "SpaceRepair", "SpaceSampling", "SurgeryProblem"]
