"""Optuna over MaskablePPO hyperparameters for the surgery environment: SQLite storage, pruning, resumable.

Each trial samples :class:`agents.ppo.PPOSettings` (learning rate, rollout length, batch, epochs, gamma,
entropy bonus, MLP width), trains ``timesteps`` steps on the given models and device, and scores the
policy by the mean hypervolume of its deterministic front (``hv_preferences`` evenly spread preferences)
over the training models (``agents.apply.policy_front``; normalised objectives, fixed reference point), minus
its budget-violation rate on the last rollout — one number to maximise. After every rollout the trial reports
the mean episode reward of that rollout (Optuna's intermediate value) and a ``MedianPruner`` stops trials
that fall behind the median of earlier trials at the same step.

Resumable and shareable: the study lives in ``storage`` (default ``sqlite:///<out>/study.db``; PostgreSQL or
any SQLAlchemy URL, ``agents.storage``) under ``study_name`` and is loaded if it exists, so several processes
or machines can run ``tune`` on one study (``agents.tune_dask`` starts them on a Dask cluster); ``tune`` runs
until the study holds ``trials`` finished (complete or pruned) trials, so an interrupted run picks up where
it stopped. The sampler is TPE seeded with ``seed``; the best settings go to
``<out>/best.json``.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.apply import policy_front
from agents.ppo import TRAIN_PREFERENCE_ALPHAS, PPOSettings, make_vec_env, model_list, new_model
from agents.storage import optuna_storage, redact
from autosurgeon._logging import get_logger
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.hardware.resolve import resolve_profile
from envs.surgery import SurgeryEnv

logger = get_logger(__name__)


def suggest_settings(trial: Any) -> Any:
    """PPOSettings drawn from ``trial`` (the search space)."""

    width = trial.suggest_categorical("width", [32, 64, 128])
    return PPOSettings(
        n_steps=trial.suggest_categorical("n_steps", [64, 128, 256]),
        batch_size=trial.suggest_categorical("batch_size", [32, 64, 128]),
        n_epochs=trial.suggest_categorical("n_epochs", [4, 10]),
        learning_rate=trial.suggest_float("learning_rate", 1e-4, 3e-3, log=True),
        gamma=trial.suggest_categorical("gamma", [0.95, 0.99, 1.0]),
        gae_lambda=0.95,
        ent_coef=trial.suggest_float("ent_coef", 1e-4, 5e-2, log=True),
        net_arch=(width, width))


@dataclass
class TuneResult:
    """The study's outcome."""

    study_name: str
    storage: str
    best_value: float | None
    best_params: dict[str, Any]
    finished: int
    pruned: int


def tune(*, device: Any = "local", models: Sequence[str], trials: int, timesteps: int, out: str | os.PathLike[str],
         storage: str | None = None, study_name: str = "surgery-ppo", evaluator: str = "analytic", seed: int = 0,
         n_envs: int = 2, hv_preferences: int = 4, knobs: Sequence[str] = ("precision", "placement")) -> TuneResult:
    """Run (or resume) the study until it holds ``trials`` finished trials; see the module docstring."""
    import optuna
    from stable_baselines3.common.callbacks import BaseCallback


    models = model_list(models)
    if trials < 1:
        raise InvalidArgumentError(f"`--trials` must be >= 1, got {trials}.")
    if timesteps < 1:
        raise InvalidArgumentError(f"`--timesteps` must be >= 1, got {timesteps}.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    profile = resolve_profile(device)

    # A heartbeat marks a trial whose process died failed (and retries it): processes may share the study.
    study = optuna.create_study(study_name=study_name, storage=optuna_storage(storage, heartbeat_s=30),
                                load_if_exists=True, direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
    front_env = SurgeryEnv(models=models, device=profile, evaluator=evaluator, knobs=knobs)

    class Report(BaseCallback):
        """Reports each rollout's mean episode reward; stops learning when the pruner says so."""

        def __init__(self, trial: Any) -> None:
            super().__init__()
            self.trial, self.rewards, self.violations, self.step_no, self.pruned = trial, [], [], 0, False

        def _on_step(self) -> bool:
            for done, info in zip(self.locals["dones"], self.locals["infos"]):
                if done and "episode" in info:
                    self.rewards.append(info["episode"]["r"])
                    self.violations.append(bool(info.get("memory_violation")))
            return not self.pruned

        def _on_rollout_end(self) -> None:
            if not self.rewards:
                return
            self.trial.report(float(np.mean(self.rewards)), self.step_no)
            self.step_no += 1
            self.last_violation = float(np.mean(self.violations))
            self.rewards, self.violations = [], []
            if self.trial.should_prune():
                self.pruned = True

    def objective(trial: Any) -> float:
        settings = suggest_settings(trial)
        # The envs as `train` makes them by default, so the tuned settings are the ones `train` will use.
        vec = make_vec_env(models=models, profile=profile, evaluator=evaluator, knobs=knobs, sensitivity=False,
                           n_envs=n_envs, seed=seed + trial.number, preference_alphas=TRAIN_PREFERENCE_ALPHAS)
        model = new_model(vec, settings=settings, seed=seed + trial.number, tensorboard_log=None)
        cb = Report(trial)
        model.learn(total_timesteps=timesteps, callback=cb)
        if cb.pruned:
            raise optuna.TrialPruned()
        hv = [policy_front(model, front_env, k=hv_preferences, context=i).hypervolume for i in range(len(models))]
        trial.set_user_attr("hv", hv)
        return float(np.mean(hv)) - getattr(cb, "last_violation", 0.0)

    def finished() -> int:
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        return len(study.get_trials(deepcopy=False, states=states))

    while finished() < trials:
        study.optimize(objective, n_trials=1)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    pruned = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)))
    best_value = study.best_value if complete else None
    best = dict(study.best_params) if complete else {}
    storage = redact(storage)  # best.json and the result never carry the database password
    (out / "best.json").write_text(json.dumps({"study": study_name, "storage": storage, "best_value": best_value,
                                               "best_params": best, "finished": finished(), "pruned": pruned,
                                               "timesteps_per_trial": timesteps, "models": models,
                                               "device": profile.name}, indent=2))
    logger.info("study %s: %d finished trials (%d pruned), best %s", study_name, finished(), pruned, best_value)
    return TuneResult(study_name=study_name, storage=storage, best_value=best_value, best_params=best,
                      finished=finished(), pruned=pruned)


def settings_from_params(params: dict[str, Any]) -> Any:
    """PPOSettings from a study's ``best_params`` (``best.json``)."""

    p = dict(params)
    width = int(p.pop("width", 64))
    return PPOSettings(**p, net_arch=(width, width))


__all__ = ["TuneResult", "settings_from_params", "suggest_settings", "tune"]
