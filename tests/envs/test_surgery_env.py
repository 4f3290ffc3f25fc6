"""SurgeryEnv: both libraries' env checkers on every registered AutoSurgeon env, masks, reward, options."""
from __future__ import annotations

import gymnasium
import numpy as np
import pytest

import envs  # noqa: F401  (registers the ids)
from autosurgeon.errors import InvalidArgumentError
from envs.observation import ACTION_KNOBS, MAX_CHOICES, ObservationLayout
from envs.surgery import SurgeryEnv, parse_preference

PRESET = "h100-80gb"  # a paper profile: no measuring, the analytic evaluator runs on the meta model
ENV_IDS = sorted(i for i in gymnasium.registry if i.startswith("AutoSurgeon/"))


def test_registered() -> None:
    assert "AutoSurgeon/Surgery-v0" in ENV_IDS
    spec = gymnasium.spec("AutoSurgeon/Surgery-v0")
    assert spec.nondeterministic and spec.max_episode_steps is None
    assert spec.entry_point == "envs.surgery:SurgeryEnv"


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_env_checkers(env_id: str) -> None:
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    env = gymnasium.make(env_id, device=PRESET, models=["tiny-llama-test", "digits-cnn"])
    gym_check(env.unwrapped, skip_render_check=True)
    sb3_check(env.unwrapped, warn=True)


def test_make_with_defaults_runs_an_episode() -> None:
    env = gymnasium.make("AutoSurgeon/Surgery-v0")  # tiny-llama-test on meta, local profile, analytic
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs) and info["model"] == "tiny-llama-test"
    steps, done = 0, False
    while not done:
        obs, reward, done, truncated, info = env.step(np.zeros(len(ACTION_KNOBS), dtype=np.int64))
        steps += 1
        assert not truncated
    assert steps == len(env.unwrapped.ctx.units)
    # The unmodified plan: no improvement; its memory equals the baseline, so never above a budget >= smallest.
    assert info["improvement"] == pytest.approx(0.0, abs=1e-12)
    assert info["plan_vector"] == [0] * len(env.unwrapped.ctx.space)


@pytest.fixture(scope="module")
def env() -> SurgeryEnv:
    return SurgeryEnv(models=["tiny-llama-test", "digits-cnn"], device=PRESET)


def test_spaces_are_model_agnostic(env: SurgeryEnv) -> None:
    other = SurgeryEnv(models="digits-cnn", device="jetson-orin-nano-8gb")
    assert env.action_space == other.action_space
    assert env.observation_space == other.observation_space
    assert list(env.action_space.nvec) == [MAX_CHOICES[k] for k in ACTION_KNOBS]
    assert env.observation_space.shape == (ObservationLayout().size,)


def test_masked_random_episodes_give_valid_plans_without_repair(env: SurgeryEnv) -> None:
    rng = np.random.default_rng(0)
    sizes = env.layout.max_choices
    for episode in range(6):
        env.reset(seed=episode)
        done = False
        while not done:
            mask = env.action_masks()
            assert mask.shape == (sum(sizes),) and mask.dtype == bool
            action, offset = [], 0
            for n in sizes:
                valid = np.nonzero(mask[offset:offset + n])[0]
                assert valid.size >= 1
                action.append(int(rng.choice(valid)))
                offset += n
            _, reward, done, _, info = env.step(np.array(action))
        assert info["repaired"] == 0  # default knobs: every masked action is valid as taken
        assert env.ctx.space.is_valid(np.array(info["plan_vector"]))
        assert np.isfinite(reward)


def test_invalid_action_is_repaired_not_applied(env: SurgeryEnv) -> None:
    env.reset(seed=0, options={"model": "tiny-llama-test"})
    space = env.ctx.space
    bad = np.full(len(ACTION_KNOBS), 5)  # placement index 5 = "dla": absent on an H100 profile
    env.step(bad)
    assert space.variables[env.ctx.units[0].variables[0]].choices[env.x[env.ctx.units[0].variables[0]]] != "dla"
    assert env.repaired >= 1


def test_reward_formula_and_budget_penalty(env: SurgeryEnv) -> None:
    ctx = env.contexts[0]
    # The unmodified plan: 0 under a budget it meets, the fixed + excess penalty under half of it.
    env.reset(seed=0, options={"model": 0, "preference": [0.0, 1.0, 0.0], "budget_fraction": 1.0})
    done = False
    while not done:
        _, reward, done, _, info = env.step(np.zeros(len(ACTION_KNOBS), dtype=np.int64))
    assert reward == pytest.approx(0.0, abs=1e-12) and not info["memory_violation"]
    budget = ctx.base.objective("memory") * 0.5
    env.reset(seed=0, options={"model": 0, "preference": [0.0, 1.0, 0.0], "memory_budget": budget})
    done = False
    while not done:
        _, reward, done, _, info = env.step(np.zeros(len(ACTION_KNOBS), dtype=np.int64))
    # memory = base = 2 x budget: penalty 1 + (2 - 1) = 2, improvement 0.
    assert info["memory_violation"] and reward == pytest.approx(-2.0, rel=1e-9)


def test_reset_options_and_seed_determinism(env: SurgeryEnv) -> None:
    a, ia = env.reset(seed=3)
    b, ib = env.reset(seed=3)
    assert np.array_equal(a, b) and ia == ib
    _, info = env.reset(seed=1, options={"preference": {"latency": 1.0}, "model": "digits-cnn"})
    assert info["preference"] == [1.0, 0.0, 0.0] and info["model"] == "digits-cnn"
    with pytest.raises(InvalidArgumentError, match="options\\['model'\\] must be one of"):
        env.reset(options={"model": "nope"})


@pytest.mark.parametrize(("value", "match"), [
    ("latency=0.5,memory=0.4", "must sum to 1.*0.9"),
    ("latency=0.5,speed=0.5", "unknown objective 'speed'"),
    ({"latency": 1.5, "memory": -0.5}, "'memory' must be a finite number >= 0, got -0.5"),
    ("latency", "objective=weight"),
    ([0.5, 0.5], "must have 3 weights"),
])
def test_bad_preferences(value: object, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        parse_preference(value)


def test_preference_string() -> None:
    assert parse_preference("latency=0.6,memory=0.3,energy=0.1").tolist() == pytest.approx([0.6, 0.3, 0.1])


@pytest.mark.parametrize("shield", [True, False])
def test_budget_shield(shield: bool) -> None:
    env = SurgeryEnv(models=["tiny-llama-test", "digits-cnn"], device=PRESET, budget_shield=shield)
    rng = np.random.default_rng(0)
    violations = 0
    for episode in range(8):
        # The tightest budget the space can reach: only the shield's masks keep random choices within it.
        env.reset(seed=episode, options={"budget_fraction": 0.0 if episode % 2 else 0.3})
        done = False
        while not done:
            mask, action, offset = env.action_masks(), [], 0
            for n in env.layout.max_choices:
                action.append(int(rng.choice(np.nonzero(mask[offset:offset + n])[0])))
                offset += n
            _, _, done, _, info = env.step(np.array(action))
        violations += info["memory_violation"]
    if shield:
        assert violations == 0
    else:
        assert violations > 0  # the same random policy without the shield misses tight budgets


def test_every_knob() -> None:
    """All six knobs: within-unit dependencies (group_size/kernel on precision) end valid through repair."""
    from gymnasium.utils.env_checker import check_env as gym_check

    from autosurgeon.knobs import KNOBS

    env = SurgeryEnv(models=["tiny-llama-test", "digits-cnn"], device=PRESET, knobs=KNOBS)
    gym_check(env, skip_render_check=True)
    rng = np.random.default_rng(1)
    for episode in range(4):
        env.reset(seed=episode)
        done = False
        while not done:
            mask, action, offset = env.action_masks(), [], 0
            for n in env.layout.max_choices:
                action.append(int(rng.choice(np.nonzero(mask[offset:offset + n])[0])))
                offset += n
            _, _, done, _, info = env.step(np.array(action))
        assert env.ctx.space.is_valid(np.array(info["plan_vector"]))
