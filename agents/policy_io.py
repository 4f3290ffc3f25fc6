"""A saved surgery policy: ``policy.safetensors`` (the network's weights) plus ``policy.json`` (what it needs).

Loading never unpickles: the network is rebuilt from the architecture recorded under ``network`` in
policy.json (``agents.policy_store``); an old pickled ``policy.zip`` is refused with the way out.

``policy.json`` (``{_type, _version, _data}``) carries everything needed to apply the policy elsewhere and to
refuse it where it does not belong: the observation/action layout (``ObservationLayout``: names, knob order,
fixed choices per knob; it grows with session knobs, ``envs.observation.layout_for``, and :func:`load_policy`
refuses a policy whose saved layout is not the one its knobs give), the knob set of the spaces it was trained
on, the device's fingerprint, name and *device class*, the evaluator, the training models, the reward settings,
and the observation statistics (mean/std per entry over the last training rollouts: the features are normalised
by construction — fixed log scales and ratios, see ``envs.observation`` — and the statistics let a user see how
far a new model's observations fall from the training distribution).

Device class (:func:`device_class`): what a policy's decisions transfer across. GPU profiles:
``"gpu-sm{major}{minor}"`` of the first GPU (e.g. ``gpu-sm90`` for H100, ``gpu-sm87`` Jetson Orin);
CPU-only profiles: ``"cpu-{arch}-{simd}"`` with arch from the CPU (``x86``/``arm``) and the widest SIMD
it reports (``avx512`` if ``avx512f``, else ``avx2``, ``neon``/``sve``, else ``scalar``), e.g.
``cpu-x86-avx512``. Kernels, bandwidth ratios and valid precisions change across classes, so a policy is
refused on another class unless forced.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agents.policy_store import PICKLED, WEIGHTS, load_network, refuse_pickled
from autosurgeon.errors import AutoSurgeonError, InvalidArgumentError
from autosurgeon.files.envelope import unwrap
from envs.observation import layout_for
from runtime.errors import JalapenoError
from runtime.sizes import parse_bytes

POLICY_TYPE = "autosurgeon.SurgeryPolicy"
POLICY_VERSION = 1


class PolicyError(AutoSurgeonError, ValueError):
    """A policy folder that cannot be used here (missing, unreadable, other device class)."""


def device_class(profile: Any) -> str:
    """The profile's device class (module docstring: scheme)."""
    gpus = tuple(getattr(profile, "gpus", ()) or ())
    if gpus:
        cc = getattr(gpus[0], "compute_capability", None)
        return f"gpu-sm{str(cc).replace('.', '')}" if cc else "gpu-unknown"
    cpu = profile.cpu
    arch = str(getattr(cpu, "arch", "") or "").lower()
    family = "x86" if arch in ("x86_64", "amd64", "i686", "x86") else ("arm" if arch.startswith(("arm", "aarch")) else
                                                                       (arch or "unknown"))
    isa = {str(f).lower() for f in (getattr(cpu, "isa", ()) or ())}
    if "avx512f" in isa:
        simd = "avx512"
    elif "avx2" in isa:
        simd = "avx2"
    elif "sve" in isa:
        simd = "sve"
    elif "neon" in isa or "asimd" in isa:
        simd = "neon"
    else:
        simd = "scalar"
    return f"cpu-{family}-{simd}"


def write_meta(folder: str | os.PathLike[str], data: Mapping[str, Any]) -> Path:
    path = Path(folder) / "policy.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"_type": POLICY_TYPE, "_version": POLICY_VERSION, "_data": dict(data)}, indent=2,
                      default=_default)
    tmp = path.with_name(f".policy.json.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)  # a reader sees the old file or the new one, never half
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def read_meta(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """``policy.json``'s data; PolicyError naming the path and the fix when absent or unreadable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PolicyError(f"`--policy` {str(folder)!r} is not a folder; pass the folder `autosurgeon train --out` "
                          "wrote (holding policy.safetensors and policy.json).")
    path = folder / "policy.json"
    if not (folder / WEIGHTS).is_file() and (folder / PICKLED).is_file():
        refuse_pickled(folder, error=PolicyError)
    if not path.is_file() or not (folder / WEIGHTS).is_file():
        raise PolicyError(f"`--policy` {str(folder)!r} holds no policy.safetensors + policy.json; train one with "
                          "`autosurgeon train --out` (a run stopped early leaves only checkpoints/: resume it).")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"`--policy` {str(folder)!r}: policy.json is unreadable ({exc}); retrain the policy.") from None
    try:
        return unwrap(text, type_name=POLICY_TYPE, version=POLICY_VERSION, what="policy", source=str(path),
                      fix="retrain the policy", error=PolicyError)
    except RecursionError:
        raise PolicyError(f"{str(path)!r}: JSON nested too deeply to be a policy; retrain the policy.") from None


def check_device(meta: Mapping[str, Any], profile: Any, *, force: bool = False) -> str | None:
    """Refuse a policy trained for another device class (PolicyError naming both); a note when forced."""
    trained, here = meta.get("device_class"), device_class(profile)
    if trained == here:
        return None
    message = (f"policy was trained for device class {trained!r} ({meta.get('device_name')}), this device "
               f"{profile.name!r} is {here!r}")
    if not force:
        raise PolicyError(f"{message}; train a policy for this device (autosurgeon train --device ...) or pass "
                          "--force to apply it anyway.")
    return message + " (--force)"


def expected_layout(meta: Mapping[str, Any]) -> Any:
    """The ``ObservationLayout`` this version's env builds for the policy's knobs (``envs.observation.layout_for``:
    the default layout unless the knobs name session knobs)."""

    knobs = meta.get("knobs")
    if not isinstance(knobs, list) or not knobs or not all(isinstance(k, str) for k in knobs):
        raise PolicyError(f"policy.json `knobs` must be a non-empty list of knob names, got {knobs!r}; retrain the "
                          "policy.")
    return layout_for(knobs)


def check_layout(meta: Mapping[str, Any], *, source: str = "policy") -> Any:
    """The expected layout (:func:`expected_layout`); PolicyError naming what differs from the saved one."""
    layout = expected_layout(meta)
    want = layout.to_dict()
    saved = meta.get("layout")
    if not isinstance(saved, Mapping):
        raise PolicyError(f"{source}: policy.json records no observation/action layout; retrain it with this version.")
    if dict(saved) != want:
        diff = sorted(k for k in want if saved.get(k) != want[k])
        detail = ""
        if saved.get("action_knobs") != want["action_knobs"]:
            detail = (f" (saved actions {', '.join(map(str, saved.get('action_knobs') or [])) or 'none'}; "
                      f"its knobs {', '.join(meta['knobs'])} give {', '.join(want['action_knobs'])})")
        raise PolicyError(f"{source} was trained with another observation/action layout (differs in "
                          f"{', '.join(diff) or 'everything'}){detail}; retrain it with this version.")
    return layout


def load_policy(folder: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """(policy network, meta) from a policy folder; the network answers ``predict(obs, action_masks=...)``.

    The layout recorded in policy.json must be the one this version's env builds for the policy's knobs
    (:func:`check_layout`), and the saved network's spaces must have that layout's sizes: PolicyError
    otherwise, before any plan is made.
    """
    meta = read_meta(folder)
    source = f"policy {str(folder)!r}"
    layout = check_layout(meta, source=source)
    model = load_network(folder, meta.get("network"), source=source, error=PolicyError)
    obs_shape = tuple(getattr(model.observation_space, "shape", ()) or ())
    nvec = [int(n) for n in getattr(model.action_space, "nvec", [])]
    if obs_shape != (layout.size,) or nvec != list(layout.max_choices):
        raise PolicyError(f"policy {str(folder)!r}: policy.safetensors' network has observations {obs_shape} and actions "
                          f"{nvec}, but policy.json's layout says ({layout.size},) and {list(layout.max_choices)}; "
                          "the two files do not belong together: retrain the policy.")
    return model, meta


def parse_size(value: str, *, what: str) -> int:
    """Bytes from ``"512MiB"`` / ``"2GB"`` / ``"1000"``; InvalidArgumentError naming ``what``."""

    try:
        n = parse_bytes(value, what=what)
    except JalapenoError as exc:
        raise InvalidArgumentError(str(exc)) from None
    if n <= 0:
        raise InvalidArgumentError(f"`{what}` must be > 0 bytes, got {value!r}.")
    return n


__all__ = ["POLICY_TYPE", "POLICY_VERSION", "PolicyError", "check_device", "check_layout", "device_class",
           "expected_layout", "load_policy", "parse_size", "read_meta", "write_meta"]
