"""Applying a trained policy to a model it never saw; clear errors for bad inputs."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from agents.apply import apply_policy, hypervolume, simplex_preferences
from agents.policy_io import PolicyError
from agents.ppo import PPOSettings, train
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.hardware.resolve import resolve_profile
from autosurgeon.plan import Plan
from autosurgeon.plan_check import check_plan
from envs.context import build_context

DEVICE = "h100-80gb"


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("apply-policy")
    train(device=DEVICE, models=["tiny-llama-test"], timesteps=128, out=out, n_envs=1,
          settings=PPOSettings(n_steps=64, batch_size=64, n_epochs=1), hv_every=10_000, checkpoint_every=10_000)
    return out


def test_apply_on_unseen_model_gives_a_checked_plan_and_a_front(policy: Path) -> None:
    # digits-cnn: another task and architecture, absent from training.
    result = apply_policy(policy, "digits-cnn", device=DEVICE, preference="latency=0.2,memory=0.7,energy=0.1",
                          front=3)
    assert isinstance(result.plan, Plan)
    errors = [p for p in check_plan(result.space and _loaded(result), result.plan, DEVICE, space=result.space)
              if p.severity == "error"]
    assert errors == []
    assert result.metrics.latency_s > 0 and result.metrics.evaluator == "analytic"
    assert len(result.front.vectors) == 3 and 0.0 <= result.front.hypervolume <= 3.0 * 1.1 * 3.5


def _loaded(result):  # the env's loaded model (meta) the plan was made for
    from envs.context import _CACHE

    return next(c.loaded for c in _CACHE.values() if c.space is result.space)


def test_cli_apply_writes_plan_and_front(policy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from autosurgeon.cli.apply import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    out = tmp_path / "plan.json"
    args = parser.parse_args(["apply", "--policy", str(policy), "--model", "tiny-moe-test", "--device", DEVICE,
                              "--memory-budget", "1GiB", "--front", "2", "--out", str(out)])
    assert args.func(args) == 0
    plan = Plan.load(out)
    assert plan.metadata["proposer"] == "agents.apply"
    front = json.loads(out.with_suffix(".front.json").read_text())
    assert len(front["points"]) == 2 and front["reference"] == [3.0, 1.1, 3.5]
    assert front["front"] and all(len(m["id"]) == 8 and m["origin"] for m in front["front"])
    text = capsys.readouterr().out
    assert " written to " in text and "baselines' hypervolume" in text
    # --json: the plan and the front with ids and origins, the baselines and their hypervolume.
    args = parser.parse_args(["apply", "--policy", str(policy), "--model", "tiny-moe-test", "--device", DEVICE,
                              "--front", "2", "--json", "--out", str(tmp_path / "p2.json")])
    assert args.func(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["plan"]["id"]) == 8 and data["plan"]["origin"] == "policy"
    assert {b["origin"] for b in data["baselines"]} >= {"baseline:unmodified", "baseline:uniform-int8"}
    assert data["baselines_hypervolume"] > 0 and len(data["policy_plans"]) == 2 and "hypervolume" in data
    assert data["reference_point"] == [3.0, 1.1, 3.5]
    # The front is the non-dominated set of the policy's plans and the baselines: nothing in it is dominated.
    pts = [list(m["normalised"].values()) for m in data["front"]]
    assert pts and not any(_dominates(a, b) for a in pts for b in pts)
    assert {m["origin"] for m in data["front"]} <= {"policy", "policy+fill"} | {b["origin"] for b in data["baselines"]}
    assert data["hypervolume"] == pytest.approx(hypervolume(pts, reference=data["reference_point"]))
    assert data["hypervolume"] >= data["baselines_hypervolume"] - 1e-12
    if data["offered"] is not None:  # a dominated plan is never handed over silently
        assert Path(data["offered"]["path"]).is_file() and any("dominated by the baseline" in n for n in data["notes"])


def _dominates(a, b) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def test_front_budgets_add_candidates_and_keep_the_non_dominated_set(policy: Path) -> None:
    from agents.apply import budget_levels
    from experiments.sweep.baselines import uniform_vectors

    one = apply_policy(policy, "tiny-moe-test", device=DEVICE, front=3, baselines=uniform_vectors)
    three = apply_policy(policy, "tiny-moe-test", device=DEVICE, front=3, baselines=uniform_vectors,
                         budget_fractions=budget_levels(3))
    assert budget_levels(3) == (1.0, 0.5, 0.0) and budget_levels(1) == (1.0,)
    assert three.front.extra["budget_fractions"] == [1.0, 0.5, 0.0]
    assert three.front.evaluations >= one.front.evaluations  # distinct policy plans, each evaluated once
    assert three.front.extra["with_baselines_hypervolume"] >= one.front.extra["with_baselines_hypervolume"] - 1e-12
    for res in (one, three):
        pts = [m.normalised for m in res.front.members]
        assert not any(_dominates(a, b) for a in pts for b in pts)
        assert res.front.extra["with_baselines_hypervolume"] == pytest.approx(hypervolume(np.array(pts)))
    with pytest.raises(InvalidArgumentError, match="`--front-budgets` must be an integer >= 1, got 0"):
        budget_levels(0)


def test_apply_and_sweep_share_the_reference_point(policy: Path) -> None:
    """The same model, device and objectives: apply and the sweep measure hypervolume against one reference, in
    one normalised space, so the same plans give the same hypervolume."""
    from agents.apply import HV_REFERENCE
    from experiments.sweep import SweepConfig
    from experiments.sweep.baselines import uniform_vectors
    from experiments.sweep.hypervolume import hypervolume as sweep_hypervolume

    cfg = SweepConfig(model="tiny-moe-test", device=DEVICE, evaluator="analytic", quality="none",
                      knobs=("precision", "placement"))
    assert tuple(cfg.reference_point) == HV_REFERENCE
    res = apply_policy(policy, "tiny-moe-test", device=DEVICE, front=2, baselines=uniform_vectors)
    # The sweep's way: raw objectives, divided by the unmodified model's (its normaliser), against its reference.
    scales = res.base.objectives(cfg.objectives)
    raw = [b.metrics.objectives(cfg.objectives) for b in res.baselines]
    assert sweep_hypervolume(raw, cfg.reference_point, scales=scales) == pytest.approx(
        res.front.extra["baselines_hypervolume"], rel=1e-12)
    everything = raw + [m.metrics.objectives(cfg.objectives) for m in res.front.members]
    assert sweep_hypervolume(everything, cfg.reference_point, scales=scales) == pytest.approx(
        res.front.extra["with_baselines_hypervolume"], rel=1e-12)


def test_dominating_baseline_is_the_cheapest_that_dominates_within_budget() -> None:
    from types import SimpleNamespace

    from agents.apply_baselines import BaselinePlan, dominates, dominating_baseline

    def b(label, norm, mem):
        return BaselinePlan(label, np.zeros(1, dtype=np.int64), SimpleNamespace(memory_bytes=mem), np.array(norm))

    plan = [1.0, 0.5, 1.0]
    base = [b("uniform-int8", [0.9, 0.5, 0.9], 100), b("uniform-int4", [0.8, 0.3, 0.8], 60),
            b("uniform-float32", [1.0, 1.0, 1.0], 200)]
    assert dominates([0.9, 0.5, 0.9], plan) and not dominates(plan, plan)
    assert dominating_baseline(plan, base, preference=[1 / 3] * 3).label == "uniform-int4"
    assert dominating_baseline(plan, base, preference=[1 / 3] * 3, memory_budget=80).label == "uniform-int4"
    assert dominating_baseline(plan, base, preference=[1 / 3] * 3, memory_budget=50) is None
    assert dominating_baseline([0.1, 0.1, 0.1], base, preference=[1 / 3] * 3) is None


def test_unknown_policy_path(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="is not a folder"):
        apply_policy(tmp_path / "missing", "digits-cnn", device=DEVICE)
    with pytest.raises(PolicyError, match="holds no policy.safetensors"):
        apply_policy(tmp_path, "digits-cnn", device=DEVICE)


def test_wrong_device_class_refused_unless_forced(policy: Path) -> None:
    with pytest.raises(PolicyError, match="'gpu-sm90'.*'gpu-sm87'.*--force"):
        apply_policy(policy, "digits-cnn", device="jetson-orin-nano-8gb")
    result = apply_policy(policy, "digits-cnn", device="jetson-orin-nano-8gb", force=True)
    assert any("--force" in n for n in result.notes)


@pytest.mark.parametrize(("preference", "match"), [
    ("latency=0.6,memory=0.3", "must sum to 1"),
    ("latency=0.6,memory=0.3,joy=0.1", "unknown objective 'joy'"),
    ("latency=1.2,memory=-0.2", "'memory' must be a finite number >= 0, got -0.2"),
])
def test_bad_preference(policy: Path, preference: str, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        apply_policy(policy, "digits-cnn", device=DEVICE, preference=preference)


def test_bad_cli_values(policy: Path, tmp_path: Path) -> None:
    from autosurgeon.cli.apply import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    base = ["apply", "--policy", str(policy), "--model", "digits-cnn", "--device", DEVICE, "--out", str(tmp_path / "p")]
    with pytest.raises(InvalidArgumentError, match="--memory-budget.*'lots'"):
        args = parser.parse_args([*base, "--memory-budget", "lots"])
        args.func(args)
    with pytest.raises(InvalidArgumentError, match="`--front` must be >= 1, got 0"):
        args = parser.parse_args([*base, "--front", "0"])
        args.func(args)
    with pytest.raises(InvalidArgumentError, match="`--front-budgets` must be an integer >= 1, got 0"):
        args = parser.parse_args([*base, "--front", "2", "--front-budgets", "0"])
        args.func(args)


def test_simplex_preferences_and_hypervolume() -> None:
    prefs = simplex_preferences(8)
    assert prefs.shape == (8, 3) and np.allclose(prefs.sum(axis=1), 1.0) and (prefs >= 0).all()
    assert len({tuple(p) for p in prefs.round(6)}) == 8
    assert np.allclose(prefs[:3], np.eye(3))
    # One point at 1 in each objective under reference 2: a unit cube; two points overlap by inclusion-exclusion.
    ref = (2.0, 2.0, 2.0)
    assert hypervolume(np.array([[1.0, 1.0, 1.0]]), ref) == pytest.approx(1.0)
    assert hypervolume(np.array([[1.0, 1.5, 1.5], [1.5, 1.0, 1.5]]), ref) == pytest.approx(0.25 + 0.25 - 0.125)
    assert hypervolume(np.array([[2.5, 0.1, 0.1]]), ref) == 0.0
    # The default reference is the project's one (the sweep's): (3.0, 1.1, 3.5).
    assert hypervolume(np.array([[1.0, 1.0, 1.0]])) == pytest.approx(2.0 * 0.1 * 2.5)


def test_preference_budget_spans_the_unmodified_memory_to_the_floor_in_log_space() -> None:
    from agents.apply import preference_budget

    assert preference_budget(np.array([1.0, 0.0, 0.0]), 100.0, 4.0) == pytest.approx(100.0)
    assert preference_budget(np.array([0.0, 1.0, 0.0]), 100.0, 4.0) == pytest.approx(4.0)
    assert preference_budget(np.array([0.5, 0.5, 0.0]), 100.0, 4.0) == pytest.approx(20.0)  # sqrt(100 * 4)
    assert preference_budget(np.array([0.0, 1.0, 0.0]), 100.0, 0.0) == pytest.approx(100.0)  # no floor: no constraint


def test_each_preference_runs_at_its_own_budget_and_the_front_only_gains(policy: Path) -> None:
    # A budget per preference (epsilon constraint): the pure-memory preference's plan meets the floor's budget,
    # the pure-latency one the unmodified model's; the candidates are a superset of the full-budget ones, so the
    # front's hypervolume is never below the one without (same policy, same baselines).
    from agents.apply import preference_budget
    from experiments.sweep.baselines import uniform_vectors

    off = apply_policy(policy, "tiny-llama-test", device=DEVICE, front=8, baselines=uniform_vectors,
                       preference_budgets=False)
    # budget_fill=False: session 7's budgets, from the unmodified memory (the fill's anchor: the next test)
    on = apply_policy(policy, "tiny-llama-test", device=DEVICE, front=8, baselines=uniform_vectors,
                      budget_fill=False)
    assert on.front.extra["preference_budgets"] is True and off.front.extra["preference_budgets"] is False
    assert off.front.extra["preference_budget_fractions"] == [1.0] * 8
    fractions = on.front.extra["preference_budget_fractions"]
    assert fractions[0] == pytest.approx(1.0) and fractions[1] == pytest.approx(0.0)  # latency, memory corners
    assert on.front.evaluations >= off.front.evaluations
    assert on.front.extra["with_baselines_hypervolume"] >= off.front.extra["with_baselines_hypervolume"] - 1e-12
    base_mem = on.base.objective("memory")
    floor = build_context("tiny-llama-test", resolve_profile(DEVICE)).min_memory
    for w, m in zip(on.front.preferences, on.front.metrics):
        assert m.objective("memory") <= preference_budget(w, base_mem, floor) * 1.02  # shield (staging terms)
    # the memory corner's plan holds far less than the latency corner's: the preferences give different plans
    assert on.front.metrics[1].objective("memory") < 0.5 * on.front.metrics[0].objective("memory")


def test_fill_budget_spends_the_slack_on_the_target_decisions_and_never_exceeds_the_budget() -> None:
    from agents.apply import fill_budget
    from autosurgeon.cost.footprint import plan_memory

    ctx = build_context("tiny-llama-test", resolve_profile(DEVICE))
    space, units = ctx.space, ctx.units

    def memory(x):
        t = plan_memory(space, x)
        return t.get("gpu", 0) + t.get("cpu", 0)

    floor, full = space.repair(ctx.smallest), space.default_vector()
    lo, hi = memory(floor), memory(full)
    assert lo < hi
    assert np.array_equal(fill_budget(space, units, floor, full, lo), floor)  # no slack: unchanged
    assert np.array_equal(fill_budget(space, units, floor, full, hi), full)  # the target fits: all of it
    mid = fill_budget(space, units, floor, full, (lo + hi) / 2)
    assert lo < memory(mid) <= (lo + hi) / 2  # some of the target, within the budget
    assert not np.array_equal(mid, floor) and not np.array_equal(mid, full)
    assert np.array_equal(space.repair(mid), mid)  # a valid plan


def test_budget_fill_only_adds_candidates_and_is_labelled(policy: Path) -> None:
    from experiments.sweep.baselines import uniform_vectors

    off = apply_policy(policy, "tiny-llama-test", device=DEVICE, front=8, baselines=uniform_vectors,
                       budget_fill=False)
    on = apply_policy(policy, "tiny-llama-test", device=DEVICE, front=8, baselines=uniform_vectors)
    assert on.front.extra["budget_fill"] is True and off.front.extra["budget_fill"] is False
    assert {c.origin for c in off.front.candidates} == {"policy"}
    assert {c.origin for c in on.front.candidates} <= {"policy", "policy+fill"}
    assert on.front.evaluations >= off.front.evaluations
    assert on.front.extra["with_baselines_hypervolume"] >= off.front.extra["with_baselines_hypervolume"] - 1e-12
    # The budgets span from each preference's own unconstrained plan to the floor: the latency corner's is that
    # plan (its fraction of the unmodified-to-floor span is its memory's), the memory corner's the floor.
    from agents.apply import preference_budget, run_policy
    from agents.policy_io import load_policy
    from envs.surgery import SurgeryEnv

    floor = build_context("tiny-llama-test", resolve_profile(DEVICE)).min_memory
    model, meta = load_policy(policy)
    env = SurgeryEnv(models=["tiny-llama-test"], device=DEVICE, evaluator="analytic", knobs=tuple(meta["knobs"]))
    base_mem = on.base.objective("memory")
    fractions = on.front.extra["preference_budget_fractions"]
    assert fractions[1] == pytest.approx(0.0)
    for w, m, frac in zip(on.front.preferences, on.front.metrics, fractions):
        full = run_policy(model, env, preference=w, memory_budget=base_mem)
        anchor = env.contexts[0].evaluator.evaluate(full).objective("memory")
        budget = preference_budget(w, anchor, floor)
        assert frac == pytest.approx((budget - floor) / (base_mem - floor), abs=1e-9)
        assert m.objective("memory") <= budget * 1.02  # a filled plan keeps its preference's budget
