"""Train a maskable PPO surgery policy per device (sb3-contrib MaskablePPO over SurgeryEnv).

``train(...)`` builds ``n_envs`` SurgeryEnvs (each wrapped in SB3's ``Monitor``) in a ``DummyVecEnv``,
all sharing the models' contexts (one SearchSpace and evaluator per model), so every episode samples a
model, a preference and a budget from its env's seeded ``np_random``. It trains
``MaskablePPO("MlpPolicy", vec_env, seed=seed, tensorboard_log=out/tb)`` with:

* ``CheckpointCallback`` every ``checkpoint_every`` timesteps into ``out/checkpoints/`` (``--resume``
  loads the newest and continues up to ``timesteps`` total, appending to the same TensorBoard run);
* :class:`agents.callbacks.SurgeryMetricsCallback`: ``surgery/`` metrics and, every ``hv_every``
  timesteps, the hypervolume of the policy's front on each training model.

``knobs`` may name session knobs (``kv_precision``, ``kv_budget``, ``kv_tier``, ``kv_window``, ``prefetch``,
``prefetch_depth``): the env's layout then grows (``envs.observation.layout_for``) and the policy decides
them in a last ``"<session>"`` step; without them the layout is the default one.

The output folder gets ``policy.zip`` and ``policy.json`` (``agents.policy_io``: layout, knobs, device
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
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autosurgeon._logging import get_logger
from autosurgeon.errors import InvalidArgumentError

logger = get_logger(__name__)


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


def latest_checkpoint(folder: str | os.PathLike[str]) -> Path | None:
    """The newest ``policy_<N>_steps.zip`` under ``folder/checkpoints`` (largest N), or None."""
    ckpts = Path(folder) / "checkpoints"
    best, best_n = None, -1
    for p in ckpts.glob("policy_*_steps.zip") if ckpts.is_dir() else ():
        m = re.fullmatch(r"policy_(\d+)_steps\.zip", p.name)
        if m and int(m.group(1)) > best_n:
            best, best_n = p, int(m.group(1))
    return best


def make_vec_env(*, models: Sequence[str], profile: Any, evaluator: str, knobs: Sequence[str], sensitivity: bool,
                 n_envs: int, seed: int, power_cap_w: float | None = None) -> Any:
    """``n_envs`` Monitor-wrapped SurgeryEnvs in a DummyVecEnv, env ``r`` seeded ``seed + r``."""
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    from envs.surgery import SurgeryEnv

    def make(rank: int) -> Any:
        def _init() -> Any:
            env = SurgeryEnv(models=models, device=profile, evaluator=evaluator, knobs=knobs, sensitivity=sensitivity,
                             power_cap_w=power_cap_w)
            env.reset(seed=seed + rank)
            return Monitor(env)
        return _init

    vec = DummyVecEnv([make(r) for r in range(n_envs)])
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
          warm_start: Any = None, runtime_every: int = 0, power_cap_w: float | None = None) -> TrainResult:
    """Train (or resume) a policy; see the module docstring. Returns where it was saved.

    ``max_seconds`` stops learning early after that much wall time (the policy is saved as it is).
    ``warm_start``: a callable taking the fresh model before learning (e.g. ``agents.warm_start.markov_warm_start``;
    ignored on resume); what it returns is saved in policy.json under ``warm_start``. ``runtime_every``: run
    the policy's plan on the runtime every that many timesteps (``SurgeryMetricsCallback``; this machine only).
    ``power_cap_w``: train under a power cap in watts (module docstring).
    """
    from sb3_contrib import MaskablePPO
    from stable_baselines3.common.callbacks import CallbackList, CheckpointCallback

    from agents.callbacks import StopAfterSeconds, SurgeryMetricsCallback
    from agents.policy_io import device_class, write_meta
    from autosurgeon.hardware.resolve import resolve_profile
    from envs.surgery import SurgeryEnv

    models = model_list(models)
    if timesteps < 1:
        raise InvalidArgumentError(f"`--timesteps` must be >= 1, got {timesteps}.")
    if n_envs < 1:
        raise InvalidArgumentError(f"`--n-envs` must be >= 1, got {n_envs}.")
    settings = settings or PPOSettings()
    out = Path(out)
    ckpt = latest_checkpoint(out) if resume else None
    if resume and ckpt is None:
        raise InvalidArgumentError(f"`--resume`: no checkpoint under {out / 'checkpoints'}; train without --resume.")
    profile = resolve_profile(device)
    if power_cap_w is not None:
        from autosurgeon.hardware.power_cap import resolve_power_cap

        resolve_power_cap(profile, power_cap_w)  # a cap below every mode fails here, before anything is built
    started = time.perf_counter()

    vec = make_vec_env(models=models, profile=profile, evaluator=evaluator, knobs=knobs, sensitivity=sensitivity,
                       n_envs=n_envs, seed=seed, power_cap_w=power_cap_w)
    tb = str(out / "tb")
    if ckpt is not None:
        try:
            model = MaskablePPO.load(ckpt, env=vec, device="cpu", tensorboard_log=tb)
        except ValueError as exc:  # SB3: the checkpoint's spaces differ from the env's (another knob set)
            raise InvalidArgumentError(
                f"`--resume`: checkpoint {ckpt} does not fit an env with knobs {','.join(knobs)} ({exc}); "
                "resume with the knobs it was trained with.") from None
        logger.info("resuming %s at %d timesteps", ckpt, model.num_timesteps)
    else:
        model = new_model(vec, settings=settings, seed=seed, tensorboard_log=tb)
    warm_info = warm_start(model) if warm_start is not None and ckpt is None else None
    front_env = SurgeryEnv(models=models, device=profile, evaluator=evaluator, knobs=knobs, sensitivity=sensitivity,
                           power_cap_w=power_cap_w)
    power = None if front_env.power_cap is None else front_env.power_cap.to_dict()
    if runtime_every and not (profile.measured and profile.fingerprint == resolve_profile("local").fingerprint):
        raise InvalidArgumentError(f"`--runtime-every` runs plans on this machine; `--device` {profile.name!r} is "
                                   "not this machine's profile (use --device local or drop --runtime-every).")
    metrics_cb = SurgeryMetricsCallback(front_env=front_env, hv_every=hv_every, hv_preferences=hv_preferences,
                                        runtime_every=runtime_every,
                                        hparams={"device": profile.name, "evaluator": evaluator, "seed": seed,
                                                 "power_cap_w": "none" if power is None else power["power_cap_w"],
                                                 "power_mode": front_env.power_mode_name})
    callbacks = CallbackList([CheckpointCallback(save_freq=max(checkpoint_every // n_envs, 1),
                                                 save_path=str(out / "checkpoints"), name_prefix="policy"),
                              metrics_cb, *([StopAfterSeconds(max_seconds)] if max_seconds else [])])
    remaining = timesteps - model.num_timesteps
    if remaining > 0:
        model.learn(total_timesteps=remaining, callback=callbacks, reset_num_timesteps=ckpt is None,
                    tb_log_name="ppo")
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "policy.zip")
    seconds = time.perf_counter() - started
    write_meta(out, {
        "layout": front_env.layout.to_dict(), "knobs": list(knobs), "evaluator": evaluator,
        "models": models, "device_name": profile.name, "device_fingerprint": profile.fingerprint,
        "device_class": device_class(profile), "seed": seed, "n_envs": n_envs,
        "timesteps": int(model.num_timesteps), "settings": asdict(settings),
        "reward": asdict(front_env.reward_config), "budget_range": list(front_env.budget_range),
        "obs_stats": metrics_cb.obs_stats(), "warm_start": warm_info, "history": metrics_cb.history,
        "budget_shield": front_env.budget_shield,
        "power": power, "power_mode": front_env.power_mode_name,
        "train_seconds": seconds,
        "spaces": {ctx.spec: ctx.space.digest() for ctx in front_env.contexts}})
    logger.info("policy saved to %s after %d timesteps (%.1f s)", out, model.num_timesteps, seconds)
    return TrainResult(out=out, timesteps=int(model.num_timesteps), seconds=seconds, history=metrics_cb.history)


__all__ = ["PPOSettings", "TrainResult", "latest_checkpoint", "make_vec_env", "new_model", "train"]
