"""The reward's per-objective scores: divided by the reachable gain, capped, so no objective swamps a preference."""
from __future__ import annotations

import numpy as np
import pytest

from autosurgeon.errors import InvalidArgumentError
from autosurgeon.metrics import Metrics
from envs.observation import OBJECTIVES
from envs.reward import RewardConfig, deviations, episode_reward, improvement_of, objective_scores
from envs.reward_scale import reachable_gains, reference_vectors
from envs.surgery import SurgeryEnv

REACH = RewardConfig(scale="reachable")  # the opt-in reward (the default is version 0's raw one)


def _metrics(latency: float, memory: int, energy: float) -> Metrics:
    return Metrics(latency_s=latency, peak_bytes={"gpu": memory}, energy_j=energy,
                   labels={"latency_s": "estimated", "peak_bytes": "estimated", "energy_j": "estimated"})


def test_scores_are_scaled_by_the_reachable_gain_and_capped() -> None:
    config = REACH
    gains = np.array([0.0, 0.8, 0.4])  # latency: nothing improves it; memory up to 80 %; energy up to 40 %
    # 64x slower, a fifth of the memory, 32x the energy: as streaming a 7B shape's blocks on a paper H100.
    scores = objective_scores(np.array([64.0, 0.2, 32.0]), gains, config)
    assert scores.tolist() == pytest.approx([-6.0, 1.0, -5.0])  # losses in doublings, gains over the reachable
    # gains over the scale (the floor 0.1 where nothing improves the objective), capped at 1; losses capped at 8
    assert objective_scores(np.array([0.99, 0.6, 0.9]), gains, config).tolist() == pytest.approx([0.1, 0.5, 0.25])
    assert objective_scores(np.array([1e6, 0.01, 1.0]), gains, config).tolist() == pytest.approx([-8.0, 1.0, 0.0])
    # a loss keeps its slope: one more doubling always costs more (a hard cap made further losses free)
    assert objective_scores(np.array([128.0, 1, 1]), gains, config)[0] < scores[0]
    raw = objective_scores(np.array([64.0, 0.2, 32.0]), gains, RewardConfig(scale="raw"))
    assert raw.tolist() == pytest.approx([-63.0, 0.8, -31.0])
    assert objective_scores(np.array([64.0, 0.2, 32.0]), None, config).tolist() == pytest.approx(raw.tolist())


def test_a_memory_preference_prefers_the_memory_plan_despite_a_huge_latency_ratio() -> None:
    """Under the raw reward a pure-memory weight of 0.9 still chose the resident plan (the session-5 symptom)."""
    base = _metrics(1.0, 1000, 1.0)
    streamed, resident = _metrics(64.0, 200, 1.0), _metrics(1.0, 500, 1.0)  # 64x slower, as a 7B shape streamed
    pref = np.array([0.05, 0.95, 0.0])
    gains = np.array([0.2, 0.8, 0.5])
    kw = {"objectives": OBJECTIVES, "memory_budget": None}
    new = [episode_reward(m, base, pref, config=REACH, gains=gains, **kw)[0] for m in (streamed, resident)]
    old = [episode_reward(m, base, pref, config=RewardConfig(scale="raw"), gains=gains, **kw)[0]
           for m in (streamed, resident)]
    assert new[0] > new[1] and old[0] < old[1]
    # and a latency preference still keeps the resident plan
    lat = np.array([0.9, 0.1, 0.0])
    assert (episode_reward(streamed, base, lat, config=REACH, gains=gains, **kw)[0]
            < episode_reward(resident, base, lat, config=REACH, gains=gains, **kw)[0])


@pytest.mark.parametrize(("kwargs", "match"), [({"scale": "log"}, "`scale` must be one of reachable, raw"),
                                               ({"scalarisation": "max"}, "`scalarisation` must be one of chebyshev"),
                                               ({"rho": -1.0}, "`rho` must be a finite number >= 0"),
                                               ({"gain_floor": 0.0}, "`gain_floor` must be a finite number > 0"),
                                               ({"loss_cap": float("inf")}, "`loss_cap` must be a finite")])
def test_bad_reward_config(kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        RewardConfig(**kwargs)


def test_reachable_gains_on_a_paper_gpu() -> None:
    env = SurgeryEnv(models="tiny-llama-test", device="h100-80gb", reward=REACH)
    ctx = env.ctx
    refs = reference_vectors(ctx.space, ctx.smallest)
    assert np.array_equal(refs[0], ctx.space.default_vector()) and len({r.tobytes() for r in refs}) == len(refs)
    gains = ctx.gains
    assert gains is not None and gains.shape == (len(OBJECTIVES),) and np.all(gains >= 0)
    # memory: the smallest plan (GPU + CPU, envs.smallest: its blocks homed on disk) is a reference
    assert gains[1] >= 1.0 - ctx.min_memory / ctx.base.objective("memory") - 1e-9
    assert any("<-disk" in str(ctx.space.variables[i].choices[refs[1][i]]) for i in range(len(refs[1])))
    assert np.array_equal(gains, reachable_gains(ctx.estimator, ctx.space, ctx.base, ctx.smallest, OBJECTIVES))
    # a finished episode reports its scores, within the caps
    env.reset(seed=0, options={"preference": [0.2, 0.5, 0.3]})
    done = False
    while not done:
        _, _, done, _, info = env.step(np.zeros(len(env.layout.action_knobs), dtype=np.int64))
    assert len(info["scores"]) == 3 and all(-8.0 <= s <= 1.0 for s in info["scores"])


def test_shaped_return_telescopes_to_the_episode_reward() -> None:
    """Potential-based shaping: with gamma 1 the shaped steps sum to the unshaped episode's reward, and every
    quantizing step is credited at once (a positive step reward under a memory preference)."""
    kw = {"models": "tiny-llama-test", "device": "h100-80gb", "reward": REACH}
    plain, shaped = SurgeryEnv(**kw), SurgeryEnv(**kw, reward_shaping=True, shaping_gamma=1.0)
    options = {"preference": [0.0, 1.0, 0.0], "budget_fraction": 1.0}
    returns, step_rewards = [], []
    for env in (plain, shaped):
        env.reset(seed=0, options=options)
        total, done, rewards = 0.0, False, []
        while not done:
            action = np.zeros(len(env.layout.action_knobs), dtype=np.int64)
            mask = env.action_masks()
            p = env.layout.action_knobs.index("precision")
            offset = sum(env.layout.max_choices[:p])
            allowed = np.nonzero(mask[offset:offset + env.layout.max_choices[p]])[0]
            action[p] = allowed[-1]  # the last allowed precision: a quantized one where the unit has the knob
            _, r, done, _, info = env.step(action)
            total += r
            rewards.append(r)
        returns.append(total)
        step_rewards.append(rewards)
    assert returns[1] == pytest.approx(returns[0], abs=1e-9) and info["improvement"] > 0
    assert all(r == 0.0 for r in step_rewards[0][:-1]) and max(step_rewards[1][:-1]) > 0
    with pytest.raises(InvalidArgumentError, match="`shaping_gamma` must be in"):
        SurgeryEnv(**kw, shaping_gamma=0.0)


def test_chebyshev_spreads_preferences_along_a_front_the_weighted_sum_reaches_only_at_its_ends() -> None:
    """Small model on a big GPU: resident plans' latency is flat, streaming trades latency for memory. Three plans
    on a front (ratios latency, memory, energy): resident, half streamed, all streamed."""
    gains = np.array([0.0, 0.88, 0.0])
    plans = {"resident": [1.0, 0.29, 1.0], "half": [1.1, 0.2, 1.1], "all": [1.42, 0.12, 1.42]}
    prefs = [np.array(w) for w in ([1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 1.0, 0.0])]

    def best(config: RewardConfig) -> list[str]:
        return [max(plans, key=lambda k: improvement_of(np.array(plans[k]), gains, w, config)[0]) for w in prefs]

    assert best(RewardConfig(scale="reachable", scalarisation="weighted-sum")) == ["resident", "resident", "all"]
    assert best(REACH) == ["resident", "half", "all"]  # Chebyshev (default): the middle one too
    # deviations: 0 at the reachable best, 1 at the unmodified ratio (gain above the floor), +1 per doubling
    d = deviations(np.array([1.0, 0.12, 2.0]), gains, REACH)
    assert d.tolist() == pytest.approx([0.0, 0.0, 1.0])
    assert deviations(np.array([1.0, 1.0, 1.0]), np.array([0.5, 0.5, 0.5]), REACH).tolist() == [1.0] * 3
    # the unmodified plan improves nothing under either scalarisation
    for config in (REACH, RewardConfig(scale="reachable", scalarisation="weighted-sum"), RewardConfig()):
        assert improvement_of(np.ones(3), np.array([0.3, 0.7, 0.2]), prefs[1], config)[0] == pytest.approx(0.0)
