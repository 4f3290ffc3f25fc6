"""Policy training with the env's plan evaluations spread over a Dask cluster (``train --workers/--scheduler``).

:class:`DaskEvalVecEnv` is Stable-Baselines3's ``DummyVecEnv`` with one step added before it steps its envs:
it asks each env which plan its step would evaluate (``SurgeryEnv.pending_plan``: only an episode's last
step evaluates, and asking changes nothing), measures those plans as one batch on the cluster
(``experiments.sweep.dask_eval.DaskEvaluator``: one task per plan, each worker holding one execution device,
results put in the coordinator's evaluator cache), then steps the envs in order exactly as ``DummyVecEnv``
does, each finding its plan in the cache. Everything else — actions, masks, observations (the estimator
still runs here: it is cheap or analytic), rewards, resets, RNG draws — happens in this process in the same
order as without a cluster, so a run with a deterministic evaluator (analytic; profiled with a shared table)
ends with the same policy and history as a serial one for the same seed, whatever the number of workers.

Each worker builds the env's evaluator once from plain data (model spec, the profile as JSON, evaluator name,
knobs, sensitivity: :func:`env_evaluator_factory`) and checks its SearchSpace digest against the
coordinator's, as a sweep's workers do. A profile on paper is used as sent; a measured one stands for the
worker's own device (``local``, from the shared cache root on one machine), so a worker on another kind of
device refuses to evaluate rather than measure there under the coordinator's profile.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv

from autosurgeon.hardware.profile import HardwareProfile
from autosurgeon.hardware.resolve import resolve_profile
from envs.context import build_context


def env_evaluator_factory(spec: str, profile_json: str, *, evaluator: str, knobs: Sequence[str],
                          sensitivity: bool) -> Callable[[], Any]:
    """A picklable factory building, on a worker, the evaluator ``envs.context.build_context`` gives the env."""
    return functools.partial(_build_env_evaluator, spec, profile_json, evaluator, tuple(knobs), bool(sensitivity))


def _build_env_evaluator(spec: str, profile_json: str, evaluator: str, knobs: tuple[str, ...],
                         sensitivity: bool) -> Any:

    profile = HardwareProfile.from_json(profile_json, origin="coordinator's profile")
    if profile.measured:  # a measured device is this worker's own: another device gives another space, refused

        profile = resolve_profile("local")
    return build_context(spec, profile, evaluator=evaluator, knobs=knobs, sensitivity=sensitivity).evaluator


class DaskEvalVecEnv(DummyVecEnv):
    """``DummyVecEnv`` whose finishing steps' plans are measured in parallel on a Dask cluster (module docstring).

    Args:
        env_fns: as ``DummyVecEnv`` (each returns a ``SurgeryEnv``, possibly wrapped, e.g. in ``Monitor``).
        client: a ``distributed.Client`` whose workers declare the ``device`` resource.
        threads: torch threads per worker (None: the worker's own setting).
        gpus: CUDA device ids to spread a local cluster's workers over.
    """

    def __init__(self, env_fns: list[Callable[[], Any]], *, client: Any, threads: int | None = None,
                 gpus: Sequence[str] | None = None) -> None:
        super().__init__(env_fns)
        self.client = client
        self.threads = threads
        self.gpus = list(gpus) if gpus else None
        self._remote: dict[int, Any] = {}  # id(local evaluator) -> its DaskEvaluator

    def _remote_for(self, env: Any) -> Any:
        from experiments.sweep.dask_eval import DaskEvaluator  # lazy: a layer above, and it needs the optional dask

        local = env.ctx.evaluator
        remote = self._remote.get(id(local))
        if remote is None:
            factory = env_evaluator_factory(env.ctx.spec, env.ctx.profile.to_json(), evaluator=env.evaluator_name,
                                            knobs=env.knobs, sensitivity=local.sensitivity is not None)
            chunk = 1 if env.evaluator_name == "runtime" else "auto"
            remote = self._remote[id(local)] = DaskEvaluator(local, self.client, factory=factory,
                                                             threads=self.threads, gpus=self.gpus, chunk=chunk)
        return remote

    def step_wait(self) -> Any:
        batches: dict[int, tuple[Any, list[np.ndarray]]] = {}
        for env_idx, wrapped in enumerate(self.envs):
            env = wrapped.unwrapped
            x = env.pending_plan(self.actions[env_idx])
            if x is not None:
                remote = self._remote_for(env)
                batches.setdefault(id(remote), (remote, []))[1].append(x)
        for remote, vectors in batches.values():
            remote.evaluate_many(vectors)  # into the local evaluator's cache; the steps below read it
        return super().step_wait()

    def summary(self) -> dict[str, Any]:
        """Per model context: what its cluster evaluator did (``DaskEvaluator.summary``)."""
        return {remote.local.space.digest(): remote.summary() for remote in self._remote.values()}


__all__ = ["DaskEvalVecEnv", "env_evaluator_factory"]
