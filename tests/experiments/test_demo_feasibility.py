"""The demo refuses an infeasible budget before searching, naming the smallest share that can work."""
from __future__ import annotations

import pytest
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.knobs import KNOBS
from autosurgeon.space.search_space import SearchSpace
from autosurgeon.zoo import load_model
from experiments.demo_flow import check_budget_feasible, smallest_memory
from runtime.session import module_bytes

from tests.autosurgeon._paper_profiles import paper_cpu_profile


def test_budget_below_every_plan_is_refused_with_the_smallest_share() -> None:
    loaded = load_model("digits-cnn")
    profile = paper_cpu_profile()
    space = SearchSpace.build(loaded, profile, knobs=KNOBS)
    reference = module_bytes(loaded.model)
    floor = smallest_memory(space, profile)
    assert 0 < floor < reference
    share = -(-100 * floor // reference)
    with pytest.raises(InvalidArgumentError, match=rf"rerun with --memory-budget {share}% or more"):
        check_budget_feasible(space, profile, floor - 1, reference, "1%")
    check_budget_feasible(space, profile, floor, reference, f"{share}%")  # feasible: no error


def test_the_floor_is_one_plans_memory_not_each_tiers_least_summed() -> None:
    """The floor is what one valid plan reaches on GPU + CPU (envs.smallest), so a budget at it can be met."""
    from autosurgeon.cost.footprint import plan_memory
    from envs.smallest import smallest_budgeted

    loaded = load_model("digits-cnn")
    profile = paper_cpu_profile()
    space = SearchSpace.build(loaded, profile, knobs=KNOBS)
    nbytes, x = smallest_budgeted(space, execution_tier="cpu")
    tiers = plan_memory(space, space.repair(x))
    assert smallest_memory(space, profile) == nbytes == tiers.get("gpu", 0) + tiers.get("cpu", 0)
