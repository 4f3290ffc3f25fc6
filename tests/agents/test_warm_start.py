"""Warm start: Markov-sampled demonstrations respect the masks, and behaviour cloning fits them."""
from __future__ import annotations

import numpy as np

from agents.markov import MarkovPlacementModel
from agents.ppo import PPOSettings, make_vec_env, new_model
from agents.warm_start import behaviour_cloning, demonstrations
from autosurgeon.hardware.resolve import resolve_profile
from envs.surgery import SurgeryEnv


def test_demonstrations_and_cloning() -> None:
    profile = resolve_profile("h100-80gb")
    env = SurgeryEnv(models=["tiny-llama-test"], device=profile)
    space = env.contexts[0].space
    rng = np.random.default_rng(0)
    # A prior that always quantizes to the same plan: one random valid vector, seen many times.
    target = space.random_vector(rng)
    markov = MarkovPlacementModel().fit([(space, target)] * 20)
    obs, actions, masks = demonstrations(markov, env, episodes=6, seed=0)
    assert len(obs) > 0 and obs.shape[1] == env.observation_space.shape[0]
    offsets = np.cumsum([0, *env.layout.max_choices[:-1]])
    assert all(m[offsets + a].all() for a, m in zip(actions, masks))  # only steps the masks allow
    vec = make_vec_env(models=["tiny-llama-test"], profile=profile, evaluator="analytic",
                       knobs=("precision", "placement"), sensitivity=False, n_envs=1, seed=0)
    model = new_model(vec, settings=PPOSettings(n_steps=64, batch_size=64), seed=0, tensorboard_log=None)
    losses = behaviour_cloning(model, obs, actions, masks, epochs=15, batch_size=64, learning_rate=3e-3)
    # The floor is the prior's own entropy (smoothed Markov samples vary), so ask for a clear drop, not 0.
    assert losses[-1] < 0.75 * losses[0]


def test_demonstrations_follow_the_envs_layout_with_session_knobs() -> None:
    knobs = ("precision", "placement", "kv_precision", "prefetch_depth")
    env = SurgeryEnv(models=["tiny-llama-test"], device=resolve_profile("h100-80gb"), knobs=knobs)
    space = env.contexts[0].space
    target = space.random_vector(np.random.default_rng(1))
    markov = MarkovPlacementModel().fit([(space, target)] * 20)
    obs, actions, masks = demonstrations(markov, env, episodes=3, seed=0)
    assert actions.shape[1] == len(env.layout.action_knobs) > 6
    offsets = np.cumsum([0, *env.layout.max_choices[:-1]])
    assert all(m[offsets + a].all() for a, m in zip(actions, masks))
    # The session step is among the demonstrations: its KV precision column takes the prior's value.
    col = env.layout.action_knobs.index("kv_precision")
    kv_var = next(i for i, v in enumerate(space.variables) if v.knob == "kv_precision")
    assert int(target[kv_var]) in set(actions[:, col].tolist())
