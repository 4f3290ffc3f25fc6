"""Hardware profiles: the one object that tells AutoSurgeon what a device can do.

``resolve_profile`` turns what a user typed (``"local"``, a preset name, a JSON path) into a
``HardwareProfile``. ``"local"`` is measured once per machine and cached under
``<cache root>/profiles/<fingerprint>.json`` (``cache_dir=``, else ``$AUTOSURGEON_CACHE``, else
``~/.cache/autosurgeon``; the CLI's ``--cache-dir`` sets the root for its whole process), reused only while
its rates are plausible and a cheap spot check does not find it far slower than now (``spot_check.py``:
a profile measured under load is measured again, not trusted); presets are
datasheet figures on paper (``measured=False``), each with its source, and with their power modes
(``PowerMode``: how the rates scale in each; ``profile.at_power_cap(watts)`` gives the profile in the
fastest mode within a cap, see ``autosurgeon.hardware.power_cap``).

Nothing here touches CUDA or NVML at import time; the local machine is probed only when asked.
"""
from __future__ import annotations

import os
from pathlib import Path

from autosurgeon._logging import get_logger
from autosurgeon.errors import UnknownDeviceError
from autosurgeon.files.atomic import write_text_atomic
from autosurgeon.hardware.detect import detect_board, detect_cpu, detect_gpus
from autosurgeon.hardware.local import measure_local
from autosurgeon.hardware.measure import MeasureConfig
from autosurgeon.hardware.power_modes import PowerDerating, PowerMode
from autosurgeon.hardware.profile import (
    SCHEMA_VERSION,
    ComputeUnit,
    CpuInfo,
    GpuInfo,
    HardwareProfile,
    ProfileFormatError,
    fingerprint_of,
)
from autosurgeon.hardware.spot_check import trust_problems
from autosurgeon.models.cache import cache_root

__all__ = [
    "SCHEMA_VERSION",
    "ComputeUnit",
    "CpuInfo",
    "GpuInfo",
    "HardwareProfile",
    "MeasureConfig",
    "PowerDerating",
    "PowerMode",
    "ProfileFormatError",
    "cache_dir",
    "list_presets",
    "load_preset",
    "load_profile",
    "local_fingerprint",
    "measure_local",
    "profile_cache_path",
    "profile_local",
    "resolve_profile",
    "save_profile",
]

logger = get_logger(__name__)

PRESET_DIR = Path(__file__).parent.parent / "presets"


def cache_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """AutoSurgeon's cache root: ``root`` if given, else ``$AUTOSURGEON_CACHE``, else ``~/.cache/autosurgeon``.

    The one rule every cache follows (``autosurgeon.models.cache.cache_root``), so ``--cache-dir`` moves
    the profile cache with the zoo, sensitivity, GEMV and profiled tables."""
    return cache_root(root)


def profile_cache_path(fingerprint: str, *, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the measured profile of the machine with ``fingerprint`` is cached (under ``cache_dir``)."""
    return cache_root(cache_dir) / "profiles" / f"{fingerprint}.json"


def local_fingerprint(*, include_gpus: bool = True) -> str:
    """This machine's fingerprint from detection alone (fast; nothing is timed)."""
    gpus = detect_gpus() if include_gpus else ()
    return fingerprint_of(detect_cpu(), gpus, detect_board()[0])


def list_presets() -> list[str]:
    """Names of the paper profiles shipped in ``autosurgeon/presets`` (sorted)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_preset(name: str) -> HardwareProfile:
    """Load the paper profile ``name`` (see ``list_presets``)."""
    key = _preset_key(name)
    if key not in list_presets():
        raise UnknownDeviceError(_unknown_message(name))
    return load_profile(PRESET_DIR / f"{key}.json")


def load_profile(path: str | os.PathLike) -> HardwareProfile:
    """Read a profile JSON file, validating its schema version and fields."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UnknownDeviceError(f"`device` {str(path)!r}: cannot read the profile file ({exc.strerror}).") from exc
    return HardwareProfile.from_json(text, origin=str(path))


def save_profile(profile: HardwareProfile, path: str | os.PathLike) -> Path:
    """Write ``profile`` as JSON to ``path`` atomically (write a sibling, then rename), creating folders."""

    return write_text_atomic(path, profile.to_json() + "\n")


def profile_local(
    *, quick: bool = True, config: MeasureConfig | None = None, include_gpus: bool = True, write_cache: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> HardwareProfile:
    """Measure this machine now and (by default) rewrite its cache file under ``cache_dir`` (default: the
    cache root, see ``cache_dir()``); the disk test reads a temporary file there too. See ``measure_local``."""
    root = cache_root(cache_dir)
    profile = measure_local(quick=quick, config=config, include_gpus=include_gpus, disk_dir=root)
    if write_cache:
        path = save_profile(profile, profile_cache_path(profile.fingerprint, cache_dir=root))
        logger.info("cached the local profile at %s", path)
    return profile


def resolve_profile(device: str | os.PathLike | HardwareProfile = "local", *, quick: bool = True,
                    cache_dir: str | os.PathLike[str] | None = None) -> HardwareProfile:
    """Turn a device argument into a profile.

    Args:
        device: ``"local"`` (this machine: the cached measured profile, measured on first use), a preset
            name from ``list_presets()``, a path to a profile ``.json``, or a ``HardwareProfile`` (returned as is).
        quick: For ``"local"`` without a cache, measure quickly (seconds) rather than fully. A cached quick
            profile is re-measured when ``quick=False`` asks for the full one.
        cache_dir: Cache root for ``"local"`` (default ``$AUTOSURGEON_CACHE``, else ``~/.cache/autosurgeon``).

    Raises:
        UnknownDeviceError: ``device`` is none of the accepted forms (the message lists the presets).
        ProfileFormatError: The JSON file is not a valid profile of a readable schema version.
    """
    if isinstance(device, HardwareProfile):
        return device
    if isinstance(device, os.PathLike):
        return load_profile(device)
    if not isinstance(device, str):
        raise UnknownDeviceError(_unknown_message(device))
    if device == "local":
        return _cached_local(quick=quick, cache_dir=cache_dir)
    if _preset_key(device) in list_presets():
        return load_preset(device)
    if device.endswith(".json") or os.sep in device or Path(device).is_file():
        if not Path(device).is_file():
            raise UnknownDeviceError(f"`device` {device!r}: no such profile file. {_accepted_forms()}")
        return load_profile(device)
    raise UnknownDeviceError(_unknown_message(device))


def _cached_local(*, quick: bool, cache_dir: str | os.PathLike[str] | None) -> HardwareProfile:
    path = profile_cache_path(local_fingerprint(), cache_dir=cache_dir)
    if path.is_file():
        try:
            cached = load_profile(path)
        except ProfileFormatError as exc:
            logger.warning("ignoring the cached local profile (%s); measuring again.", exc)
        else:
            problems = trust_problems(cached)
            if problems:  # measured under load (or a starved process): never reused as truth
                logger.warning("the cached local profile %s is not trusted (%s); measuring again.", path,
                               "; ".join(problems))
            elif quick or not cached.method.get("quick", False):
                logger.info("using the cached local profile %s", path)
                return cached
            else:
                logger.info("cached local profile %s is a quick one; measuring fully.", path)
    return profile_local(quick=quick, cache_dir=cache_dir)


def _preset_key(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _accepted_forms() -> str:
    return (
        f"Give 'local' (measure this machine), a preset name ({', '.join(list_presets())}), "
        "a path to a profile .json (write one with `autosurgeon profile --out FILE`), or a HardwareProfile."
    )


def _unknown_message(device: object) -> str:
    return f"`device` {device!r} is not a known device. {_accepted_forms()}"
