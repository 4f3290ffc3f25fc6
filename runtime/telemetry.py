"""Measurement: synchronised latency (warm-up, repeats, median), energy, and memory peaks.

* :func:`measure_latency` times a callable; on CUDA it synchronises before reading the clock.
* :class:`EnergyMeter` reads NVML's total-energy counter on NVIDIA, RAPL's ``energy_uj`` counters under
  ``/sys/class/powercap`` where readable (Intel, and AMD on newer kernels), else estimates ``watts x seconds``
  from a figure the caller passes (e.g. a hardware profile's TDP x utilisation) and says so in ``.source``.
* :func:`rss_bytes` and :class:`PeakTracker` give process RSS and its peak, plus ``torch.cuda`` peak allocation.

Nothing here touches CUDA or NVML at import; pynvml is imported inside the meter.
"""
from __future__ import annotations

import glob
import math
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import torch

from runtime._log import get_logger
from runtime.errors import JalapenoError

logger = get_logger(__name__)

ENERGY_SOURCES = ("nvml", "rapl", "estimate")


# ---------------------------------------------------------------- latency
@dataclass(frozen=True)
class LatencyStats:
    """Wall-clock latency of repeated calls, in seconds.

    Attributes:
        median_s, p10_s, p90_s, mean_s, min_s: statistics over ``repeats`` timed calls.
        repeats, warmup: how many timed and untimed calls.
        synchronised: True when the device was synchronised around every call (CUDA).
        device: the device string the caller named ("cpu" if none).
    """

    median_s: float
    p10_s: float
    p90_s: float
    mean_s: float
    min_s: float
    repeats: int
    warmup: int
    synchronised: bool
    device: str


def _percentile(sorted_values: list[float], q: float) -> float:
    # Linear interpolation between closest ranks (numpy's default), without importing numpy for it.
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def measure_latency(fn: Callable[[], Any], *, warmup: int = 3, repeats: int = 10,
                    device: torch.device | str | None = None) -> LatencyStats:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; report median and spread.

    On a CUDA ``device`` every timed call is bracketed by ``torch.cuda.synchronize`` so the host clock sees
    the device work, not just the launch.
    """
    if repeats < 1:
        raise JalapenoError(f"`repeats` must be >= 1, got {repeats}.")
    if warmup < 0:
        raise JalapenoError(f"`warmup` must be >= 0, got {warmup}.")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    sync = dev.type == "cuda"

    def synchronize() -> None:
        if sync:
            torch.cuda.synchronize(dev)

    for _ in range(warmup):
        fn()
    synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - t0)
    s = sorted(times)
    return LatencyStats(median_s=statistics.median(s), p10_s=_percentile(s, 0.1), p90_s=_percentile(s, 0.9),
                        mean_s=statistics.fmean(s), min_s=s[0], repeats=repeats, warmup=warmup,
                        synchronised=sync, device=str(dev))


# ---------------------------------------------------------------- energy
def _rapl_zones() -> list[str]:
    """Top-level RAPL package zones (``intel-rapl:N``; sub-zones would double count) that we can read."""
    zones = []
    for path in sorted(glob.glob("/sys/class/powercap/intel-rapl:*")):
        if path.count(":") != 1:  # skip sub-zones intel-rapl:N:M (core/dram are inside the package)
            continue
        try:
            with open(os.path.join(path, "energy_uj")) as fh:
                int(fh.read())
            zones.append(path)
        except (OSError, ValueError):
            continue
    return zones


def _read_int(path: str) -> int:
    with open(path) as fh:
        return int(fh.read())


COUNTER_WINDOW_S = 1.0  # NVML's energy counter ticks every ~0.1-1 s: shorter windows are not seen reliably


class EnergyMeter:
    """Energy used between ``__enter__`` and ``__exit__``, from the best counter available.

    Args:
        device: a CUDA device measures the GPU through NVML; otherwise (or if NVML fails) the CPU package
            through RAPL.
        watts: power figure for the estimate when no counter is readable (the runtime cannot know the
            hardware; the caller passes e.g. the profile's TDP x utilisation). Without it the estimate is NaN.
        min_window_s: NVML's counter updates only every ~100 ms or slower; windows shorter than this log a
            warning and set ``short_window`` (the reading is then coarse).

    After the block: ``.joules``, ``.seconds``, ``.watts_avg``, ``.source`` in {"nvml", "rapl", "estimate"}.
    """

    def __init__(self, *, device: torch.device | str | None = None, watts: float | None = None,
                 min_window_s: float = COUNTER_WINDOW_S) -> None:
        if watts is not None and not watts >= 0:
            raise JalapenoError(f"`watts` must be >= 0 (the estimate's power figure), got {watts}.")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.watts = watts
        self.min_window_s = min_window_s
        self.source: str | None = None
        self.joules: float = float("nan")
        self.seconds: float = float("nan")
        self.short_window = False
        self._handle: Any = None
        self._start_counts: list[int] = []
        self._zones: list[str] = []
        self._t0 = 0.0

    @property
    def watts_avg(self) -> float:
        return self.joules / self.seconds if self.seconds > 0 else float("nan")

    def _nvml_handle(self) -> Any:
        import pynvml  # lazily: importing the runtime must not touch NVML

        pynvml.nvmlInit()
        index = self.device.index if self.device.index is not None else 0
        try:  # map torch's index (which respects CUDA_VISIBLE_DEVICES) to NVML's through the UUID
            uuid = str(torch.cuda.get_device_properties(index).uuid)
            return pynvml.nvmlDeviceGetHandleByUUID(("GPU-" + uuid) if not uuid.startswith("GPU-") else uuid)
        except Exception:
            return pynvml.nvmlDeviceGetHandleByIndex(index)

    def __enter__(self) -> EnergyMeter:
        self.source = None
        if self.device.type == "cuda":
            try:
                import pynvml

                self._handle = self._nvml_handle()
                torch.cuda.synchronize(self.device)
                self._start_counts = [pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)]
                self.source = "nvml"
            except Exception as exc:
                logger.warning("NVML energy counter unreadable (%s); trying RAPL, then the estimate", exc)
        if self.source is None:
            self._zones = _rapl_zones()
            if self._zones:
                self._start_counts = [_read_int(os.path.join(z, "energy_uj")) for z in self._zones]
                self.source = "rapl"
        if self.source is None:
            self.source = "estimate"
            if self.watts is None:
                logger.warning("no energy counter readable and no `watts` given: energy is NaN")
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.source == "nvml":
            import pynvml

            torch.cuda.synchronize(self.device)
            end = pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
            self.seconds = time.perf_counter() - self._t0
            self.joules = (end - self._start_counts[0]) / 1e3  # counter is in mJ
        elif self.source == "rapl":
            self.seconds = time.perf_counter() - self._t0
            total = 0
            for zone, start in zip(self._zones, self._start_counts):
                end = _read_int(os.path.join(zone, "energy_uj"))
                if end < start:  # the counter wrapped around
                    try:
                        end += _read_int(os.path.join(zone, "max_energy_range_uj"))
                    except OSError:
                        pass
                total += end - start
            self.joules = total / 1e6
        else:
            self.seconds = time.perf_counter() - self._t0
            self.joules = self.watts * self.seconds if self.watts is not None else float("nan")
        if self.source in ("nvml", "rapl") and self.seconds < self.min_window_s:
            self.short_window = True
            logger.warning("energy window %.3f s < %.1f s: the %s counter updates slowly, the reading is coarse; "
                           "measure more repetitions per window", self.seconds, self.min_window_s, self.source)


# ---------------------------------------------------------------- memory
def rss_bytes() -> int:
    """Resident set size of this process, in bytes (psutil)."""
    import psutil

    return int(psutil.Process().memory_info().rss)


class PeakTracker:
    """Samples process RSS in a background thread and reads the CUDA allocator's peak, over a ``with`` block.

    Args:
        interval_s: RSS sampling period (short spikes between samples can be missed; the final RSS is always
            sampled).
        device: a CUDA device also resets and reads ``torch.cuda.max_memory_allocated`` for it.

    After the block: ``start_rss_bytes``, ``peak_rss_bytes``, ``peak_cuda_bytes`` (None without CUDA),
    ``samples``.
    """

    def __init__(self, *, interval_s: float = 0.005, device: torch.device | str | None = None) -> None:
        if not interval_s > 0:
            raise JalapenoError(f"`interval_s` must be > 0, got {interval_s}.")
        self.interval_s = interval_s
        self.device = torch.device(device) if device is not None else None
        self.start_rss_bytes = 0
        self.peak_rss_bytes = 0
        self.peak_cuda_bytes: int | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        self.peak_rss_bytes = max(self.peak_rss_bytes, rss_bytes())
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> PeakTracker:
        self.start_rss_bytes = self.peak_rss_bytes = rss_bytes()
        self.samples = 1
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="jalapeno-peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_cuda_bytes = int(torch.cuda.max_memory_allocated(self.device))
