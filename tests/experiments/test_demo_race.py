"""The demo's race: same-budget alternatives, one harness, the pick rule and the standing lines."""
from __future__ import annotations

import time

import torch

from autosurgeon.knobs import KNOBS
from autosurgeon.space.search_space import SearchSpace
from autosurgeon.zoo import load_model
from experiments.demo_alternatives import uniform_at_budget
from experiments import demo_compare
from experiments.demo_compare import Comparison, Row, judge, pick, race, standing
from experiments.demo_contenders import AccelerateContender, PlanContender
from runtime.session import module_bytes

from tests.autosurgeon._paper_profiles import paper_cpu_profile


def _row(label: str, seconds: list[float], cpu: int, loss: float, kind: str = "plan") -> Row:
    return Row(label=label, kind=kind, source=label, tokens=[1] * 8, seconds=seconds, tier_bytes={"cpu": cpu},
               memory_method="m", energy_j_per_token=0.1, energy_label="estimated", quality_loss=loss,
               quality_method="perplexity")


def test_pick_is_the_fastest_plan_that_fits_and_standings_say_why_others_lose() -> None:
    rows = [_row("unmodified", [1.0, 1.0, 1.0], 100, 0.0),
            _row("accelerate offload", [0.2, 0.2, 0.2], 0, 0.0, kind="accelerate"),  # fastest, but never chosen
            _row("uniform int4", [0.1, 0.1, 0.1], 10, 0.05),  # fast, but over the quality bound
            _row("uniform int8", [0.5, 0.4, 0.6], 20, 0.001),
            _row("knapsack", [0.8, 0.9, 0.7], 25, 0.0)]
    comparison = Comparison(rows=rows, rounds=3, tokens=8, load_before=0.0, load_after=0.0)
    judge(comparison, budget=30, tiers=("gpu", "cpu"), max_quality_loss=0.01)
    assert [r.fits for r in rows] == [False, True, False, True, True]
    chosen = pick(comparison)
    assert chosen is not None and chosen.label == "uniform int8"
    lines = {r.label: standing(comparison, chosen, r) for r in rows if r is not chosen}
    assert "over the budget" in lines["unmodified"]
    assert "over the bound" in lines["uniform int4"]
    assert "NOT beaten" in lines["accelerate offload"]  # a faster alternative is named, not hidden
    assert "1.60x its speed (1.17-2.25" in lines["knapsack"]  # per-round ratios 0.8/0.5, 0.9/0.4, 0.7/0.6: median


def test_uniform_alternatives_fit_the_budget_by_streaming_blocks() -> None:
    loaded = load_model("tiny-llama-test")
    profile = paper_cpu_profile()
    space = SearchSpace.build(loaded, profile, knobs=KNOBS)
    budget = module_bytes(loaded.model) // 4
    alternatives = {a.label: a for a in uniform_at_budget(space, budget, ("gpu", "cpu"))}
    assert set(alternatives) == {"uniform int8", "uniform int4"}
    for alt in alternatives.values():
        if alt.plan is None:
            assert alt.skipped  # a row that cannot be made says why
            continue
        assert alt.estimated_bytes is not None and alt.estimated_bytes <= budget
        precisions = {r.decisions.get("precision") for r in alt.plan.rules} - {None}
        assert precisions <= {alt.label.split()[-1], "float32"}, precisions


def test_race_measures_accelerate_and_a_plan_with_one_harness(tmp_path: object) -> None:
    loaded = load_model("tiny-llama-test")
    profile = paper_cpu_profile()
    space = SearchSpace.build(loaded, profile, knobs=KNOBS)
    total = module_bytes(loaded.model)
    unmodified = space.decode(space.default_vector())
    contenders = [PlanContender("unmodified", unmodified, loaded, profile, full_space=space, source="unmodified",
                                energy_watts=10.0),
                  AccelerateContender("accelerate offload", loaded.model, max_memory={"cpu": total // 4},
                                      main_device="cpu")]
    try:
        # accelerate at a quarter of the bytes offloads to disk; its map names modules, never the empty prefix
        assert "" not in contenders[1].device_map
        assert contenders[1].tier_bytes()["disk"] > 0
        ids = torch.tensor([[5, 6, 7, 8]])
        comparison = race(contenders, ids, tokens=3, rounds=2, watts=10.0)
    finally:
        for c in contenders:
            c.close()
    assert [len(r.seconds) for r in comparison.rows] == [2, 2]
    unmod, acc = comparison.rows
    assert unmod.tokens == acc.tokens  # float weights, greedy: offloading changes nothing
    for r in comparison.rows:
        assert r.energy_j_per_token is not None and r.energy_j_per_token > 0
        assert r.energy_label.startswith(("estimated", "measured"))
    assert unmod.tier_bytes["cpu"] >= total * 0.9


class _CounterMeter:
    """Stands for NVML: a counter that sees joules = 100 W x the window's length."""

    def __init__(self, device: object, watts: float, min_window_s: float) -> None:
        self.source, self.joules, self.seconds = "nvml", None, 0.0

    def __enter__(self) -> _CounterMeter:
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t
        self.joules = 100.0 * self.seconds


class _FastContender:
    label, kind, source, device, memory_method = "fast plan", "plan", "plan", "cuda:0", "m"
    model = None

    def generate(self, ids: torch.Tensor, tokens: int) -> list[int]:
        time.sleep(0.002)
        return [1] * tokens

    def tier_bytes(self) -> dict[str, int]:
        return {"gpu": 1}


def test_energy_of_generations_shorter_than_the_counter_tick_comes_from_one_long_window(monkeypatch) -> None:
    monkeypatch.setattr("runtime.telemetry.EnergyMeter", _CounterMeter)
    monkeypatch.setattr(demo_compare, "COUNTER_MIN_S", 0.2)
    comparison = race([_FastContender()], torch.tensor([[1, 2]]), tokens=4, rounds=2, watts=10.0)
    row = comparison.rows[0]
    # the timed generations (~2 ms each) are far below the tick; the window of whole generations is not
    assert "coarse" not in row.energy_label and "tokens in one" in row.energy_label
    window = float(row.energy_label.split("in one ")[1].split(" s")[0])
    generated = int(row.energy_label.split(", ")[-1].split(" tokens")[0])
    assert window >= 0.2 and generated % 4 == 0 and generated > 8
    assert abs(row.energy_j_per_token - 100.0 * window / generated) < 0.05 * row.energy_j_per_token
