"""The env's memory floor is the least GPU + CPU bytes a valid plan reaches (envs.smallest)."""
from __future__ import annotations

import numpy as np
import pytest

from autosurgeon.cost.footprint import plan_memory
from autosurgeon.hardware.resolve import resolve_profile
from autosurgeon.plan_check import smallest_footprint
from envs.context import build_context
from envs.smallest import smallest_budgeted


def _budgeted(space, x) -> int:
    mem = plan_memory(space, x)
    return mem.get("gpu", 0) + mem.get("cpu", 0)


@pytest.mark.parametrize("device", ["h100-80gb", "jetson-orin-nano-8gb"])
def test_floor_is_valid_and_below_the_execution_tiers_smallest(device):
    ctx = build_context("tiny-llama-test", resolve_profile(device))
    space = ctx.space
    nbytes, x = smallest_budgeted(space, execution_tier="gpu")
    assert np.array_equal(space.repair(x), x)  # a valid plan
    assert nbytes == _budgeted(space, x)
    old = _budgeted(space, smallest_footprint(space, "gpu")[1])
    assert nbytes <= old
    # The context's floor and the shield's completion are this plan.
    assert ctx.min_memory == pytest.approx(nbytes)
    assert np.array_equal(ctx.smallest, x)


def test_floor_on_a_gpu_homes_blocks_on_disk_where_streaming_from_host_leaves_gpu_plus_cpu_unchanged():
    # On the paper H100 minimising the GPU tier streams blocks from host memory (GPU + CPU stays put);
    # the floor in the budget's measure homes them on disk and is strictly smaller (session 6's floor was not).
    ctx = build_context("tiny-llama-test", resolve_profile("h100-80gb"))
    space = ctx.space
    old = _budgeted(space, smallest_footprint(space, "gpu")[1])
    assert ctx.min_memory < old
    placements = [space.variables[i].choices[ctx.smallest[i]] for i, v in enumerate(space.variables)
                  if v.knob == "placement"]
    assert placements and all(p.endswith("<-disk") for p in placements)


def test_the_env_can_ask_for_the_floor_and_the_shield_meets_it():
    from envs.surgery import SurgeryEnv

    env = SurgeryEnv(models="tiny-llama-test", device="h100-80gb")
    env.reset(seed=0, options={"budget_fraction": 0.0, "preference": [0.0, 1.0, 0.0]})
    assert env.budget == pytest.approx(env.ctx.min_memory)
    done = False
    rng = np.random.default_rng(0)
    while not done:
        mask = env.action_masks()
        action, start = [], 0
        for n in env.layout.max_choices:
            action.append(int(rng.choice(np.nonzero(mask[start:start + n])[0])))
            start += n
        _, _, done, _, info = env.step(np.array(action))
    assert info["memory_violation"] is False
