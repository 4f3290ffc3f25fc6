"""Training checkpoints as data: ``checkpoints/step_<N>/`` = ``state.safetensors`` + ``state.json``; never pickled.

A checkpoint is taken at a rollout boundary (the start of a rollout, or the end of ``learn``), where the whole
state of training is small and explicit:

* tensors (``state.safetensors``): the policy's weights (``policy.*``), the Adam state (``optim.<i>.<key>``),
  torch's CPU RNG state, the last observations and episode starts of the vectorised env;
* JSON (``state.json``): counters (timesteps, updates, episodes, progress), Adam's param groups, numpy's and
  Python's global RNG states, each env's state (``SurgeryEnv.state_dict``: model, preference, budget, partial
  plan, step, its ``np_random``) and its ``Monitor``'s episode so far, the episode-info buffer, the metrics
  callback's state (history, observation statistics, next hypervolume step), the run's settings (knobs,
  models, seed, n_envs, PPO settings, network architecture) and the sha256 of the tensors file.

Resuming from it continues bit for bit: a run killed at any point and resumed from its newest checkpoint ends
with the same weights and the same history as an uninterrupted one (``tests/agents/test_train_resume.py``).
A checkpoint is written into a temp folder and renamed into place, so a kill leaves a whole one or none;
one that fails to read or to match its digest is skipped with a warning for the previous valid one.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from agents.policy_store import file_digest, network_spec, read_tensors, write_tensors
from autosurgeon._logging import get_logger
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.files.envelope import unwrap

logger = get_logger(__name__)

STATE_TYPE = "autosurgeon.TrainCheckpoint"
STATE_VERSION = 1
_STEP = re.compile(r"step_(\d+)")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    return obj


def _monitor_state(env: Any) -> dict[str, Any]:
    return {"rewards": [float(r) for r in env.rewards], "needs_reset": bool(env.needs_reset),
            "total_steps": int(env.total_steps), "episode_returns": [float(r) for r in env.episode_returns],
            "episode_lengths": [int(n) for n in env.episode_lengths],
            "episode_times": [float(t) for t in env.episode_times]}


def _set_monitor_state(env: Any, state: Mapping[str, Any]) -> None:
    env.rewards = list(state["rewards"])
    env.needs_reset = bool(state["needs_reset"])
    env.total_steps = int(state["total_steps"])
    env.episode_returns = list(state["episode_returns"])
    env.episode_lengths = list(state["episode_lengths"])
    env.episode_times = list(state["episode_times"])


def capture(model: Any, *, metrics: Any, run: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(tensors, json)`` of the training state of ``model`` (a MaskablePPO) at a rollout boundary."""
    import torch

    tensors: dict[str, Any] = {f"policy.{k}": v for k, v in model.policy.state_dict().items()}
    optim = model.policy.optimizer.state_dict()
    optim_scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in optim["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                optim_scalars.setdefault(str(idx), {})[key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["last_obs"] = torch.as_tensor(np.asarray(model._last_obs))
    tensors["last_episode_starts"] = torch.as_tensor(np.asarray(model._last_episode_starts, dtype=bool))
    np_state = np.random.get_state()
    envs = model.get_env().envs
    state = {
        "num_timesteps": int(model.num_timesteps), "n_updates": int(model._n_updates),
        "episode_num": int(model._episode_num), "progress_remaining": float(model._current_progress_remaining),
        "optim_param_groups": _jsonable(optim["param_groups"]), "optim_scalars": _jsonable(optim_scalars),
        "rng_numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "rng_python": _jsonable(random.getstate()),
        "envs": [{"env": e.unwrapped.state_dict(), "monitor": _monitor_state(e)} for e in envs],
        "ep_info_buffer": _jsonable(list(model.ep_info_buffer or [])),
        "ep_success_buffer": _jsonable(list(model.ep_success_buffer or [])),
        "metrics": metrics.state_dict(),
        "network": network_spec(model.policy),
        "run": _jsonable(dict(run)),
    }
    return tensors, state


def restore(model: Any, tensors: Mapping[str, Any], state: Mapping[str, Any], *, metrics: Any) -> None:
    """Put ``model`` (a fresh MaskablePPO on a fresh vec env of the same run) and ``metrics`` back in ``state``."""
    import torch

    model.policy.load_state_dict({k[len("policy."):]: v for k, v in tensors.items() if k.startswith("policy.")},
                                 strict=True)
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else dict(g) for g in state["optim_param_groups"]]
    optim_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            optim_state.setdefault(int(idx), {})[name] = value
    for idx, entry in state["optim_scalars"].items():
        optim_state.setdefault(int(idx), {}).update(entry)
    model.policy.optimizer.load_state_dict({"state": optim_state, "param_groups": groups})
    model.num_timesteps = int(state["num_timesteps"])
    model._n_updates = int(state["n_updates"])
    model._episode_num = int(state["episode_num"])
    model._current_progress_remaining = float(state["progress_remaining"])
    model._last_obs = tensors["last_obs"].numpy().copy()
    model._last_episode_starts = tensors["last_episode_starts"].numpy().copy()
    from collections import deque

    model.ep_info_buffer = deque(state["ep_info_buffer"], maxlen=model._stats_window_size)
    model.ep_success_buffer = deque(state["ep_success_buffer"], maxlen=model._stats_window_size)
    vec = model.get_env()
    for env, saved in zip(vec.envs, state["envs"]):
        env.unwrapped.load_state_dict(saved["env"])
        _set_monitor_state(env, saved["monitor"])
    vec._seeds = [None] * vec.num_envs  # the saved envs are mid-run: nothing may reseed them
    metrics.load_state_dict(state["metrics"])
    name, keys, pos, has_gauss, cached = state["rng_numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["rng_python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(tensors["rng.torch"])


def save_checkpoint(folder: str | os.PathLike[str], model: Any, *, metrics: Any, run: Mapping[str, Any]) -> Path:
    """``folder/checkpoints/step_<N>/`` for the model's current timestep, written atomically (module docstring)."""
    root = Path(folder) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{int(model.num_timesteps)}"
    if final.is_dir():
        return final
    tensors, state = capture(model, metrics=metrics, run=run)
    tmp = root / f".step_{int(model.num_timesteps)}.{os.getpid()}.tmp"
    try:
        tmp.mkdir()
        write_tensors(tmp / "state.safetensors", tensors)
        state["tensors_sha256"] = file_digest(tmp / "state.safetensors")
        (tmp / "state.json").write_text(json.dumps({"_type": STATE_TYPE, "_version": STATE_VERSION,
                                                    "_data": state}))
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def checkpoints(folder: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """``(step, path)`` of every checkpoint folder under ``folder/checkpoints``, newest first."""
    root = Path(folder) / "checkpoints"
    found = [(int(m.group(1)), p) for p in (root.iterdir() if root.is_dir() else ())
             if (m := _STEP.fullmatch(p.name)) and p.is_dir()]
    return sorted(found, reverse=True)


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(tensors, state)`` of one checkpoint; InvalidArgumentError naming what is wrong with it."""

    path = Path(path)
    source = f"checkpoint {str(path)!r}"
    try:
        text = (path / "state.json").read_text(encoding="utf-8")
        state = unwrap(text, type_name=STATE_TYPE, version=STATE_VERSION, what="checkpoint", source=source,
                       fix="resume from another checkpoint or train without --resume")
    except (OSError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidArgumentError(f"{source}: state.json unreadable ({type(exc).__name__}); "
                                   "train without --resume.") from None
    digest = state.get("tensors_sha256")
    if not (path / "state.safetensors").is_file() or file_digest(path / "state.safetensors") != digest:
        raise InvalidArgumentError(f"{source}: state.safetensors is missing or does not match its recorded sha256; "
                                   "it was altered or torn.")
    tensors = read_tensors(path / "state.safetensors", source=source, fix="train without --resume",
                           error=InvalidArgumentError)
    return tensors, state


def latest_valid(folder: str | os.PathLike[str]) -> tuple[Path, dict[str, Any], dict[str, Any]] | None:
    """The newest checkpoint that reads back whole, with a warning for each newer one skipped; None if none."""
    for _, path in checkpoints(folder):
        try:
            tensors, state = read_checkpoint(path)
        except InvalidArgumentError as exc:
            logger.warning("skipping checkpoint %s: %s; trying the previous one", path.name, exc)
            continue
        return path, tensors, state
    return None


class RolloutCheckpoint(BaseCallback):
    """Save a checkpoint at the start of the first rollout at or past every ``every`` timesteps."""

    def __init__(self, folder: str | os.PathLike[str], *, every: int, metrics: Any, run: Mapping[str, Any]) -> None:
        super().__init__(0)
        self.folder, self.every, self.metrics, self.run = Path(folder), max(int(every), 1), metrics, dict(run)
        self._next: int | None = None

    def _on_training_start(self) -> None:
        self._next = (self.num_timesteps // self.every + 1) * self.every

    def _on_rollout_start(self) -> None:
        if self._next is not None and self.num_timesteps >= self._next:
            save_checkpoint(self.folder, self.model, metrics=self.metrics, run=self.run)
            self._next = (self.num_timesteps // self.every + 1) * self.every

    def _on_step(self) -> bool:
        return True


__all__ = ["RolloutCheckpoint", "capture", "checkpoints", "latest_valid", "read_checkpoint", "restore",
           "save_checkpoint"]
