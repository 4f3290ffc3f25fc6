"""Train a maskable PPO surgery policy per device (sb3-contrib MaskablePPO over SurgeryEnv).

``train(...)`` builds ``n_envs`` SurgeryEnvs (each wrapped in SB3's ``Monitor``) in a ``DummyVecEnv``,
all sharing the models' contexts (one SearchSpace and evaluator per model), so every episode samples a
model, a preference and a budget from its env's seeded ``np_random``. It trains
``MaskablePPO("MlpPolicy", vec_env, seed=seed, tensorboard_log=out/tb)`` with:

* a checkpoint (``agents.train_state``: safetensors + JSON, never pickled) at the first rollout boundary past
  every ``checkpoint_every`` timesteps and at the end into ``out/checkpoints/step_<N>/`` (``--resume`` loads
  the newest valid one and continues up to ``timesteps`` total, bit for bit as if never stopped, appending
  to the same TensorBoard run);
* :class:`agents.callbacks.SurgeryMetricsCallback`: ``surgery/`` metrics and, every ``hv_every``
  timesteps, the hypervolume of the policy's front on each training model.

``knobs`` may name session knobs (``kv_precision``, ``kv_budget``, ``kv_tier``, ``kv_window``, ``prefetch``,
``prefetch_depth``): the env's layout then grows (``envs.observation.layout_for``) and the policy decides
them in a last ``"<session>"`` step; without them the layout is the default one.

The output folder gets ``policy.safetensors`` and ``policy.json`` (``agents.policy_io``: network architecture,
layout, knobs, device
fingerprint and class, training models, evaluator, observation statistics, learning history, and the power
cap with the power mode trained in under ``power``).

``power_cap_w`` (``--power-cap``) trains under a power cap (``envs.surgery.SurgeryEnv``: a paper profile
in the fastest power mode within it, a measured one with plans above it penalised); the cap and mode also
go to TensorBoard as HParams (``SurgeryMetricsCallback``).

Hyperparameters (``PPOSettings``): small MLP (64, 64), ``n_steps`` 128 per env, batch 64, 10 epochs, lr
3e-4, gamma 0.99, GAE 0.95, entropy 0.01 — episodes are tens of steps with one terminal reward.
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agents.callbacks import StopAfterSeconds, SurgeryMetricsCallback
from agents.dask_vec_env import DaskEvalVecEnv
from agents.policy_io import device_class, write_meta
from agents.policy_store import save_network
from agents.train_state import RolloutCheckpoint, checkpoints, latest_valid, restore, save_checkpoint
from autosurgeon._logging import get_logger
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.files.runfolder import run_folder
from autosurgeon.hardware.power_cap import resolve_power_cap
from autosurgeon.hardware.resolve import resolve_profile
from envs.reward import RewardConfig
from envs.surgery import SurgeryEnv

logger = get_logger(__name__)

# Episode preferences in training: a flat Dirichlet (version 0). (1.0, 0.3) adds a sparse one (near the simplex's
# corners and edges, where `apply --front K` asks), opt-in: measured no better (policy_transfer_s6*.md).
TRAIN_PREFERENCE_ALPHAS: tuple[float, ...] = (1.0,)


@dataclass(frozen=True)
class PPOSettings:
    """MaskablePPO hyperparameters (module docstring: defaults and why)."""

    n_steps: int = 128
    batch_size: int = 64
    n_epochs: int = 10
    learning_rate: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    ent_coef: float = 0.01
    net_arch: tuple[int, ...] = (64, 64)

    def __post_init__(self) -> None:
        for name in ("n_steps", "batch_size", "n_epochs"):
            if getattr(self, name) < 1:
                raise InvalidArgumentError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        if not 0 < self.learning_rate < 1:
            raise InvalidArgumentError(f"`learning_rate` must be in (0, 1), got {self.learning_rate}.")


@dataclass
class TrainResult:
    """Where the policy went and what training saw."""

    out: Path
    timesteps: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    cluster: dict[str, Any] | None = None  # with a cluster: what its workers evaluated (DaskEvalVecEnv.summary)


def latest_checkpoint(folder: str | os.PathLike[str]) -> Path | None:
    """The newest ``checkpoints/step_<N>`` folder under ``folder`` (largest N; ``agents.train_state``), or None."""

    found = checkpoints(folder)
    return found[0][1] if found else None


def make_vec_env(*, models: Sequence[str], profile: Any, evaluator: str, knobs: Sequence[str], sensitivity: bool,
                 n_envs: int, seed: int, power_cap_w: float | None = None, cluster: Any = None,
                 reward_shaping: bool = False, gamma: float = 0.99,
                 preference_alphas: Sequence[float] = (1.0,), reward: RewardConfig | None = None) -> Any:
    """``n_envs`` Monitor-wrapped SurgeryEnvs in a DummyVecEnv, env ``r`` seeded ``seed + r``; with ``cluster``
    (``experiments.sweep.dask_eval.SweepCluster``) a ``DaskEvalVecEnv`` measuring finished plans on it;
    ``reward_shaping``: the envs' potential-based shaping with PPO's ``gamma``; ``preference_alphas``: the Dirichlet
    concentrations episodes draw their preference from (``envs.surgery.SurgeryEnv``)."""
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv


    def make(rank: int) -> Any:
        def _init() -> Any:
            env = SurgeryEnv(models=models, device=profile, evaluator=evaluator, knobs=knobs, sensitivity=sensitivity,
                             power_cap_w=power_cap_w, reward_shaping=reward_shaping, shaping_gamma=gamma,
                             preference_alphas=preference_alphas, reward=reward)
            env.reset(seed=seed + rank)
            return Monitor(env)
        return _init

    if cluster is None:
        vec = DummyVecEnv([make(r) for r in range(n_envs)])
    else:

        vec = DaskEvalVecEnv([make(r) for r in range(n_envs)], client=cluster.client, threads=cluster.threads,
                             gpus=cluster.gpus)
    vec.seed(seed)
    return vec


def new_model(vec: Any, *, settings: PPOSettings, seed: int, tensorboard_log: str | None) -> Any:
    """A fresh ``MaskablePPO("MlpPolicy", vec, ...)`` with ``settings``."""
    from sb3_contrib import MaskablePPO

    return MaskablePPO("MlpPolicy", vec, seed=seed, device="cpu", tensorboard_log=tensorboard_log,
                       n_steps=settings.n_steps, batch_size=settings.batch_size, n_epochs=settings.n_epochs,
                       learning_rate=settings.learning_rate, gamma=settings.gamma, gae_lambda=settings.gae_lambda,
                       ent_coef=settings.ent_coef, policy_kwargs={"net_arch": list(settings.net_arch)})



def model_list(models: Sequence[str]) -> list[str]:
    """The non-empty, stripped model specs of ``--models``; InvalidArgumentError when none is left."""
    names = [m.strip() for m in models if m and m.strip()]
    if not names:
        raise InvalidArgumentError("`--models` must name at least one model (comma-separated), got none.")
    return names

def train(*, device: Any = "local", models: Sequence[str], timesteps: int, out: str | os.PathLike[str],
          resume: bool = False, evaluator: str = "analytic", seed: int = 0, n_envs: int = 2,
          knobs: Sequence[str] = ("precision", "placement"), settings: PPOSettings | None = None,
          checkpoint_every: int = 2048, hv_every: int = 4096, hv_preferences: int = 8,
          sensitivity: bool = False, max_seconds: float | None = None,
          warm_start: Any = None, runtime_every: int = 0, power_cap_w: float | None = None,
          overwrite: bool = False, cluster: Any = None, reward_shaping: bool = False,
          preference_alphas: Sequence[float] = TRAIN_PREFERENCE_ALPHAS,
          reward: RewardConfig | None = None) -> TrainResult:
    """Train (or resume) a policy; see the module docstring. Returns where it was saved.

    ``out`` is locked for the run (``autosurgeon.files.runfolder``); a folder that already holds a policy or
    checkpoints is refused unless ``resume`` (continue from its newest valid checkpoint, with the settings
    recorded there) or ``overwrite`` (empty it first).
    ``max_seconds`` stops learning early after that much wall time (the policy is saved as it is).
    ``warm_start``: a callable taking the fresh model before learning (e.g. ``agents.warm_start.markov_warm_start``;
    ignored on resume); what it returns is saved in policy.json under ``warm_start``. ``runtime_every``: run
    the policy's plan on the runtime every that many timesteps (``SurgeryMetricsCallback``; this machine only).
    ``power_cap_w``: train under a power cap in watts (module docstring).
    ``cluster``: a ``SweepCluster`` (``experiments.sweep.cluster.sweep_cluster``): the envs' finished plans are
    measured on its Dask workers (``agents.dask_vec_env``); the policy and history equal a serial run's for a
    deterministic evaluator.
    ``reward_shaping``: potential-based shaping of every step's reward (``envs.surgery.SurgeryEnv``; the best
    policy is unchanged, each decision is credited at once). ``preference_alphas``: the Dirichlet concentrations of
    the episodes' preferences (``TRAIN_PREFERENCE_ALPHAS``: flat). ``reward``: the envs' ``RewardConfig`` (default:
    version 0's raw reward). Shaping, sparse preferences and ``RewardConfig(scale="reachable")`` are opt-in: in
    18-minute trainings they gave no more distinct plans on a paper H100 and fewer on a Jetson
    (``experiments/benchmarks/results/policy_transfer_s6*.md``). A checkpoint made before these options existed
    resumes without them, as it was trained.
    """

    models = model_list(models)
    if timesteps < 1:
        raise InvalidArgumentError(f"`--timesteps` must be >= 1, got {timesteps}.")
    if n_envs < 1:
        raise InvalidArgumentError(f"`--n-envs` must be >= 1, got {n_envs}.")
    if resume and latest_checkpoint(out) is None:
        raise InvalidArgumentError(f"`--resume`: no checkpoint under {Path(out) / 'checkpoints'}; train without "
                                   "--resume.")

    def keep(folder: Path) -> bool:
        return latest_checkpoint(folder) is not None or (folder / "policy.safetensors").is_file()

    with run_folder(out, resume=resume, overwrite=overwrite, keep=keep, what="policy or training checkpoints"):
        return _train(device=device, models=models, timesteps=timesteps, out=Path(out), resume=resume,
                      evaluator=evaluator, seed=seed, n_envs=n_envs, knobs=tuple(knobs),
                      settings=settings or PPOSettings(), checkpoint_every=checkpoint_every, hv_every=hv_every,
                      hv_preferences=hv_preferences, sensitivity=sensitivity, max_seconds=max_seconds,
                      warm_start=warm_start, runtime_every=runtime_every, power_cap_w=power_cap_w,
                      cluster=cluster, reward_shaping=reward_shaping, preference_alphas=tuple(preference_alphas),
                      reward=reward)


def _resume_state(out: Path, run: dict[str, Any]) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """The newest valid checkpoint of ``out``; InvalidArgumentError if none, or if its run settings differ."""

    found = latest_valid(out)
    if found is None:
        raise InvalidArgumentError(f"`--resume`: no readable checkpoint under {out / 'checkpoints'} (each was torn "
                                   "or altered); train again with --overwrite.")
    path, tensors, state = found
    saved = state.get("run", {})
    diff = [k for k in ("models", "knobs", "seed", "n_envs", "evaluator", "settings", "device_fingerprint",
                        "power_cap_w", "sensitivity") if saved.get(k) != run.get(k)]
    if diff:
        k = diff[0]
        raise InvalidArgumentError(f"`--resume`: {k} {run.get(k)!r} differs from the checkpoint's {saved.get(k)!r} "
                                   f"({path}); resume with the settings it was trained with (differing: "
                                   f"{', '.join(diff)}), or train anew with --overwrite.")
    return path, tensors, state


def _train(*, device: Any, models: list[str], timesteps: int, out: Path, resume: bool, evaluator: str, seed: int,
           n_envs: int, knobs: tuple[str, ...], settings: PPOSettings, checkpoint_every: int, hv_every: int,
           hv_preferences: int, sensitivity: bool, max_seconds: float | None, warm_start: Any, runtime_every: int,
           power_cap_w: float | None, cluster: Any = None, reward_shaping: bool = False,
           preference_alphas: tuple[float, ...] = TRAIN_PREFERENCE_ALPHAS,
           reward: RewardConfig | None = None) -> TrainResult:
    from stable_baselines3.common.callbacks import CallbackList


    profile = resolve_profile(device)
    if power_cap_w is not None:

        resolve_power_cap(profile, power_cap_w)  # a cap below every mode fails here, before anything is built
    run = {"models": list(models), "knobs": list(knobs), "seed": seed, "n_envs": n_envs, "evaluator": evaluator,
           "settings": json_settings(settings), "device_fingerprint": profile.fingerprint, "power_cap_w": power_cap_w,
           "sensitivity": bool(sensitivity), "reward_shaping": bool(reward_shaping),
           "preference_alphas": [float(a) for a in preference_alphas]}
    ckpt = _resume_state(out, run) if resume else None
    if ckpt is not None:  # resumed as it was trained (checkpoints before these options: unshaped, flat Dirichlet)
        saved = ckpt[2].get("run", {})
        run["reward_shaping"] = reward_shaping = bool(saved.get("reward_shaping", False))
        run["preference_alphas"] = [float(a) for a in saved.get("preference_alphas", [1.0])]
        preference_alphas = tuple(run["preference_alphas"])
    started = time.perf_counter()

    vec = make_vec_env(models=models, profile=profile, evaluator=evaluator, knobs=knobs, sensitivity=sensitivity,
                       n_envs=n_envs, seed=seed, power_cap_w=power_cap_w, cluster=cluster,
                       reward_shaping=reward_shaping, gamma=settings.gamma, preference_alphas=preference_alphas,
                       reward=reward)
    tb = str(out / "tb")
    model = new_model(vec, settings=settings, seed=seed, tensorboard_log=tb)
    front_env = SurgeryEnv(models=models, device=profile, evaluator=evaluator, knobs=knobs, sensitivity=sensitivity,
                           power_cap_w=power_cap_w, reward=reward)
    power = None if front_env.power_cap is None else front_env.power_cap.to_dict()
    if runtime_every and not (profile.measured and profile.fingerprint == resolve_profile("local").fingerprint):
        raise InvalidArgumentError(f"`--runtime-every` runs plans on this machine; `--device` {profile.name!r} is "
                                   "not this machine's profile (use --device local or drop --runtime-every).")
    metrics_cb = SurgeryMetricsCallback(front_env=front_env, hv_every=hv_every, hv_preferences=hv_preferences,
                                        runtime_every=runtime_every,
                                        hparams={"device": profile.name, "evaluator": evaluator, "seed": seed,
                                                 "power_cap_w": "none" if power is None else power["power_cap_w"],
                                                 "power_mode": front_env.power_mode_name})
    warm_info = None
    if ckpt is not None:
        path, tensors, state = ckpt
        try:
            restore(model, tensors, state, metrics=metrics_cb)
        except (KeyError, ValueError, RuntimeError, IndexError, TypeError) as exc:
            raise InvalidArgumentError(f"`--resume`: checkpoint {path} does not fit this run ({type(exc).__name__}: "
                                       f"{str(exc).splitlines()[0] if str(exc) else ''}); train anew with "
                                       "--overwrite.") from None
        warm_info = state["run"].get("warm_start")
        logger.info("resuming %s at %d timesteps", path, model.num_timesteps)
    elif warm_start is not None:
        warm_info = warm_start(model)
    run_record = {**run, "warm_start": warm_info}
    stopper = StopAfterSeconds(max_seconds) if max_seconds else None
    callbacks = CallbackList([RolloutCheckpoint(out, every=checkpoint_every, metrics=metrics_cb, run=run_record),
                              metrics_cb, *([stopper] if stopper else [])])
    remaining = timesteps - model.num_timesteps
    if remaining > 0:
        model.learn(total_timesteps=remaining, callback=callbacks, reset_num_timesteps=ckpt is None,
                    tb_log_name="ppo")
        if stopper is None or not stopper.stopped:  # at a rollout boundary: a resumable state
            save_checkpoint(out, model, metrics=metrics_cb, run=run_record)
    _, network = save_network(out, model.policy)
    seconds = time.perf_counter() - started
    write_meta(out, {
        "layout": front_env.layout.to_dict(), "knobs": list(knobs), "evaluator": evaluator,
        "models": models, "device_name": profile.name, "device_fingerprint": profile.fingerprint,
        "device_class": device_class(profile), "seed": seed, "n_envs": n_envs,
        "timesteps": int(model.num_timesteps), "settings": asdict(settings), "network": network,
        "reward": {**asdict(front_env.reward_config), "shaping": bool(reward_shaping),
                   "preference_alphas": list(preference_alphas)},
        "budget_range": list(front_env.budget_range),
        "obs_stats": metrics_cb.obs_stats(), "warm_start": warm_info, "history": metrics_cb.history,
        "budget_shield": front_env.budget_shield,
        "power": power, "power_mode": front_env.power_mode_name,
        "train_seconds": seconds,
        "spaces": {ctx.spec: ctx.space.digest() for ctx in front_env.contexts}})
    logger.info("policy saved to %s after %d timesteps (%.1f s)", out, model.num_timesteps, seconds)
    return TrainResult(out=out, timesteps=int(model.num_timesteps), seconds=seconds, history=metrics_cb.history,
                       cluster=vec.summary() if cluster is not None else None)


def json_settings(settings: PPOSettings) -> dict[str, Any]:
    """``settings`` as JSON data (tuples as lists), as checkpoints record and compare them."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()}


__all__ = ["TRAIN_PREFERENCE_ALPHAS", "PPOSettings", "TrainResult", "json_settings", "latest_checkpoint", "make_vec_env",
           "new_model", "train"]
