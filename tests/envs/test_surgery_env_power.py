"""SurgeryEnv under a power cap: a paper profile works in the capped mode (plans within the cap), a measured
profile penalises plans above the cap like the memory budget, and bad caps are refused clearly."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from autosurgeon.errors import InvalidArgumentError
from autosurgeon.metrics import Metrics
from envs.observation import ACTION_KNOBS, OBJECTIVES
from envs.reward import RewardConfig, episode_reward
from envs.surgery import SurgeryEnv
from tests.autosurgeon._paper_profiles import paper_cpu_profile


def _episode(env: SurgeryEnv, seed: int = 0) -> tuple[float, dict]:
    env.reset(seed=seed, options={"preference": [1 / 3] * 3, "budget_fraction": 1.0})
    done, reward, info = False, 0.0, {}
    while not done:
        _, reward, done, _, info = env.step(np.zeros(len(ACTION_KNOBS), dtype=np.int64))
    return reward, info


def test_paper_profile_runs_in_the_capped_mode() -> None:
    env = SurgeryEnv(models="tiny-llama-test", device="jetson-agx-orin-64gb", power_cap_w=15)
    free = SurgeryEnv(models="tiny-llama-test", device="jetson-agx-orin-64gb")
    assert env.profile.power_mode == "15W" and env.power_mode_name == "15W" and env.power_cap.derated
    assert free.power_cap is None and free.power_mode_name == "MAXN"
    assert env.ctx is not free.ctx  # the context cache tells the modes apart
    _, info = _episode(env)
    assert info["power_w"] <= 15.0 and not info["power_violation"] and info["power_cap_w"] == 15.0
    assert env.ctx.base.latency_s > free.ctx.base.latency_s  # lower clocks at 15 W
    assert "power_w" not in _episode(free)[1]


def test_measured_profile_penalises_plans_over_the_cap() -> None:
    measured = dataclasses.replace(paper_cpu_profile(name="host"), measured=True)
    env = SurgeryEnv(models="tiny-llama-test", device=measured, power_cap_w=1.0)  # below idle: always over
    assert env.profile is measured and not env.power_cap.derated
    reward, info = _episode(env)
    assert info["power_violation"] and info["power_w"] > 1.0
    assert reward == pytest.approx(info["improvement"] - (1.0 + (info["power_w"] - 1.0) / 1.0))


def test_reward_power_term() -> None:
    base = Metrics(latency_s=1.0, peak_bytes={"cpu": 100}, energy_j=10.0,
                   labels={"latency_s": "estimated", "peak_bytes": "estimated", "energy_j": "estimated"})
    plan = dataclasses.replace(base, energy_j=20.0)  # 20 W mean
    pref = np.full(len(OBJECTIVES), 1 / 3)
    config = RewardConfig(power_penalty=2.0)
    r0, i0 = episode_reward(plan, base, pref, objectives=OBJECTIVES, memory_budget=None, config=config)
    r1, i1 = episode_reward(plan, base, pref, objectives=OBJECTIVES, memory_budget=None, config=config,
                            power_cap_w=16.0)
    r2, i2 = episode_reward(plan, base, pref, objectives=OBJECTIVES, memory_budget=None, config=config,
                            power_cap_w=25.0)
    assert "power_w" not in i0 and i1["power_violation"] and not i2["power_violation"]
    assert r1 == pytest.approx(r0 - 2.0 * (1 + 4.0 / 16.0)) and r2 == pytest.approx(r0)
    with pytest.raises(InvalidArgumentError, match="`power_penalty` must be >= 0"):
        RewardConfig(power_penalty=-1)


@pytest.mark.parametrize("cap, match", [(0, r"`power_cap_w` must be a power in watts > 0"),
                                        (10, r"`power_cap_w` 10 W is below every power mode")])
def test_bad_caps(cap, match) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        SurgeryEnv(models="tiny-llama-test", device="jetson-agx-orin-64gb", power_cap_w=cap)
