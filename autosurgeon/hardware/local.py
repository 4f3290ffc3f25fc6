"""Build the measured HardwareProfile of this machine: detect the facts, then time every compute unit."""
from __future__ import annotations

import datetime as _dt
import os
import time
from pathlib import Path

import psutil
import torch

from autosurgeon._logging import get_logger
from autosurgeon.hardware.detect import detect_board, detect_cpu, detect_gpus
from autosurgeon.hardware.dispatch import measure_dispatch
from autosurgeon.hardware.measure import (
    GEMM_DTYPES,
    MeasureConfig,
    measure_disk_read,
    measure_gemm,
    measure_memory_bandwidth,
    measure_transfers,
)
from autosurgeon.hardware.power_modes import measured_modes
from autosurgeon.hardware.profile import ComputeUnit, HardwareProfile

logger = get_logger(__name__)


# long: a flat list of measurements, each a few lines with its own fallback; splitting would only scatter them
def measure_local(
    *,
    quick: bool = True,
    config: MeasureConfig | None = None,
    include_gpus: bool = True,
    disk_dir: str | Path | None = None,
) -> HardwareProfile:
    """Detect and measure this machine.

    Args:
        quick: Use ``MeasureConfig.quick()`` (seconds) instead of ``MeasureConfig.full()`` (under a minute).
        config: Explicit sizes and repeats; overrides ``quick`` (tests pass tiny sizes).
        include_gpus: Ask NVML and torch.cuda for GPUs; False leaves both untouched (CPU-only profile).
        disk_dir: Directory whose disk is read-tested; ``None`` skips the disk test.

    Returns:
        A profile with ``measured=True``; ``method`` records sizes, repeats and the statistic.
    """
    config = config or (MeasureConfig.quick() if quick else MeasureConfig.full())
    started = time.perf_counter()
    cpu = detect_cpu()
    board, dla_count = detect_board()
    gpus = detect_gpus() if include_gpus else ()
    notes: list[str] = []
    method: dict = {
        "statistic": "median",
        "quick": config != MeasureConfig.full(),  # anything short of the full run counts as quick
        "config": config.to_dict(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        # "highest" keeps float32 GEMMs in float32; "high"/"medium" let GPUs use TF32 and would inflate the rate.
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "measured_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "gemm": {},
        "memory": {},
        # Other processes' load skews every rate on a shared machine; keep it next to the numbers.
        "load_average_1m_before": _load_average(),
    }

    # The CPU copy must stream from DRAM: a few times the whole L3 (some servers have hundreds of MB),
    # within a quarter of the free memory.
    l3_total = cpu.caches.get("l3", 0) * cpu.caches.get("l3_instances", 1)
    cpu_copy = max(config.memory_bytes, int(config.memory_over_cache * l3_total))
    cpu_copy = min(cpu_copy, psutil.virtual_memory().available // 8)
    cpu_unit = _measure_unit(
        torch.device("cpu"), "cpu", cpu.memory_bytes, cpu.physical_cores, cpu_copy, config, method, notes
    )
    units = [cpu_unit]
    links: dict[str, float] = {}
    power: dict[str, float] = {}
    cuda_count = torch.cuda.device_count() if include_gpus and gpus and torch.cuda.is_available() else 0
    for gpu in gpus:
        if gpu.power_limit_w is not None:
            power[f"cuda:{gpu.index} enforced limit"] = gpu.power_limit_w
        if gpu.default_power_limit_w is not None:
            power[f"cuda:{gpu.index} default limit"] = gpu.default_power_limit_w
        if gpu.index >= cuda_count:
            notes.append(f"GPU {gpu.index} ({gpu.name}) seen by NVML but not usable by this torch build; not measured.")
            continue
        device = torch.device("cuda", gpu.index)
        gpu_copy = min(config.accel_memory_bytes, gpu.memory_bytes // 8)
        units.append(
            _measure_unit(
                device, f"cuda:{gpu.index}", gpu.memory_bytes, gpu.sm_count or 0, gpu_copy, config, method, notes
            )
        )
    dispatch: dict[str, dict] = {}
    for unit in units[1:]:
        if unit.kind == "gpu":  # what an eager step pays there besides its work (hardware/dispatch.py)
            dispatch[unit.name] = measure_dispatch(torch.device(unit.name), rounds=max(3, config.repeats))
            logger.info("%s dispatch: %.1f us/op, %.1f us/step", unit.name, dispatch[unit.name]["op_s"] * 1e6,
                        dispatch[unit.name]["step_s"] * 1e6)
    if cuda_count:
        rates, how = measure_transfers(torch.device("cuda", 0), config)
        links.update(rates)
        method["links"] = {"device": "cuda:0", **how}
    for i in range(dla_count):
        units.append(
            ComputeUnit(
                name=f"dla:{i}", kind="dla", memory_bytes=cpu.memory_bytes, memory_bandwidth=0.0,
                measured=False, cores=1
            )
        )
        notes.append(f"dla:{i} detected but not measured (needs TensorRT); its rates are empty.")
    if disk_dir is not None:
        rate, how = measure_disk_read(Path(disk_dir), config)
        links["disk_read"] = rate
        method["disk_read"] = how
        if not how["page_cache_dropped"]:
            fstype = how["filesystem"] or "unknown"
            notes.append(f"disk_read may be served from the page cache (filesystem {fstype!r}).")
    method["load_average_1m_after"] = _load_average()
    method["seconds"] = round(time.perf_counter() - started, 3)
    # The mode the machine runs in as measured (a GPU's enforced limit); without one, derived from `power`.
    modes = measured_modes(gpus)
    return HardwareProfile(
        name="local",
        measured=True,
        cpu=cpu,
        gpus=gpus,
        units=tuple(units),
        links=links,
        power=power,
        power_modes=modes,
        power_mode=modes[0].name if modes else None,
        board=board,
        method=method,
        notes=tuple(notes),
        dispatch=dispatch,
    )


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):  # not on every platform
        return None


def _measure_unit(
    device: torch.device,
    name: str,
    memory_bytes: int,
    cores: int,
    copy_bytes: int,
    config: MeasureConfig,
    method: dict,
    notes: list[str],
) -> ComputeUnit:
    """GEMM rate per dtype and copy bandwidth of one unit; dtypes without a kernel are omitted and noted."""
    rates, gemm_how = {}, {}
    for dtype in GEMM_DTYPES:
        result = measure_gemm(device, dtype, config)
        if result is None:
            notes.append(f"{name}: no {dtype} GEMM kernel ran; {dtype} omitted.")
            continue
        rates[dtype], gemm_how[dtype] = result
        logger.info("%s %s GEMM: %.1f GFLOP/s at n=%d", name, dtype, rates[dtype] / 1e9, gemm_how[dtype]["n"])
    bandwidth, memory_how = measure_memory_bandwidth(device, copy_bytes, config)
    logger.info("%s memory copy: %.2f GB/s", name, bandwidth / 1e9)
    method["gemm"][name] = gemm_how
    method["memory"][name] = memory_how
    return ComputeUnit(
        name=name,
        kind="cpu" if device.type == "cpu" else "gpu",
        memory_bytes=memory_bytes,
        memory_bandwidth=bandwidth,
        gemm_flops=rates,
        measured=True,
        cores=cores,
    )
