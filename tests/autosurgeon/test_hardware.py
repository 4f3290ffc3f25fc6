"""HardwareProfile: JSON round trip, fingerprint, presets, device resolution, errors, tiny measurements, CLI."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types

import pytest
import torch

import autosurgeon.hardware.detect as hw_detect
import autosurgeon.hardware.resolve as hardware
from autosurgeon.cli import profile as profile_cli
from autosurgeon.errors import UnknownDeviceError
from autosurgeon.hardware.resolve import (
    HardwareProfile,
    MeasureConfig,
    SCHEMA_VERSION,
    ProfileFormatError,
    list_presets,
    load_preset,
    measure_local,
    profile_cache_path,
    resolve_profile,
    save_profile,
)
from autosurgeon.hardware.measure import measure_disk_read

# Tiny sizes: the real measuring code path in well under a second.
TINY = MeasureConfig(
    gemm_min_n=32,
    gemm_max_n=64,
    gemm_max_n_accel=128,
    gemm_max_op_s=0.05,
    memory_bytes=2**20,
    memory_over_cache=0.0,
    accel_memory_bytes=2**20,
    transfer_bytes=2**20,
    disk_bytes=2**20,
    warmup=1,
    repeats=2,
    disk_repeats=1,
)
PRESETS = ("a100-80gb", "h100-80gb", "jetson-agx-orin-64gb", "jetson-orin-nano-8gb", "rtx-4090")


@pytest.fixture(scope="module")
def local_profile(tmp_path_factory: pytest.TempPathFactory) -> HardwareProfile:
    return measure_local(config=TINY, include_gpus=False, disk_dir=tmp_path_factory.mktemp("disk"))


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOSURGEON_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_tiny_measurement_gives_positive_rates(local_profile: HardwareProfile) -> None:
    cpu = local_profile.unit("cpu")
    assert local_profile.measured and cpu.measured and cpu.kind == "cpu"
    # float32 and bfloat16 matmul run on every torch CPU build; int8/float16 may be omitted (with a note).
    assert cpu.gemm_flops["float32"] > 0 and cpu.gemm_flops["bfloat16"] > 0
    assert all(rate > 0 for rate in cpu.gemm_flops.values())
    assert cpu.memory_bandwidth > 0 and cpu.memory_bytes > 0
    assert local_profile.links["disk_read"] > 0
    method = local_profile.method
    assert method["statistic"] == "median" and method["config"]["repeats"] == 2
    assert method["gemm"]["cpu"]["float32"]["n"] in (32, 64)
    assert isinstance(method["disk_read"]["page_cache_dropped"], bool)
    assert local_profile.cpu.physical_cores >= 1 and local_profile.cpu.logical_cores >= local_profile.cpu.physical_cores


def test_json_round_trip(local_profile: HardwareProfile) -> None:
    again = HardwareProfile.from_json(local_profile.to_json())
    assert again == local_profile
    assert again.fingerprint == local_profile.fingerprint


def test_fingerprint_ignores_measurements_but_not_hardware(local_profile: HardwareProfile, tmp_path) -> None:
    remeasured = measure_local(config=TINY, include_gpus=False, disk_dir=tmp_path)
    assert remeasured.fingerprint == local_profile.fingerprint
    faster = dataclasses.replace(
        local_profile.units[0], gemm_flops={k: 2 * v for k, v in local_profile.units[0].gemm_flops.items()}
    )
    assert dataclasses.replace(local_profile, units=(faster,)).fingerprint == local_profile.fingerprint
    other_cpu = dataclasses.replace(local_profile.cpu, model=local_profile.cpu.model + " (other)")
    assert dataclasses.replace(local_profile, cpu=other_cpu).fingerprint != local_profile.fingerprint
    more_ram = dataclasses.replace(local_profile.cpu, memory_bytes=local_profile.cpu.memory_bytes + 8 * 2**30)
    assert dataclasses.replace(local_profile, cpu=more_ram).fingerprint != local_profile.fingerprint
    assert len(local_profile.fingerprint) == 16


def test_presets_load_validate_and_cite_every_rate() -> None:
    assert set(PRESETS) <= set(list_presets())
    for name in list_presets():
        profile = resolve_profile(name)
        assert profile.name == name and not profile.measured and profile.power
        assert HardwareProfile.from_json(profile.to_json()) == profile
        for unit in profile.units:
            assert not unit.measured and unit.memory_bandwidth > 0
            for dtype in unit.gemm_flops:  # every paper rate has a citation naming its dtype
                assert any(dtype in key for key in profile.sources), (name, unit.name, dtype)
        assert profile.default_unit().kind == "gpu"


def test_preset_figures() -> None:
    h100 = load_preset("h100-80gb").unit("cuda")
    assert h100.peak_flops(torch.bfloat16) == pytest.approx(989.5e12)
    assert h100.memory_bandwidth == pytest.approx(3.35e12)
    orin = load_preset("jetson-agx-orin-64gb")
    assert [u.name for u in orin.units if u.kind == "dla"] == ["dla:0", "dla:1"]
    assert orin.power["nvpmodel 15W"] == 15 and max(orin.power.values()) == 60
    assert load_preset("JETSON_ORIN_NANO_8GB").unit("cuda:0").memory_bandwidth == pytest.approx(68e9)


def test_peak_flops_falls_back_to_float32(local_profile: HardwareProfile) -> None:
    cpu = local_profile.unit("cpu")
    assert cpu.peak_flops(torch.float32) == cpu.peak_flops("float32") == cpu.gemm_flops["float32"]
    assert cpu.peak_flops("float8_e5m2") == cpu.gemm_flops["float32"]
    dla = load_preset("jetson-agx-orin-64gb").unit("dla:0")
    assert dla.peak_flops("float16") == 0.0  # no float16 and no float32 entry: documented zero


def test_unknown_device_error_lists_presets_and_forms() -> None:
    with pytest.raises(UnknownDeviceError, match=r"`device` 'tpu-v9' is not a known device.*h100-80gb.*\.json"):
        resolve_profile("tpu-v9")
    with pytest.raises(UnknownDeviceError, match="no such profile file"):
        resolve_profile("missing/profile.json")
    with pytest.raises(UnknownDeviceError, match="not a known device"):
        resolve_profile(42)  # type: ignore[arg-type]
    with pytest.raises(Exception, match=r"`unit` 'cuda:3' is not in profile"):
        load_preset("a100-80gb").unit("cuda:3")


def test_schema_errors_are_clear(local_profile: HardwareProfile, tmp_path) -> None:
    data = local_profile.to_dict()
    with pytest.raises(ProfileFormatError, match="`schema_version` 99 is newer than this code reads"):
        HardwareProfile.from_dict({**data, "schema_version": 99})
    with pytest.raises(ProfileFormatError, match="missing `schema_version`"):
        HardwareProfile.from_dict({k: v for k, v in data.items() if k != "schema_version"})
    with pytest.raises(ProfileFormatError, match="missing required field `cpu`"):
        HardwareProfile.from_dict({k: v for k, v in data.items() if k != "cpu"})
    broken_unit = {k: v for k, v in data["units"][0].items() if k != "kind"}
    with pytest.raises(ProfileFormatError, match=r"units\[0\]: missing required field\(s\) \['kind'\]"):
        HardwareProfile.from_dict({**data, "units": [broken_unit]})
    with pytest.raises(ProfileFormatError, match=r"unknown field\(s\) \['flops'\]"):
        HardwareProfile.from_dict({**data, "flops": 1})
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**data, "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(ProfileFormatError, match=f"{path}.*newer"):
        resolve_profile(path)


def test_json_path_and_profile_pass_through(local_profile: HardwareProfile, tmp_path) -> None:
    path = save_profile(local_profile, tmp_path / "sub" / "me.json")
    assert resolve_profile(str(path)) == local_profile == resolve_profile(path)
    assert resolve_profile(local_profile) is local_profile


def _plausible(profile: HardwareProfile) -> HardwareProfile:
    """The tiny test measurement with rates a spot check accepts (TINY's n=32 GEMMs under load can measure
    a few MFLOP/s, which the plausibility floor rightly refuses). The float32 rate is set 10x above a spot
    check now: a cached rate faster than now is always kept, so the load changing between this spot check
    and the one inside ``resolve_profile`` cannot make the test measure again."""
    from autosurgeon.hardware.spot_check import spot_check

    now = spot_check(profile)["now"]
    units = tuple(dataclasses.replace(u, gemm_flops={k: max(v, 1e9) for k, v in u.gemm_flops.items()} | (
        {"float32": max(now * 10, 1e9)} if u.kind == "cpu" else {}), memory_bandwidth=max(u.memory_bandwidth, 1e9))
        for u in profile.units)
    return dataclasses.replace(profile, units=units)


def test_local_reuses_cache_and_remeasures_for_full(local_profile, cache, monkeypatch) -> None:
    monkeypatch.setattr(hw_detect, "detect_gpus", lambda: ())
    monkeypatch.setattr(hardware, "detect_gpus", lambda: ())
    local_profile = _plausible(local_profile)
    path = save_profile(local_profile, profile_cache_path(hardware.local_fingerprint()))
    assert path.parent == cache / "profiles"

    def no_measuring(**kwargs):
        raise AssertionError("resolve_profile('local') measured although a cached profile exists")

    monkeypatch.setattr(hardware, "measure_local", no_measuring)
    assert resolve_profile("local") == local_profile
    # The cached profile is a quick (tiny) one: asking for the full one measures again and rewrites the cache.
    full = dataclasses.replace(local_profile, method={**local_profile.method, "quick": False})
    monkeypatch.setattr(hardware, "measure_local", lambda **kwargs: full)
    assert resolve_profile("local", quick=False) is full
    assert HardwareProfile.from_json(path.read_text()) == full


def _with_cpu_rate(profile: HardwareProfile, rate: float) -> HardwareProfile:
    units = tuple(dataclasses.replace(u, gemm_flops={**u.gemm_flops, "float32": rate}) if u.kind == "cpu" else u
                  for u in profile.units)
    return dataclasses.replace(profile, units=units)


def test_a_poisoned_cached_local_profile_is_measured_again(local_profile, cache, monkeypatch) -> None:
    """The shared machine once cached float32 at 4.85 MFLOP/s: implausible rates and a cached rate far below
    a spot check now are measured again; a cached rate far ABOVE now is kept (the machine is loaded now)."""
    from autosurgeon.hardware.spot_check import implausible, spot_check

    monkeypatch.setattr(hw_detect, "detect_gpus", lambda: ())
    monkeypatch.setattr(hardware, "detect_gpus", lambda: ())
    path = profile_cache_path(hardware.local_fingerprint())
    fresh = dataclasses.replace(local_profile, name="re-measured")
    monkeypatch.setattr(hardware, "measure_local", lambda **kwargs: fresh)
    local_profile = _plausible(local_profile)
    poisoned = _with_cpu_rate(local_profile, 4.85e6)
    assert implausible(poisoned) and not implausible(local_profile)
    save_profile(poisoned, path)
    assert resolve_profile("local").name == "re-measured"
    now = spot_check(local_profile)["now"]
    stale = _with_cpu_rate(local_profile, now / 1000)  # plausible, but 1000x slower than a GEMM now
    assert spot_check(stale)["verdict"] == "re-measure"
    save_profile(stale, path)
    assert resolve_profile("local").name == "re-measured"
    fast = _with_cpu_rate(local_profile, now * 1000)
    save_profile(fast, path)
    assert resolve_profile("local") == fast and spot_check(fast)["verdict"] == "kept (slower now)"


def test_cpu_only_measurement_touches_neither_nvml_nor_cuda(monkeypatch, tmp_path) -> None:
    fake = types.ModuleType("pynvml")

    def refuse(*args, **kwargs):
        raise AssertionError("NVML touched although GPUs were not asked for")

    fake.nvmlInit = refuse
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(torch.cuda, "is_available", refuse)
    profile = measure_local(config=TINY, include_gpus=False, disk_dir=None)
    assert profile.gpus == () and [u.name for u in profile.units] == ["cpu"] and "disk_read" not in profile.links
    assert not torch.cuda.is_initialized()


def test_missing_driver_gives_no_gpus(monkeypatch) -> None:
    import pynvml

    def no_driver():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlInit", no_driver)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert hw_detect.detect_gpus() == ()


def test_nvml_facts_are_read(monkeypatch) -> None:
    # A stand-in NVML with one GPU whose energy counter is unsupported: exercises the parsing path.
    fake = types.ModuleType("pynvml")
    fake.NVML_CLOCK_SM, fake.NVML_CLOCK_MEM = 1, 2
    fake.nvmlInit = fake.nvmlShutdown = lambda: None
    fake.nvmlDeviceGetCount = lambda: 1
    fake.nvmlDeviceGetHandleByIndex = lambda i: f"h{i}"
    fake.nvmlDeviceGetName = lambda h: b"NVIDIA Test GPU"
    fake.nvmlDeviceGetUUID = lambda h: "GPU-1234"
    fake.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=16 * 2**30)
    fake.nvmlDeviceGetEnforcedPowerLimit = lambda h: 250_000
    fake.nvmlDeviceGetPowerManagementDefaultLimit = lambda h: 300_000
    fake.nvmlDeviceGetMaxClockInfo = lambda h, kind: {1: 1800, 2: 9000}[kind]
    fake.nvmlDeviceGetMaxPcieLinkGeneration = lambda h: 4
    fake.nvmlDeviceGetMaxPcieLinkWidth = lambda h: 16

    def unsupported(h):
        raise RuntimeError("Not Supported")

    fake.nvmlDeviceGetTotalEnergyConsumption = unsupported
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    (gpu,) = hw_detect.detect_gpus()
    facts = (gpu.name, gpu.memory_bytes, gpu.power_limit_w, gpu.default_power_limit_w)
    assert facts == ("NVIDIA Test GPU", 16 * 2**30, 250.0, 300.0)
    assert (gpu.max_sm_clock_mhz, gpu.max_mem_clock_mhz, gpu.pcie_gen, gpu.pcie_width) == (1800, 9000, 4, 16)
    assert gpu.energy_counter is False


def test_detection_helpers() -> None:
    assert hw_detect.parse_size("48K") == 48 * 2**10 and hw_detect.parse_size("32768K") == 32 * 2**20
    assert hw_detect.parse_size("2 MiB") == 2 * 2**20
    assert hw_detect.normalize_isa(["fpu", "avx2", "avx512_vnni", "amx_tile", "asimd", "sve"]) == (
        "amx_tile",
        "avx2",
        "avx512_vnni",
        "neon",
        "sve",
    )


def test_lscpu_cache_fallback_parses_totals() -> None:
    text = (
        "L1d cache:   96 KiB (2 instances)\nL1i cache: 64 KiB (2 instances)\n"
        "L2 cache: 2 MiB (2 instances)\nL3 cache: 32 MiB (1 instance)\n"
    )
    assert hw_detect.parse_lscpu_caches(text) == {
        "l1d": 48 * 2**10, "l1d_instances": 2, "l2": 2**20, "l2_instances": 2, "l3": 32 * 2**20, "l3_instances": 1,
    }


def test_disk_probe_cleans_up(tmp_path) -> None:
    rate, how = measure_disk_read(tmp_path, TINY)
    assert rate > 0 and how["bytes"] == 2**20 and list(tmp_path.iterdir()) == []


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="autosurgeon")
    profile_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_preset_json_and_out(tmp_path, capsys) -> None:
    out = tmp_path / "orin.json"
    assert _cli(["profile", "--device", "jetson-agx-orin-64gb", "--json", "--out", str(out)]) == 0
    printed = HardwareProfile.from_json(capsys.readouterr().out)
    assert printed == load_preset("jetson-agx-orin-64gb") == resolve_profile(out)


def test_profile_local_rewrites_cache(cache) -> None:
    profile = hardware.profile_local(config=TINY, include_gpus=False)
    path = profile_cache_path(profile.fingerprint)
    assert path.is_file() and HardwareProfile.from_json(path.read_text()) == profile
    assert profile.method["disk_read"]["directory"] == str(cache)


def test_cli_local_prints_table_and_cache_path(cache, capsys, monkeypatch, local_profile) -> None:
    asked = []

    def fake_profile_local(*, quick):  # the measuring itself is covered above; keep the CLI test instant
        asked.append(quick)
        return local_profile

    monkeypatch.setattr(hardware, "profile_local", fake_profile_local)  # the CLI imports it from there on use
    assert _cli(["profile", "--quick"]) == 0 and asked == [True]
    captured = capsys.readouterr()
    assert "GEMM rate" in captured.out and "float32" in captured.out and local_profile.fingerprint in captured.out
    assert f"cached at {cache / 'profiles' / local_profile.fingerprint}.json" in captured.err


@pytest.mark.gpu
def test_gpu_unit_and_links_are_measured(tmp_path) -> None:
    profile = measure_local(config=TINY, include_gpus=True, disk_dir=None)
    gpu = profile.unit("cuda:0")
    assert profile.default_unit() is gpu and gpu.kind == "gpu" and gpu.measured
    assert gpu.gemm_flops["float32"] > 0 and gpu.gemm_flops["float16"] > 0 and gpu.memory_bandwidth > 0
    assert all(profile.links[k] > 0 for k in ("h2d_pinned", "h2d_pageable", "d2h_pinned", "d2h_pageable"))
    assert profile.gpus[0].sm_count and profile.gpus[0].compute_capability
    dispatch = profile.dispatch["cuda:0"]  # eager per-op / per-step / per-linear-format costs (hardware/dispatch.py)
    assert dispatch["op_s"] > 0 and dispatch["step_s"] > 0 and dispatch["linear"]["float32|auto"]["s"] > 0
    assert HardwareProfile.from_json(profile.to_json()) == profile
