"""Plans evaluated on a Dask cluster: each worker builds its evaluator once and keeps it; the coordinator records.

* :class:`EvaluatorPlugin` — a Dask worker plugin. Each worker it lands on builds its own evaluator from a
  factory (for a sweep, :func:`sweep_evaluator_factory`: the sweep's config, so the worker loads the model
  and its tables once, on its own device) on the first plan it is given and keeps it, with its cache and
  tables, for every later plan. The worker checks that its SearchSpace is the coordinator's (same digest),
  so a vector means the same plan on both sides. A worker started after a crash builds its own again.
* :func:`evaluate_on_worker` — the task: one plan's vector in, its metrics out as plain data.
* :class:`DaskEvaluator` — stands in for the coordinator's evaluator: answers from the coordinator's cache
  (``eval_cache.jsonl`` for a sweep), sends the misses to the cluster, one task per plan, each needing one
  unit of the workers' device resource (``device``: a worker owns one execution device, so it runs one
  evaluation at a time and timings are not shared with a second one), gathers them in order, and puts them
  in the coordinator's cache. Everything else (space, profile, model, sensitivity table) is the local
  evaluator's. Records are written by the sweep's archive on the coordinator only, never by a worker.

A worker killed mid-evaluation loses nothing: the scheduler gives its tasks to another worker (Dask's
``distributed.scheduler.allowed-failures`` bounds how many deaths one task may survive;
:func:`experiments.sweep.cluster.dask_client` raises it for the clusters it starts), and the gather waits.
"""
from __future__ import annotations

import functools
import hashlib
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autosurgeon._logging import get_logger
from autosurgeon.cost.profiled_trust import cached_tables_as_is
from autosurgeon.errors import InvalidArgumentError
from experiments.sweep.cluster import RESOURCE, require_distributed

require_distributed()
from distributed.diagnostics.plugin import WorkerPlugin  # noqa: E402  (after the friendly check)

logger = get_logger(__name__)

class EvaluatorPlugin(WorkerPlugin):
    """Builds and keeps one evaluator per worker (module docstring). Registered by :class:`DaskEvaluator`.

    Args:
        factory: a picklable callable returning an evaluator (``autosurgeon.evaluate.Evaluator``).
        name: the plugin's name on the cluster (one per sweep setting).
        space_digest: the coordinator's ``space.digest()``; a worker whose space differs refuses to evaluate.
        threads: torch threads per worker (None: leave the worker's setting).
        gpus: CUDA device ids; worker ``k`` of a local cluster sees only ``gpus[k % len(gpus)]`` (set before
            it initialises CUDA). None: leave ``CUDA_VISIBLE_DEVICES`` alone.
    """

    def __init__(self, factory: Callable[[], Any], *, name: str, space_digest: str, threads: int | None = None,
                 gpus: Sequence[str] | None = None) -> None:
        self.factory = factory
        self.name = name
        self.space_digest = space_digest
        self.threads = threads
        self.gpus = list(gpus) if gpus else None
        self._evaluators: dict[str, Any] = {}  # by worker address (in-process clusters share one plugin object)
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_evaluators", "_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._evaluators, self._lock = {}, threading.Lock()

    def setup(self, worker: Any) -> None:
        if self.gpus is not None:
            try:
                index = int(worker.name)
            except (TypeError, ValueError):
                index = 0
            os.environ["CUDA_VISIBLE_DEVICES"] = self.gpus[index % len(self.gpus)]
        if self.threads is not None:
            import torch

            torch.set_num_threads(int(self.threads))

    def teardown(self, worker: Any) -> None:
        self._evaluators.pop(getattr(worker, "address", ""), None)

    def evaluator(self, address: str) -> Any:
        """This worker's evaluator, built on first use."""
        with self._lock:
            ev = self._evaluators.get(address)
            if ev is None:
                started = time.perf_counter()
                ev = self.factory()
                digest = ev.space.digest()
                if digest != self.space_digest:
                    raise InvalidArgumentError(
                        f"worker {address}: its SearchSpace (digest {digest}) is not the coordinator's "
                        f"({self.space_digest}), so plan vectors would mean other plans; give the workers the same "
                        "model, device profile and knobs as the coordinator (or the same --device preset).")
                self._evaluators[address] = ev
                logger.info("worker %s: %s evaluator ready in %.1f s", address, ev.name, time.perf_counter() - started)
            return ev


def _plugin(worker: Any, plugin_name: str) -> EvaluatorPlugin:
    plugin = worker.plugins.get(plugin_name)
    if plugin is None:
        raise RuntimeError(f"worker {worker.address} has no plugin {plugin_name!r}; register it with "
                           "client.register_plugin (DaskEvaluator does).")
    return plugin


def evaluate_on_worker(plugin_name: str, xs: list[list[int]]) -> list[dict[str, Any]]:
    """The task: each vector's metrics from this worker's evaluator, as plain data (with the worker and device)."""
    from distributed import get_worker

    worker = get_worker()
    ev = _plugin(worker, plugin_name).evaluator(worker.address)
    out = []
    for x in xs:
        started = time.perf_counter()
        metrics = ev.evaluate(np.asarray(x, dtype=np.int64))
        out.append({"metrics": metrics.to_dict(), "worker": worker.address, "device": ev.profile.fingerprint,
                    "seconds": time.perf_counter() - started})
    return out


def _task_key(keys: Sequence[str]) -> str:
    """A task's Dask key: ``autosurgeon-eval-`` + the plan's cache key (or a hash of a chunk's keys)."""
    tail = keys[0] if len(keys) == 1 else hashlib.sha256("|".join(keys).encode()).hexdigest()[:24]
    return f"autosurgeon-eval-{tail}"


def _warm_worker(plugin_name: str, dask_worker: Any = None) -> str:
    """Build this worker's evaluator now (``client.run``); returns its device fingerprint."""
    return _plugin(dask_worker, plugin_name).evaluator(dask_worker.address).profile.fingerprint


def sweep_evaluator_factory(config: Mapping[str, Any], cache_dir: str | None = None) -> Callable[[], Any]:
    """A picklable factory building the sweep's evaluator from its config dict on a worker (memory cache only)."""
    return functools.partial(_build_from_config, dict(config), cache_dir)


def _build_from_config(config: dict[str, Any], cache_dir: str | None) -> Any:
    from experiments.sweep.config import SweepConfig
    from experiments.sweep.runner import build_evaluator

    # The coordinator measured (and spot-checked) the profiled tables the workers load: they take them as they
    # are, so every worker prices with the coordinator's table and the records do not depend on the worker count.
    with cached_tables_as_is():
        return build_evaluator(SweepConfig.from_dict(config), cache_path=None, cache_dir=cache_dir)


class DaskEvaluator:
    """The coordinator's evaluator, measuring cache misses on a Dask cluster (module docstring).

    Args:
        local: the coordinator's evaluator (its space, profile, cache and key are the sweep's).
        client: a ``distributed.Client``.
        factory: builds the same evaluator on a worker (picklable; :func:`sweep_evaluator_factory`).
        threads: torch threads per worker (None: the worker's own setting).
        gpus: CUDA device ids to spread a local cluster's workers over (see :class:`EvaluatorPlugin`).
        resource: the Dask resource each evaluation holds (a worker declares ``{resource: 1}``).
        chunk: plans per task: 1 (default; a slow evaluator balances best, a killed worker loses one plan) or
            ``"auto"`` (a batch split into two tasks per worker: cheap evaluators, where a task's ~ms of Dask
            overhead would otherwise outweigh the plan).
    """

    def __init__(self, local: Any, client: Any, *, factory: Callable[[], Any], threads: int | None = None,
                 gpus: Sequence[str] | None = None, resource: str = RESOURCE, chunk: int | str = 1) -> None:
        if chunk != "auto" and not (isinstance(chunk, int) and chunk >= 1):
            raise InvalidArgumentError(f"`chunk` must be an integer >= 1 or 'auto', got {chunk!r}.")
        self.chunk = chunk
        self.local = local
        self.client = client
        self.resource = resource
        sig = local.key(local.space.default_vector())  # model, device, evaluator settings, space
        self.plugin_name = f"autosurgeon-evaluator-{hashlib.sha256(sig.encode()).hexdigest()[:12]}"
        plugin = EvaluatorPlugin(factory, name=self.plugin_name, space_digest=local.space.digest(), threads=threads,
                                 gpus=gpus)
        try:
            client.register_plugin(plugin, name=self.plugin_name)
        except OSError as exc:  # CommClosedError: a worker died while it was told; the scheduler keeps the
            # plugin and gives it to every worker that joins, the dead one's replacement included
            logger.warning("registering %s: a worker went away (%s); it gets the plugin when it returns",
                           self.plugin_name, exc)
        self.calls = self.hits = self.evaluated = 0
        self.seconds = 0.0  # coordinator wall time of batches with misses
        self.worker_seconds = 0.0  # summed time inside the workers' evaluate calls
        self.by_worker: dict[str, int] = {}
        self.devices: set[str] = set()

    def __getattr__(self, name: str) -> Any:  # space, profile, loaded, sensitivity, cache, key, name, ...
        if name == "local":
            raise AttributeError(name)
        return getattr(self.local, name)

    def warm(self) -> dict[str, str]:
        """Build the evaluator on every current worker now (model, tables); ``{worker: device fingerprint}``."""
        return self.client.run(_warm_worker, self.plugin_name)

    def _chunks(self, items: list[tuple[str, np.ndarray]]) -> list[list[tuple[str, np.ndarray]]]:
        size = self.chunk
        if size == "auto":
            slots = max(1, len(self.client.scheduler_info().get("workers", {})))
            size = max(1, -(-len(items) // (2 * slots)))
        return [items[i:i + size] for i in range(0, len(items), size)]

    def evaluate(self, plan: Any) -> Any:
        """Metrics of one plan (a Plan or a vector), from the cache or the cluster."""
        return self.evaluate_many([plan])[0]

    def evaluate_many(self, plans: Sequence[Any]) -> list[Any]:
        """Metrics of ``plans`` in order: cache hits at once, misses measured in parallel on the cluster."""
        from autosurgeon.metrics import Metrics

        vectors = [self.local._validate(p)[1] for p in plans]
        keys = [self.local.key(x) for x in vectors]
        self.calls += len(vectors)
        out: list[Any] = [self.local.cache.get(k) for k in keys]
        misses: dict[str, np.ndarray] = {}
        for k, x, m in zip(keys, vectors, out):
            if m is None:
                misses.setdefault(k, x)
        self.hits += len(vectors) - sum(1 for m in out if m is None)
        if misses:
            started = time.perf_counter()
            chunks = self._chunks(list(misses.items()))
            futures = [self.client.submit(evaluate_on_worker, self.plugin_name,
                                          [[int(v) for v in x] for _, x in part],
                                          key=_task_key([k for k, _ in part]), pure=False, resources={self.resource: 1}) for part in chunks]
            try:
                results = [r for rs in self.client.gather(futures) for r in rs]
            finally:
                for f in futures:
                    f.release()
            for k, res in zip(misses, results):
                self.local.cache.put(k, Metrics.from_dict(res["metrics"]))
                self.by_worker[res["worker"]] = self.by_worker.get(res["worker"], 0) + 1
                self.devices.add(res["device"])
                self.worker_seconds += float(res["seconds"])
            self.evaluated += len(misses)
            self.seconds += time.perf_counter() - started
            out = [self.local.cache.get(k) for k in keys]
        return out

    @property
    def evaluations_per_second(self) -> float:
        """Cluster evaluations per second of coordinator wall time spent waiting for them; nan before any."""
        return self.evaluated / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> dict[str, Any]:
        """What the cluster did: evaluations, per worker, devices (fingerprints) and time."""
        return {"evaluated": self.evaluated, "wall_s": self.seconds, "worker_s": self.worker_seconds,
                "evaluations_per_s": self.evaluations_per_second, "by_worker": dict(self.by_worker),
                "devices": sorted(self.devices), "resource": self.resource}


@dataclass
class SweepCluster:
    """How a sweep uses a Dask cluster (``run_sweep(cluster=...)``).

    Attributes:
        client: a ``distributed.Client`` (``experiments.sweep.cluster.dask_client``).
        factory: builds the sweep's evaluator on a worker (None: from the sweep's config,
            :func:`sweep_evaluator_factory`; give one for a model or profile that only exists in this process).
        threads: torch threads per worker (None: the worker's own setting).
        gpus: CUDA device ids to spread a local cluster's workers over.
    """

    client: Any
    factory: Callable[[], Any] | None = None
    threads: int | None = None
    gpus: Sequence[str] | None = None

    def wrap(self, local: Any, config: Any, *, cache_dir: str | None = None) -> DaskEvaluator:
        """``local`` measuring on the cluster."""
        factory = self.factory or sweep_evaluator_factory(config.to_dict(), cache_dir)
        # A real run takes long enough to go one plan per task; the cheap evaluators go in chunks.
        chunk = 1 if getattr(config, "evaluator", None) == "runtime" else "auto"
        return DaskEvaluator(local, self.client, factory=factory, threads=self.threads, gpus=self.gpus,
                             chunk=chunk)


__all__ = ["DaskEvaluator", "SweepCluster", "EvaluatorPlugin", "RESOURCE", "evaluate_on_worker", "sweep_evaluator_factory"]
