"""Power modes and caps: mode selection and its errors, derated rates, the DVFS model, old profiles, and the
analytic evaluator on a Jetson AGX Orin preset at 15 W against MAXN for the same plan."""
from __future__ import annotations

import dataclasses
import json

import pytest

import autosurgeon.cost.base as cost
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.hardware.resolve import HardwareProfile, load_preset, resolve_profile
from autosurgeon.hardware.power_modes import PowerDerating, PowerMode, current_mode, derived_modes
from autosurgeon.hardware.power_cap import (
    PowerCap,
    at_power_cap,
    check_power_cap,
    mean_power_w,
    mode_key,
    resolve_power_cap,
    select_mode,
)
from tests.autosurgeon._paper_profiles import paper_cpu_profile

ORIN = "jetson-agx-orin-64gb"


@pytest.mark.parametrize("cap, mode", [(15, "15W"), (29.9, "15W"), (30, "30W"), (49, "30W"), (50, "50W"),
                                       (59, "50W"), (60, "MAXN"), (1000, "MAXN")])
def test_fastest_mode_within_the_cap(cap, mode) -> None:
    assert select_mode(load_preset(ORIN), cap).name == mode


@pytest.mark.parametrize("cap", [0, -5, float("nan"), float("inf"), "many"])
def test_cap_must_be_positive_watts(cap) -> None:
    with pytest.raises(InvalidArgumentError, match=r"`--power-cap` must be a power in watts"):
        check_power_cap(cap)


def test_cap_below_every_mode_names_the_modes_and_the_fix() -> None:
    with pytest.raises(InvalidArgumentError, match=r"`--power-cap` 10 W is below every power mode of "
                       r"'jetson-agx-orin-64gb' \(15W 15 W, 30W 30 W, 50W 50 W, MAXN 60 W\)\. Give a cap >= 15 W"):
        at_power_cap(load_preset(ORIN), 10)
    with pytest.raises(InvalidArgumentError, match=r"`power_cap_w` 150 W .*set down to 200 W.*cap >= 200 W"):
        at_power_cap(load_preset("h100-80gb"), 150, argument="power_cap_w")


def test_derated_rates_follow_the_nvpmodel_clock_caps() -> None:
    maxn = load_preset(ORIN)
    low = maxn.at_power_cap(15)
    assert low.power_mode == "15W" and low.fingerprint == maxn.fingerprint and not low.measured
    mode = current_mode(low)
    # 3 of 8 TPCs at 408 of 1300 MHz; 4 of 12 cores at 1113.6 of 2200 MHz; EMC 2133 of 3200 MHz.
    gpu, gpu0 = low.unit("cuda:0"), maxn.unit("cuda:0")
    for dtype, rate in gpu0.gemm_flops.items():
        assert gpu.gemm_flops[dtype] == pytest.approx(rate * 3 / 8 * 408 / 1300, rel=1e-4)
    assert low.unit("cpu").peak_flops("float32") == pytest.approx(
        maxn.unit("cpu").peak_flops("float32") * 4 / 12 * 1113.6 / 2200, rel=1e-4)
    for unit in low.units:
        assert unit.memory_bandwidth == pytest.approx(204.8e9 * 2133 / 3200, rel=1e-4)
    assert low.unit("cpu").cores == 4 and gpu.cores == 6 and mode.watts == 15
    assert "nvpmodel_p3701_0000.conf" in mode.source and "DERIVED" in mode.source
    # Back to MAXN from the derated copy gives the datasheet rates again; the JSON form round-trips.
    again = low.at_power_cap(60)
    assert again.unit("cuda:0").gemm_flops == pytest.approx(gpu0.gemm_flops, rel=1e-12)
    assert HardwareProfile.from_json(low.to_json()) == low
    assert mode_key(maxn) is None and mode_key(low) == "15W@15W"


def test_gpu_cap_below_tdp_uses_the_dvfs_model() -> None:
    h100 = load_preset("h100-80gb")
    assert h100.at_power_cap(700) == h100 and h100.at_power_cap(900).power_mode == "TDP"
    capped = h100.at_power_cap(420)
    mode = current_mode(capped)
    clock = ((420 - 140) / (700 - 140)) ** (1 / 3)  # static power = idle = 20 % of TDP
    assert capped.unit("cuda").peak_flops("bfloat16") == pytest.approx(989.5e12 * clock, rel=1e-9)
    assert capped.unit("cuda").memory_bandwidth == h100.unit("cuda").memory_bandwidth  # memory clock kept
    assert mode.watts == 420 and mode.idle == 140 and "DVFS" in mode.name and "model" in mode.source
    assert cost.power_envelope(capped)[:2] == (140, 420)


def test_old_profiles_derive_one_mode_and_keep_their_envelope() -> None:
    data = json.loads(load_preset(ORIN).to_json())
    for key in ("power_modes", "power_mode", "power_derating"):
        data.pop(key)
    old = HardwareProfile.from_dict({**data, "schema_version": 1})
    (mode,) = derived_modes(old)
    assert mode.watts == 60 and "DERIVED" in mode.source and current_mode(old) == mode
    assert cost.power_envelope(old)[:2] == (12.0, 60.0)
    cpu = paper_cpu_profile()
    assert current_mode(cpu).watts == cost.DEFAULT_WATTS_PER_CORE * 2 and "ASSUMED" in current_mode(cpu).name
    assert select_mode(cpu, 25).name == current_mode(cpu).name
    with pytest.raises(InvalidArgumentError, match="below every power mode"):
        at_power_cap(cpu, 5)


def test_profile_checks_its_modes() -> None:
    base = paper_cpu_profile()
    with pytest.raises(InvalidArgumentError, match=r"`power_mode` 'fast' is not one of its `power_modes`"):
        dataclasses.replace(base, power_modes=(PowerMode(name="slow", watts=5),), power_mode="fast")
    with pytest.raises(InvalidArgumentError, match="repeats a power mode name"):
        dataclasses.replace(base, power_modes=(PowerMode(name="a", watts=5), PowerMode(name="a", watts=6)))
    with pytest.raises(InvalidArgumentError, match=r"compute_scale\['cpu'\].*> 0"):
        PowerMode(name="x", watts=5, compute_scale={"cpu": 0})
    with pytest.raises(InvalidArgumentError, match="`power_derating.mode` 'TDP' is not one of"):
        dataclasses.replace(base, power_derating=PowerDerating(mode="TDP", min_watts=1))


def test_measured_profiles_are_constrained_not_derated() -> None:
    measured = dataclasses.replace(load_preset(ORIN), measured=True)
    with pytest.raises(InvalidArgumentError, match="never changes a real device's clocks"):
        at_power_cap(measured, 15)
    cap = resolve_power_cap(measured, 15)
    assert cap.profile is measured and not cap.derated and cap.mode.name == "MAXN"
    paper = resolve_power_cap(load_preset(ORIN), 20)
    assert paper.derated and paper.mode.name == "15W" and paper.to_dict()["power_cap_w"] == 20
    assert set(paper.to_dict()) >= {"power_cap_w", "power_mode", "mode_watts", "derated", "how"}


def test_analytic_evaluator_is_slower_and_draws_less_at_15w() -> None:
    from autosurgeon.evaluate import AnalyticEvaluator
    from autosurgeon.space.search_space import SearchSpace
    from autosurgeon.zoo import load_model

    loaded = load_model("tiny-llama-test", device="meta")
    maxn = resolve_profile(ORIN)
    space = SearchSpace.build(loaded, maxn, knobs=("precision", "placement"))
    fast = AnalyticEvaluator(loaded, maxn, space=space)
    slow = AnalyticEvaluator(loaded, maxn.at_power_cap(15), space=space)  # same space: same fingerprint
    x = space.default_vector()
    a, b = fast.evaluate(x), slow.evaluate(x)
    assert b.latency_s > a.latency_s
    # A launch-bound toy draws near idle power: 20 % of the mode's envelope (3 W at 15 W, 12 W at MAXN).
    assert 3.0 <= mean_power_w(b) < mean_power_w(a) and mean_power_w(b) <= 15.0 and mean_power_w(a) <= 60.0
    assert "15W" in b.method and fast.key(x) != slow.key(x)  # the mode is part of the cache key
    cap = PowerCap(watts=15.0, profile=slow.profile, mode=current_mode(slow.profile), derated=True)
    assert cap.excess(b) == pytest.approx(mean_power_w(b) - 15.0) and cap.excess(b) < 0


def _profile_cli(argv: list[str]) -> int:
    import argparse

    from autosurgeon.cli.profile import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_profile_command_lists_modes_and_derates_on_request(capsys) -> None:
    assert _profile_cli(["profile", "--device", ORIN]) == 0
    out = capsys.readouterr().out
    assert "power modes" in out and "* MAXN" in out and "  15W" in out and "cpu 4, gpu 6" in out
    assert _profile_cli(["profile", "--device", ORIN, "--power-cap", "20"]) == 0
    out = capsys.readouterr().out
    assert "* 15W" in out and "136.5 GB/s" in out  # EMC capped at 2133 of 3200 MHz
    assert _profile_cli(["profile", "--device", "h100-80gb", "--power-cap", "350"]) == 0
    assert "* cap 350 W (DVFS model)" in capsys.readouterr().out
    with pytest.raises(InvalidArgumentError, match="never changes clocks"):
        _profile_cli(["profile", "--power-cap", "20"])
    with pytest.raises(InvalidArgumentError, match="`--power-cap` must be a power in watts > 0"):
        _profile_cli(["profile", "--device", ORIN, "--power-cap", "-1"])


def test_a_measured_gpu_runs_in_its_enforced_limit() -> None:
    from autosurgeon.hardware.power_modes import measured_modes
    from autosurgeon.hardware.profile import GpuInfo

    gpus = (GpuInfo(index=0, name="NVIDIA H100 80GB HBM3", memory_bytes=80 * 2**30, power_limit_w=500.0,
                    default_power_limit_w=700.0),)
    (mode,) = measured_modes(gpus)
    assert mode.watts == 500 and mode.name == "cuda:0 enforced limit" and "never changed" in mode.source
    assert measured_modes((dataclasses.replace(gpus[0], power_limit_w=None),)) == ()
    profile = dataclasses.replace(load_preset("h100-80gb"), measured=True, power_modes=(mode,),
                                  power_mode=mode.name, power_derating=None)
    assert cost.power_envelope(profile)[:2] == (100.0, 500.0)  # not the 700 W default limit
