"""Training callbacks: ``surgery/`` metrics in TensorBoard, and observation statistics for policy.json.

:class:`SurgeryMetricsCallback` reads the finished episodes' ``info`` from every vectorised env and logs,
per rollout: ``surgery/mean_reward``, ``surgery/improvement`` (the preference-weighted gain before
penalties), ``surgery/budget_violation_rate`` (memory over budget), ``surgery/quality_violation_rate``,
``surgery/power_violation_rate`` (mean power over the power cap; with a cap only), ``surgery/episodes``; and every ``hv_every`` timesteps, per training model, ``surgery/hv/<model>``: the
hypervolume of the policy's deterministic front from ``hv_preferences`` evenly spread preferences
(``agents.apply.policy_front``; normalised objectives, fixed reference point). It also keeps running
mean/std of the observations it sees (Welford), saved with the policy.

Runtime checks (``runtime_every`` > 0 timesteps, profile of this machine only): the policy's plan for the
equal preference on each training model is also applied and run end to end (``RuntimeEvaluator``), logging
``surgery/runtime/<model>/latency_ratio`` (measured latency / measured unmodified latency) and
``.../latency_error`` (the training evaluator's latency / the measured one - 1): how far the training
reward's cost model is from the runtime, on the plans the policy actually picks.

``hparams`` (the run's settings: device, evaluator, seed, power cap and power mode) are written once at
the start as TensorBoard HParams (SB3's ``HParam``), so runs say under which cap they were trained.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from agents.apply import policy_front, run_policy
from autosurgeon._logging import get_logger
from envs.context import build_context

logger = get_logger(__name__)


class SurgeryMetricsCallback(BaseCallback):
    """See the module docstring. ``front_env`` is a SurgeryEnv over the training models (not vectorised)."""

    def __init__(self, *, front_env: Any = None, hv_every: int = 2048, hv_preferences: int = 8,
                 runtime_every: int = 0, hparams: dict[str, Any] | None = None, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.hparams = dict(hparams or {})
        self.runtime_every = runtime_every
        self._next_runtime = runtime_every
        self._runtime_ctx: dict[int, Any] = {}
        self.front_env = front_env
        self.hv_every = hv_every
        self.hv_preferences = hv_preferences
        self._next_hv = 0
        self._episodes: list[dict[str, Any]] = []
        self.history: list[dict[str, Any]] = []
        self._n = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    def _runtime_check(self) -> dict[str, float]:

        env, out = self.front_env, {}
        for i, ctx in enumerate(env.contexts):
            if i not in self._runtime_ctx:
                self._runtime_ctx[i] = build_context(ctx.spec, ctx.profile, evaluator="runtime", knobs=env.knobs)
            runtime = self._runtime_ctx[i]
            x = run_policy(self.model, env, preference=np.full(3, 1 / 3), context=i)
            measured, cheap = runtime.evaluator.evaluate(x), ctx.evaluator.evaluate(x)
            out[f"runtime/{ctx.spec}/latency_ratio"] = measured.latency_s / runtime.base.latency_s
            out[f"runtime/{ctx.spec}/latency_error"] = cheap.latency_s / measured.latency_s - 1.0
        return out

    def _on_training_start(self) -> None:
        if not self.hparams:
            return
        from stable_baselines3.common.logger import HParam

        values = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in self.hparams.items()}
        self.logger.record("hparams", HParam(values, {"surgery/mean_reward": 0.0, "surgery/improvement": 0.0}),
                           exclude=("stdout", "log", "json", "csv"))

    def _on_step(self) -> bool:
        obs = np.asarray(self.locals.get("new_obs"), dtype=np.float64)
        if obs.ndim == 2:
            for row in obs:
                self._update(row)
        for done, info in zip(self.locals.get("dones", []), self.locals.get("infos", [])):
            if done and "improvement" in info:
                self._episodes.append({"reward": info.get("episode", {}).get("r"), "improvement": info["improvement"],
                                       "memory_violation": info["memory_violation"],
                                       "quality_violation": info["quality_violation"],
                                       "power_violation": info.get("power_violation")})
        return True

    def _update(self, row: np.ndarray) -> None:
        if self._mean is None:
            self._mean, self._m2 = np.zeros_like(row), np.zeros_like(row)
        self._n += 1
        delta = row - self._mean
        self._mean += delta / self._n
        self._m2 += delta * (row - self._mean)

    def state_dict(self) -> dict[str, Any]:
        """History, observation statistics and schedule as JSON data (training checkpoints)."""
        return {"history": self.history, "episodes": self._episodes, "n": self._n, "next_hv": int(self._next_hv),
                "next_runtime": int(self._next_runtime),
                "mean": None if self._mean is None else self._mean.tolist(),
                "m2": None if self._m2 is None else self._m2.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [dict(h) for h in state["history"]]
        self._episodes = [dict(e) for e in state["episodes"]]
        self._n, self._next_hv, self._next_runtime = int(state["n"]), int(state["next_hv"]), int(state["next_runtime"])
        self._mean = None if state["mean"] is None else np.asarray(state["mean"], dtype=np.float64)
        self._m2 = None if state["m2"] is None else np.asarray(state["m2"], dtype=np.float64)

    def obs_stats(self) -> dict[str, Any]:
        if self._mean is None:
            return {"count": 0}
        std = np.sqrt(self._m2 / max(self._n - 1, 1))
        return {"count": self._n, "mean": self._mean.round(6).tolist(), "std": std.round(6).tolist()}

    def _on_rollout_end(self) -> None:
        row: dict[str, Any] = {"timesteps": int(self.num_timesteps)}
        if self._episodes:
            eps = self._episodes
            rewards = [e["reward"] for e in eps if e["reward"] is not None]
            row.update(episodes=len(eps), improvement=float(np.mean([e["improvement"] for e in eps])),
                       budget_violation_rate=float(np.mean([e["memory_violation"] for e in eps])),
                       quality_violation_rate=float(np.mean([e["quality_violation"] for e in eps])))
            capped = [e["power_violation"] for e in eps if e["power_violation"] is not None]
            if capped:
                row["power_violation_rate"] = float(np.mean(capped))
            if rewards:
                row["mean_reward"] = float(np.mean(rewards))
            self._episodes = []
        if self.front_env is not None and self.num_timesteps >= self._next_hv:
            self._next_hv = self.num_timesteps + self.hv_every

            for i, spec in enumerate(self.front_env.specs):
                front = policy_front(self.model, self.front_env, k=self.hv_preferences, context=i)
                row[f"hv/{spec}"] = front.hypervolume
        if self.front_env is not None and self.runtime_every and self.num_timesteps >= self._next_runtime:
            self._next_runtime = self.num_timesteps + self.runtime_every
            row.update(self._runtime_check())
        for key, value in row.items():
            if key != "timesteps":
                self.logger.record(f"surgery/{key}", value)
        self.history.append(row)
        logger.info("surgery metrics at %d steps: %s", self.num_timesteps,
                    {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})


class StopAfterSeconds(BaseCallback):
    """Stop learning once ``seconds`` of wall time have passed since training started (a time budget)."""

    def __init__(self, seconds: float, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.seconds = seconds
        self._start = 0.0
        self.stopped = False

    def _on_training_start(self) -> None:
        import time

        self._start = time.perf_counter()

    def _on_step(self) -> bool:
        import time

        if time.perf_counter() - self._start > self.seconds:
            logger.info("time budget of %.0f s reached at %d timesteps; stopping", self.seconds, self.num_timesteps)
            self.stopped = True
            return False
        return True


__all__ = ["StopAfterSeconds", "SurgeryMetricsCallback"]
