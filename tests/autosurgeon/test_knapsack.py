"""The knapsack planner: DP optimality against brute force, budgets, errors, and plans that pass check_plan."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from autosurgeon.errors import InvalidArgumentError
from autosurgeon.cost.footprint import plan_memory
from autosurgeon.planners.knapsack import PLANNER_KNOBS, UnitOption, parse_budget, plan_knapsack, solve, unit_options
from autosurgeon.plan_check import check_plan
from autosurgeon.quality.precision_swap import precision_units
from autosurgeon.quality.sensitivity import SensitivityTable
from autosurgeon.space.search_space import SearchSpace
from autosurgeon.zoo import LoadedModel

INPUTS = {"input_ids": torch.zeros(1, 8, dtype=torch.long)}
SCALE = {"bfloat16": 1e-5, "float16": 1e-6, "int8": 1e-4, "int4": 1e-3}


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def table(model: LlamaForCausalLM) -> SensitivityTable:
    """A synthetic table: int4 (group 64) costs ~10x int8, which costs ~10x bf16; seeded jitter per unit."""
    rng = np.random.default_rng(0)
    units = precision_units(model)
    divergence = {(u, p): float(s * rng.uniform(0.5, 2.0)) for u in units for p, s in SCALE.items()}
    return SensitivityTable(divergence=divergence, hessian={}, metric="kl_next_token", perturbation={},
                            params={u: model.get_submodule(u).weight.numel() for u in units},
                            settings={"group_size": 64}, key="synthetic")


@pytest.fixture(scope="module")
def space(model: LlamaForCausalLM) -> SearchSpace:
    return SearchSpace.build(model, "local", inputs=INPUTS, knobs=PLANNER_KNOBS)


# ---------------------------------------------------------------------------------------------- DP
def _toy(seed: int) -> list[list[UnitOption]]:
    """4 units x 3-4 options with random bytes (multiples of 64 plus odd offsets) and losses."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(4):
        n = int(rng.integers(3, 5))
        nbytes = rng.integers(1, 60, size=n) * 64 + rng.integers(0, 7, size=n)
        out.append([UnitOption("x", 128, int(b), float(rng.uniform(0, 1))) for b in nbytes])
    return out


def _brute(options: list[list[UnitOption]]) -> list[tuple[int, float, tuple[int, ...]]]:
    return [(sum(options[i][j].nbytes for i, j in enumerate(c)), sum(options[i][j].loss for i, j in enumerate(c)), c)
            for c in itertools.product(*[range(len(r)) for r in options])]


@pytest.mark.parametrize("seed", range(6))
def test_dp_matches_brute_force_for_quality_and_memory(seed: int) -> None:
    options = _toy(seed)
    combos = _brute(options)
    lo, hi = min(b for b, _, _ in combos), max(b for b, _, _ in combos)
    for capacity in np.linspace(lo, hi, 9).astype(int):
        picks = solve(options, int(capacity))
        best = min(loss for b, loss, _ in combos if b <= capacity)
        got_bytes = sum(options[i][j].nbytes for i, j in enumerate(picks))
        got_loss = sum(options[i][j].loss for i, j in enumerate(picks))
        assert got_bytes <= capacity and got_loss == pytest.approx(best, abs=1e-12)
    assert solve(options, lo - 1) is None  # below every plan
    for bound in np.quantile([loss for _, loss, _ in combos], [0.05, 0.3, 0.7]):
        picks = solve(options, None, objective="memory", bound=float(bound))
        smallest = min(b for b, loss, _ in combos if loss <= bound)
        assert sum(options[i][j].nbytes for i, j in enumerate(picks)) == smallest
        assert sum(options[i][j].loss for i, j in enumerate(picks)) <= bound + 1e-12


@pytest.mark.parametrize("seed", range(4))
def test_dp_latency_meets_both_constraints_and_is_exact_when_the_bound_is_slack(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    options = [[UnitOption(o.precision, o.group_size, o.nbytes, o.loss, float(rng.uniform(0, 1))) for o in row]
               for row in _toy(seed)]
    combos = [(b, loss, sum(options[i][j].seconds for i, j in enumerate(c))) for b, loss, c in _brute(options)]
    capacity = int(np.median([b for b, _, _ in combos]))
    picks = solve(options, capacity, objective="latency")
    assert sum(options[i][j].seconds for i, j in enumerate(picks)) == pytest.approx(
        min(s for b, _, s in combos if b <= capacity), abs=1e-12)
    bound = float(np.median([loss for _, loss, _ in combos]))
    picks = solve(options, capacity, objective="latency", bound=bound)
    feasible = [s for b, loss, s in combos if b <= capacity and loss <= bound]
    if picks is None:
        assert not feasible
        return
    got = sum(options[i][j].seconds for i, j in enumerate(picks))
    assert sum(options[i][j].nbytes for i, j in enumerate(picks)) <= capacity
    assert sum(options[i][j].loss for i, j in enumerate(picks)) <= bound + 1e-12
    assert got >= min(feasible) - 1e-12  # Lagrangian: feasible, never better than the true optimum


def test_rounded_axis_stays_feasible_and_within_its_stated_bound() -> None:
    options = _toy(3)
    combos = _brute(options)
    capacity = int(np.median([b for b, _, _ in combos]))
    span = sum(max(o.nbytes for o in r) - min(o.nbytes for o in r) for r in options)
    max_cells = 16
    quantum = -(-span // max_cells)
    picks = solve(options, capacity, max_cells=max_cells)
    got_loss = sum(options[i][j].loss for i, j in enumerate(picks))
    assert sum(options[i][j].nbytes for i, j in enumerate(picks)) <= capacity
    assert got_loss <= min(loss for b, loss, _ in combos if b <= capacity - len(options) * quantum) + 1e-12


# ---------------------------------------------------------------------------------------------- planner
def test_budget_parsing() -> None:
    assert parse_budget("25%", 1000) == 250 and parse_budget("2.5 %", 1000) == 25
    assert parse_budget("2GiB", 1) == 2 * 2**30 and parse_budget("300MB", 1) == 300_000_000
    assert parse_budget(4096, 1) == 4096
    with pytest.raises(InvalidArgumentError, match=r"`--memory-budget` must be a size such as 2GiB .* got 'abc%'"):
        parse_budget("abc%", 1000)
    with pytest.raises(InvalidArgumentError, match="positive percentage, got '0%'"):
        parse_budget("0%", 1000)
    with pytest.raises(InvalidArgumentError, match=r"unknown unit 'parsecs'.*25%"):
        parse_budget("3parsecs", 1000)


@pytest.mark.parametrize("share", ["30%", "45%", "70%"])
def test_plan_respects_the_budget_and_passes_check_plan(model: LlamaForCausalLM, table: SensitivityTable,
                                                        space: SearchSpace, share: str) -> None:
    result = plan_knapsack(model, "local", table, budget=share, space=space)
    budget = parse_budget(share, result.reference_bytes)
    assert result.objective == "quality" and result.budget == budget and not result.streamed
    assert plan_memory(space, result.plan)["cpu"] == result.tier_bytes["cpu"] <= budget
    assert check_plan(model, result.plan, "local", inputs=INPUTS, budgets={"cpu": budget}) == []
    assert np.array_equal(space.encode(result.plan), result.vector)
    options = unit_options(space, table)
    for name, (precision, group, kernel) in result.decisions.items():  # only valid, measured options
        assert (precision, group, kernel) in {(o.precision, o.group_size, o.kernel) for o in options[name]}
    assert result.exact and result.predicted_loss == pytest.approx(math.expm1(result.proxy))
    assert result.proxy == pytest.approx(table.predict_loss({n: p for n, (p, _, _) in result.decisions.items()}))


def test_tighter_budget_never_predicts_less_loss(model: LlamaForCausalLM, table: SensitivityTable,
                                                 space: SearchSpace) -> None:
    losses = [plan_knapsack(model, "local", table, budget=s, space=space).proxy for s in ("30%", "40%", "60%", "90%")]
    assert losses == sorted(losses, reverse=True) and losses[0] > losses[-1]


def test_memory_objective_is_the_smallest_plan_within_the_bound(model: LlamaForCausalLM, table: SensitivityTable,
                                                                 space: SearchSpace) -> None:
    loose = plan_knapsack(model, "local", table, max_quality_loss=0.01, space=space)
    tight = plan_knapsack(model, "local", table, max_quality_loss=0.0005, space=space)
    assert loose.objective == tight.objective == "memory"
    assert loose.predicted_loss <= 0.01 and tight.predicted_loss <= 0.0005
    assert loose.tier_bytes["cpu"] < tight.tier_bytes["cpu"]
    with pytest.raises(InvalidArgumentError, match="memory objective needs `max_quality_loss`"):
        plan_knapsack(model, "local", table, objective="memory", space=space)


def test_budget_below_every_plan_states_the_smallest_footprint(model: LlamaForCausalLM, table: SensitivityTable,
                                                               space: SearchSpace) -> None:
    with pytest.raises(InvalidArgumentError,
                       match=r"`budget` 1000 B .* below the smallest footprint this model can reach on 'local': "
                             r"\d+ B .* raise the budget to at least that"):
        plan_knapsack(model, "local", table, budget=1000, space=space)


def test_budget_below_resident_streams_blocks_from_disk(model: LlamaForCausalLM, table: SensitivityTable,
                                                        space: SearchSpace) -> None:
    options = unit_options(space, table)
    resident_floor = plan_memory(space, space.default_vector())["cpu"] - sum(
        r[0].nbytes - min(o.nbytes for o in r) for r in options.values())
    budget = int(resident_floor * 0.8)
    result = plan_knapsack(model, "local", table, budget=budget, space=space)
    assert result.streamed and set(result.streamed.values()) == {"cpu<-disk"}
    assert result.tier_bytes["cpu"] <= budget and result.tier_bytes["disk"] > 0
    assert check_plan(model, result.plan, "local", inputs=INPUTS, budgets={"cpu": budget}) == []


def test_latency_objective_uses_the_analytic_model(model: LlamaForCausalLM, table: SensitivityTable,
                                                   space: SearchSpace) -> None:
    loaded = LoadedModel(name="tiny", model=model, task="causal-lm", source="factory")
    result = plan_knapsack(loaded, "h100-80gb", table, budget="60%", max_quality_loss=0.002, objective="latency")
    assert result.seconds is not None and result.seconds > 0 and result.predicted_loss <= 0.002
    assert result.tier == "gpu" and result.tier_bytes["gpu"] <= result.budget
    with pytest.raises(InvalidArgumentError, match="latency and energy objectives need a zoo LoadedModel"):
        plan_knapsack(model, "local", table, budget="60%", objective="energy", space=space)


def test_precisions_the_device_lacks_are_never_offered(model: LlamaForCausalLM, table: SensitivityTable) -> None:
    gpu_space = SearchSpace.build(model, "h100-80gb", inputs=INPUTS, knobs=PLANNER_KNOBS)
    options = unit_options(gpu_space, table)
    assert all(o.precision != "int8-dynamic" for row in options.values() for o in row)  # fbgemm is CPU-only
    result = plan_knapsack(model, "h100-80gb", table, budget="30%", space=gpu_space)
    assert check_plan(model, result.plan, "h100-80gb", inputs=INPUTS) == []


def test_on_cuda_int4_is_also_offered_with_a_kernel_that_keeps_no_packed_copy(model: LlamaForCausalLM,
                                                                              table: SensitivityTable) -> None:
    gpu_space = SearchSpace.build(model, "h100-80gb", inputs=INPUTS, knobs=PLANNER_KNOBS)
    options = unit_options(gpu_space, table)["model.layers.0.mlp.down_proj"]  # K = 128: a tinygemm shape
    int4 = {o.kernel: o for o in options if o.precision == "int4"}
    assert set(int4) == {"auto", "cuda-triton"}  # auto = tinygemm, which repacks the codes into a second copy
    assert int4["cuda-triton"].nbytes < int4["auto"].nbytes and int4["cuda-triton"].loss == int4["auto"].loss
    result = plan_knapsack(model, "h100-80gb", table, budget="22%", space=gpu_space)
    assert any(k == "cuda-triton" for _, _, k in result.decisions.values())
    assert plan_memory(gpu_space, result.plan)["gpu"] <= result.budget
    assert check_plan(model, result.plan, "h100-80gb", inputs=INPUTS, budgets={"gpu": result.budget}) == []


def test_a_space_of_another_device_or_without_precisions_is_refused(model: LlamaForCausalLM, table: SensitivityTable,
                                                                    space: SearchSpace) -> None:
    with pytest.raises(InvalidArgumentError, match=r"`space` was built for model [0-9a-f]{16} on device [0-9a-f]{16}, "
                                                   r"not for this model on h100-80gb"):
        plan_knapsack(model, "h100-80gb", table, budget="50%", space=space)
    placement_only = SearchSpace.build(model, "local", inputs=INPUTS, knobs=("placement",))
    with pytest.raises(InvalidArgumentError, match="has no precision variables"):
        plan_knapsack(model, "local", table, budget="50%", space=placement_only)


def test_solve_refuses_a_memory_objective_without_bound_and_unknown_objectives() -> None:
    with pytest.raises(InvalidArgumentError, match="memory objective needs `bound`"):
        solve(_toy(0), None, objective="memory")
    with pytest.raises(InvalidArgumentError, match="`objective` must be quality, memory, latency or energy, got 'spe"):
        solve(_toy(0), None, objective="speed")
    with pytest.raises(InvalidArgumentError, match="at least one option"):
        solve([[UnitOption("x", 128, 1, 0.0)], []], None)
