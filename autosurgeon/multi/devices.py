"""Execution devices of a machine with several GPUs: their names, placements, runtime devices and links.

A placement names its device (``"gpu:1<-cpu"``: runs on the profile's GPU unit ``cuda:1``, streamed from the
host over that GPU's own link); ``"gpu"`` means ``"gpu:0"``, so every single-device plan keeps its meaning.
Devices are ``gpu:N`` (one per GPU unit of the profile, in CUDA index order) and ``cpu``; the host and disk
are *tiers* weights stream from, shared by every device. Which names exist is the profile's business, the
spelling is the vocabulary's (``autosurgeon.knobs.DEVICE_PLACEMENT_RE``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from autosurgeon.errors import InvalidArgumentError
from autosurgeon.knobs import DEVICE_PLACEMENT_RE, placement_kind

if TYPE_CHECKING:  # annotations only
    from autosurgeon.hardware.profile import ComputeUnit, HardwareProfile

HOMES: tuple[str, ...] = ("cpu", "disk")


def gpu_units(profile: HardwareProfile) -> list[ComputeUnit]:
    """The profile's GPU units in order (``cuda:0``, ``cuda:1`` ...)."""
    return [u for u in profile.units if u.kind == "gpu"]


def execution_devices(profile: HardwareProfile) -> tuple[str, ...]:
    """Device names a placement can run on: ``gpu:0`` ... ``gpu:{n-1}``, then ``cpu`` where the profile has one."""
    gpus = tuple(f"gpu:{i}" for i in range(len(gpu_units(profile))))
    return gpus + (("cpu",) if any(u.kind == "cpu" for u in profile.units) else ())


def device_placements(profile: HardwareProfile) -> tuple[str, ...]:
    """The placements a profile with two or more GPUs adds to ``PLACEMENTS``: ``gpu:N``, ``gpu:N<-cpu`` and
    ``gpu:N<-disk`` for N >= 1 (the first GPU keeps its spelling ``gpu``, so a search space has one name per
    choice); empty for one GPU or none."""
    n = len(gpu_units(profile))
    return tuple(f"gpu:{i}{suffix}" for i in range(1, n) for suffix in ("", "<-cpu", "<-disk"))


def placement_device(placement: str) -> str:
    """The device a placement runs on: ``"gpu:1<-cpu"`` -> ``"gpu:1"``, ``"gpu"`` -> ``"gpu:0"``,
    ``"cpu<-disk"`` -> ``"cpu"``."""
    head = placement.partition("<-")[0]
    if head == "gpu":
        return "gpu:0"
    return head


def placement_home(placement: str) -> str | None:
    """The tier a placement streams from (``None``: resident on its device)."""
    return placement.partition("<-")[2] or None


def device_index(device: str) -> int:
    """``"gpu:3"`` -> 3; raises for anything else (``cpu``, ``dla``)."""
    kind, _, index = device.partition(":")
    if kind != "gpu" or not index.isdigit():
        raise InvalidArgumentError(f"`device` {device!r} is not a GPU device name; use 'gpu:N'.")
    return int(index)


def device_reason(placement: str, profile: HardwareProfile) -> str | None:
    """Why ``profile`` cannot run ``placement``'s device (None: it can). Only ``gpu:N`` names are judged here."""
    if placement_kind(placement) != "gpu" or not DEVICE_PLACEMENT_RE.fullmatch(placement):
        return None
    index, n = device_index(placement_device(placement)), len(gpu_units(profile))
    if index >= n:
        return f"profile {profile.name!r} has {n} GPU unit(s), so no gpu:{index}"
    return None


def device_unit(profile: HardwareProfile, device: str) -> ComputeUnit:
    """The compute unit behind a device name (``gpu:1`` -> the profile's second GPU unit, ``cpu`` -> its CPU)."""
    if device == "cpu":
        return profile.unit("cpu")
    gpus = gpu_units(profile)
    index = device_index(device)
    if index >= len(gpus):
        raise InvalidArgumentError(f"`device` {device!r}: profile {profile.name!r} has {len(gpus)} GPU unit(s); "
                                   f"use one of {list(execution_devices(profile))}.")
    return gpus[index]


def runtime_device(profile: HardwareProfile | None, device: str) -> str:
    """The torch device a device name runs on: ``gpu:N`` -> its unit's ``cuda:N``, ``cpu`` -> ``cpu``."""
    if device == "cpu":
        return "cpu"
    if profile is None:
        return f"cuda:{device_index(device)}"
    name = device_unit(profile, device).name
    return name if name.startswith("cuda") else f"cuda:{device_index(device)}"


def link_rates(profile: HardwareProfile) -> dict[str, float]:
    """Bytes/s of the links a multi-GPU placement uses: ``host_per_gpu`` (each GPU's own host link, pinned
    host-to-device), ``host_total`` (all GPUs streaming at once: one link each, as the profile states), ``p2p``
    (GPU to GPU, per direction; 0 when the profile lists none)."""
    host = float(profile.links.get("h2d_pinned") or profile.links.get("h2d_pageable") or 0.0)
    return {"host_per_gpu": host, "host_total": host * len(gpu_units(profile)),
            "p2p": float(profile.links.get("p2p", 0.0))}


__all__ = ["HOMES", "device_index", "device_placements", "device_reason", "device_unit", "execution_devices",
           "gpu_units", "link_rates", "placement_device", "placement_home", "runtime_device"]
