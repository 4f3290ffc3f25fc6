"""Detection of this machine's hardware facts: CPU, caches, ISA, RAM, NVIDIA GPUs, Jetson boards and DLAs.

Facts only, no timing (that is ``hw_measure``). GPU detection imports pynvml and asks torch.cuda only
inside ``detect_gpus``, so importing this module touches neither NVML nor CUDA, and a machine without a
driver simply has no GPUs.
"""
from __future__ import annotations

import glob
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

import psutil

from autosurgeon._logging import get_logger
from autosurgeon.hardware.profile import CpuInfo, GpuInfo

logger = get_logger(__name__)

# /proc/cpuinfo flag -> our normalised ISA name (only features kernels choose by).
_X86_FLAGS = {
    "avx": "avx",
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "avx_vnni": "avx_vnni",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512vl": "avx512vl",
    "avx512_vnni": "avx512_vnni",
    "avx512_bf16": "avx512_bf16",
    "avx512_fp16": "avx512_fp16",
    "amx_tile": "amx_tile",
    "amx_bf16": "amx_bf16",
    "amx_int8": "amx_int8",
    "amx_fp16": "amx_fp16",
}
_ARM_FLAGS = {
    "asimd": "neon",
    "asimdhp": "neon_fp16",
    "asimddp": "neon_dotprod",
    "i8mm": "i8mm",
    "bf16": "arm_bf16",
    "sve": "sve",
    "sve2": "sve2",
    "sme": "sme",
}
# macOS sysctl hw.optional.* keys -> ISA names (Apple silicon has NEON always).
_MAC_OPTIONAL = {
    "hw.optional.arm.FEAT_DotProd": "neon_dotprod",
    "hw.optional.arm.FEAT_I8MM": "i8mm",
    "hw.optional.arm.FEAT_BF16": "arm_bf16",
    "hw.optional.arm.FEAT_FP16": "neon_fp16",
    "hw.optional.avx2_0": "avx2",
    "hw.optional.avx512f": "avx512f",
}
_CACHE_KEYS = {("1", "Data"): "l1d", ("2", "Unified"): "l2", ("3", "Unified"): "l3"}


def normalize_isa(flags: list[str] | set[str]) -> tuple[str, ...]:
    """Map raw CPU flags (``/proc/cpuinfo`` "flags" or "Features") to the profile's ISA names."""
    flags = {f.lower() for f in flags}
    names = {name for flag, name in {**_X86_FLAGS, **_ARM_FLAGS}.items() if flag in flags}
    return tuple(sorted(names))


def parse_size(text: str) -> int:
    """Parse a sysfs/lscpu cache size (``48K``, ``2M``, ``32768K``, ``1 MiB``) into bytes."""
    match = re.fullmatch(r"\s*([\d.]+)\s*([KMG]?)(i?B)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"cannot parse cache size {text!r}")
    scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[match.group(2).upper()]
    return int(float(match.group(1)) * scale)


def detect_cpu() -> CpuInfo:
    """Describe the host CPU and RAM from /proc and /sys (Linux) or sysctl (macOS)."""
    if platform.system() == "Darwin":
        return _detect_cpu_macos()
    info = _parse_proc_cpuinfo()
    logical = psutil.cpu_count(logical=True) or os.cpu_count() or 0
    physical = psutil.cpu_count(logical=False) or _count_physical(info) or logical
    return CpuInfo(
        model=info.get("model name") or info.get("Hardware") or _arm_model(info) or platform.processor() or "unknown",
        vendor=info.get("vendor_id") or ("ARM" if info.get("CPU implementer") else ""),
        arch=platform.machine(),
        physical_cores=int(physical),
        logical_cores=int(logical),
        caches=_sysfs_caches() or _lscpu_caches(),
        isa=normalize_isa((info.get("flags") or info.get("Features") or "").split()),
        memory_bytes=int(psutil.virtual_memory().total),
        max_mhz=_max_mhz(),
    )


def _parse_proc_cpuinfo() -> dict[str, Any]:
    """First processor's fields of /proc/cpuinfo, plus the (physical id, core id) pairs of all of them."""
    info: dict[str, Any] = {"_cores": set()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    phys = "0"
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "physical id":
            phys = value
        elif key == "core id":
            info["_cores"].add((phys, value))
        info.setdefault(key, value)
    return info


def _count_physical(info: dict[str, Any]) -> int:
    return len(info.get("_cores", ()))


def _arm_model(info: dict[str, Any]) -> str:
    # Arm Linux kernels print no model name; the device tree or lscpu names the part.
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    match = re.search(r"^Model name:\s*(.+)$", out, flags=re.MULTILINE)
    return match.group(1).strip() if match else ""


def _sysfs_caches() -> dict[str, int]:
    """Cache sizes per instance and instance counts, from /sys/devices/system/cpu/cpu*/cache."""
    caches: dict[str, int] = {}
    instances: dict[str, set[str]] = {}
    for index_dir in sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cache/index[0-9]*")):
        try:
            level = Path(index_dir, "level").read_text().strip()
            kind = Path(index_dir, "type").read_text().strip()
            size = parse_size(Path(index_dir, "size").read_text())
            shared = Path(index_dir, "shared_cpu_list").read_text().strip()
        except (OSError, ValueError):
            continue
        key = _CACHE_KEYS.get((level, kind))
        if key is None:
            continue
        caches.setdefault(key, size)
        instances.setdefault(key, set()).add(shared)
    for key, groups in instances.items():
        caches[f"{key}_instances"] = len(groups)
    return caches


def _lscpu_caches() -> dict[str, int]:
    """Fallback when sysfs has no cache folders: lscpu prints totals, e.g. "L2 cache: 2 MiB (2 instances)"."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return parse_lscpu_caches(out)


def parse_lscpu_caches(out: str) -> dict[str, int]:
    """Per-instance cache sizes and instance counts from lscpu's text."""
    caches: dict[str, int] = {}
    for key, label in (("l1d", "L1d"), ("l2", "L2"), ("l3", "L3")):
        pattern = rf"^{label} cache:\s*([\d.]+\s*[KMG]i?B?)(?:\s*\((\d+) instances?\))?"
        match = re.search(pattern, out, flags=re.MULTILINE)
        if not match:
            continue
        try:
            total = parse_size(match.group(1))
        except ValueError:
            continue
        instances = int(match.group(2) or 1)
        caches[key] = total // instances
        caches[f"{key}_instances"] = instances
    return caches


def _max_mhz() -> float | None:
    try:
        freq = psutil.cpu_freq()
    except (OSError, NotImplementedError, AttributeError):
        freq = None
    if freq and freq.max:
        return float(freq.max)
    try:
        khz = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()
        return int(khz) / 1000.0
    except (OSError, ValueError):
        return None


def _sysctl(key: str) -> str:
    try:
        return subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _detect_cpu_macos() -> CpuInfo:
    isa = {"neon"} if platform.machine() == "arm64" else set()
    isa |= {name for key, name in _MAC_OPTIONAL.items() if _sysctl(key) == "1"}
    isa |= set(normalize_isa(_sysctl("machdep.cpu.features").split() + _sysctl("machdep.cpu.leaf7_features").split()))
    caches = {}
    for key, sysctl_key in (("l1d", "hw.l1dcachesize"), ("l2", "hw.l2cachesize"), ("l3", "hw.l3cachesize")):
        value = _sysctl(sysctl_key)
        if value.isdigit() and int(value) > 0:
            caches[key] = int(value)
    logical = psutil.cpu_count(logical=True) or 0
    return CpuInfo(
        model=_sysctl("machdep.cpu.brand_string") or platform.processor() or "unknown",
        vendor="Apple" if platform.machine() == "arm64" else _sysctl("machdep.cpu.vendor"),
        arch=platform.machine(),
        physical_cores=psutil.cpu_count(logical=False) or logical,
        logical_cores=logical,
        caches=caches,
        isa=tuple(isa),
        memory_bytes=int(psutil.virtual_memory().total),
        max_mhz=_max_mhz(),
    )


def detect_board() -> tuple[str | None, int]:
    """Return (board name, DLA count) for NVIDIA Jetson/Tegra boards, else (None, 0)."""
    model = ""
    try:
        model = Path("/proc/device-tree/model").read_text().strip("\x00\n ")
    except OSError:
        pass
    tegra = Path("/etc/nv_tegra_release").exists()
    if not ("jetson" in model.lower() or "tegra" in model.lower() or tegra):
        return None, 0
    # Orin exposes its DLAs as platform devices named like "15880000.nvdla0".
    dlas = {os.path.basename(p).split(".")[-1] for p in glob.glob("/sys/bus/platform/devices/*nvdla*")}
    return model or "NVIDIA Tegra (model unknown)", len(dlas)


def detect_gpus() -> tuple[GpuInfo, ...]:
    """NVIDIA GPUs from NVML (limits, clocks, PCIe, energy counter) merged with torch.cuda (SMs, capability).

    Touches NVML and CUDA only here, when asked. A missing driver, library or device gives an empty
    tuple. GPUs that torch can use come in CUDA index order (matched to NVML by UUID); without a usable
    torch CUDA build, NVML's GPUs are listed as NVML numbers them.
    """
    nvml = _nvml_gpus()
    cuda = _torch_gpus()
    if not cuda:
        return tuple(GpuInfo(**{k: v for k, v in g.items() if k != "uuid"}) for g in nvml)
    by_uuid = {g["uuid"]: g for g in nvml if g.get("uuid")}
    gpus = []
    for i, props in enumerate(cuda):
        facts = by_uuid.get(props.pop("uuid", None)) or (nvml[i] if i < len(nvml) else {})
        merged = {**{k: v for k, v in facts.items() if k != "uuid"}, **props, "index": i}
        gpus.append(GpuInfo(**merged))
    return tuple(gpus)


def _nvml_gpus() -> list[dict[str, Any]]:
    try:
        import pynvml
    except ImportError:
        logger.info("pynvml is not installed; no NVML GPU facts (pip install nvidia-ml-py).")
        return []
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...: no usable NVIDIA driver
        logger.info("NVML unavailable (%s); assuming no NVIDIA GPU.", exc)
        return []
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            milliwatts = _nvml(pynvml.nvmlDeviceGetEnforcedPowerLimit, handle)
            default_mw = _nvml(pynvml.nvmlDeviceGetPowerManagementDefaultLimit, handle)
            memory = _nvml(pynvml.nvmlDeviceGetMemoryInfo, handle)
            gpus.append(
                {
                    "index": i,
                    "name": _text(_nvml(pynvml.nvmlDeviceGetName, handle)) or f"NVIDIA GPU {i}",
                    "uuid": _text(_nvml(pynvml.nvmlDeviceGetUUID, handle)).removeprefix("GPU-"),
                    "memory_bytes": int(memory.total) if memory is not None else 0,
                    "power_limit_w": milliwatts / 1000.0 if milliwatts is not None else None,
                    "default_power_limit_w": default_mw / 1000.0 if default_mw is not None else None,
                    "max_sm_clock_mhz": _nvml(pynvml.nvmlDeviceGetMaxClockInfo, handle, pynvml.NVML_CLOCK_SM),
                    "max_mem_clock_mhz": _nvml(pynvml.nvmlDeviceGetMaxClockInfo, handle, pynvml.NVML_CLOCK_MEM),
                    "pcie_gen": _nvml(pynvml.nvmlDeviceGetMaxPcieLinkGeneration, handle),
                    "pcie_width": _nvml(pynvml.nvmlDeviceGetMaxPcieLinkWidth, handle),
                    "energy_counter": _nvml(pynvml.nvmlDeviceGetTotalEnergyConsumption, handle) is not None,
                }
            )
        return gpus
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # shutting down a half-initialised NVML must not hide the facts we read
            pass


def _nvml(fn: Any, *args: Any) -> Any:
    """Call an NVML query; ``None`` when this GPU or driver does not support it."""
    try:
        return fn(*args)
    except Exception as exc:  # pynvml raises a distinct NVMLError subclass per code
        logger.debug("NVML %s failed: %s", getattr(fn, "__name__", fn), exc)
        return None


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def _torch_gpus() -> list[dict[str, Any]]:
    import torch

    try:
        if not torch.cuda.is_available():
            return []
        out = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            out.append(
                {
                    "name": props.name,
                    "uuid": str(getattr(props, "uuid", "") or "") or None,
                    "memory_bytes": int(props.total_memory),
                    "sm_count": int(props.multi_processor_count),
                    "compute_capability": f"{props.major}.{props.minor}",
                    "integrated": bool(getattr(props, "is_integrated", False)),
                }
            )
        return out
    except Exception as exc:  # a broken driver/runtime pairing: report no CUDA GPUs rather than fail profiling
        logger.warning("torch.cuda could not describe the GPUs (%s); profiling without them.", exc)
        return []
