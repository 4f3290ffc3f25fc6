"""Warm start: behaviour cloning of the policy on Markov-model samples before PPO.

The Markov placement model (``agents.markov``, fitted on earlier Pareto fronts) proposes whole plans.
:func:`demonstrations` turns its samples into (observation, action, mask) triples by replaying each
sampled vector through a :class:`envs.surgery.SurgeryEnv` episode (with the episode's sampled preference
and budget, so observations follow the training distribution): at every decision unit, the action is
the Markov sample's choice for each of the unit's knobs (steps whose action the masks refuse — the
budget shield, which Markov samples ignore — are replayed but left out of the demonstrations). :func:`behaviour_cloning` then maximises the
masked policy's log-likelihood of those actions (Adam, minibatches) — the actor learns the prior, the
critic is left to PPO. Markov samples ignore the preference, so the clone is a preference-blind prior
that PPO must then specialise.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from autosurgeon._logging import get_logger
from envs.surgery import SurgeryEnv

logger = get_logger(__name__)


def demonstrations(markov: Any, env: Any, *, episodes: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(obs (N, D) float32, actions (N, len(env.layout.action_knobs)) int64, masks (N, sum choices) bool)."""
    knobs = env.layout.action_knobs  # the env's own layout: session knobs are in it when the env decides them
    rng = np.random.default_rng(seed)
    obs_rows, act_rows, mask_rows = [], [], []
    for e in range(episodes):
        obs, _ = env.reset(seed=seed + e)
        x = markov.sample(env.ctx.space, 1, rng)[0]
        for unit in env.ctx.units:
            action = np.zeros(len(knobs), dtype=np.int64)
            for i in unit.variables:
                action[knobs.index(env.ctx.space.variables[i].knob)] = int(x[i])
            mask = env.action_masks()
            offsets = np.cumsum([0, *env.layout.max_choices[:-1]])
            if all(mask[o + a] for o, a in zip(offsets, action)):
                # A step the masks refuse (e.g. the budget shield: Markov samples ignore the budget) has
                # probability 0 under the masked policy: it is replayed but not imitated.
                obs_rows.append(obs)
                act_rows.append(action)
                mask_rows.append(mask)
            obs, _, _, _, _ = env.step(action)
    return np.asarray(obs_rows, np.float32), np.asarray(act_rows, np.int64), np.asarray(mask_rows, bool)


def behaviour_cloning(model: Any, obs: np.ndarray, actions: np.ndarray, masks: np.ndarray, *, epochs: int = 10,
                      batch_size: int = 256, learning_rate: float = 1e-3, seed: int = 0) -> list[float]:
    """Fit the policy's actor to the demonstrations; returns the mean negative log-likelihood per epoch."""
    import torch

    policy = model.policy
    policy.set_training_mode(True)
    gen = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(policy.parameters(), lr=learning_rate)
    o, a, m = torch.as_tensor(obs), torch.as_tensor(actions), torch.as_tensor(masks)
    losses = []
    for _ in range(epochs):
        perm = torch.randperm(len(o), generator=gen)
        total, n = 0.0, 0
        for start in range(0, len(o), batch_size):
            idx = perm[start:start + batch_size]
            _, log_prob, _ = policy.evaluate_actions(o[idx], a[idx], action_masks=m[idx].numpy())
            loss = -log_prob.mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(idx)
            n += len(idx)
        losses.append(total / max(n, 1))
    policy.set_training_mode(False)
    logger.info("behaviour cloning on %d steps: NLL %.3f -> %.3f", len(o), losses[0], losses[-1])
    return losses


def markov_warm_start(markov: Any, *, models: Sequence[str], device: Any, evaluator: str = "analytic",
                      episodes: int = 200, epochs: int = 10, seed: int = 0,
                      knobs: Sequence[str] | None = None) -> Callable[[Any], dict[str, Any]]:
    """A ``warm_start`` hook for ``agents.ppo.train``: clone ``markov`` into a fresh model before PPO."""

    def hook(model: Any) -> dict[str, Any]:
        extra = {"knobs": tuple(knobs)} if knobs is not None else {}  # must match the policy's layout
        env = SurgeryEnv(models=list(models), device=device, evaluator=evaluator, **extra)
        obs, actions, masks = demonstrations(markov, env, episodes=episodes, seed=seed)
        losses = behaviour_cloning(model, obs, actions, masks, epochs=epochs, seed=seed)
        return {"warm_start": "markov-bc", "demo_steps": len(obs), "episodes": episodes, "nll": losses}

    return hook


__all__ = ["behaviour_cloning", "demonstrations", "markov_warm_start"]
