"""A policy network as data: ``policy.safetensors`` (weights) + a ``network`` entry in ``policy.json`` (architecture).

Nothing here unpickles. The network is rebuilt from its recorded architecture — sb3-contrib's
``MaskableActorCriticPolicy`` over a ``Box(-clip, clip, (observation_size,))`` observation space and a
``MultiDiscrete(action_nvec)`` action space, with the recorded ``net_arch`` and an activation chosen by name
from a fixed table — and the weights are loaded into it with ``strict=True``, so a file whose tensors do not
fit the recorded architecture is refused instead of half-loaded. A truncated or foreign weights file is a
:class:`~agents.policy_io.PolicyError` naming the file and the fix.

Older versions saved ``policy.zip`` (SB3's format: a zip with pickled objects inside). It is never read by
default: :func:`refuse_pickled` names the file and the two ways out (retrain, or convert once with the
explicit opt-in ``python -m agents.policy_convert FOLDER --trust-pickle``).
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

WEIGHTS = "policy.safetensors"
PICKLED = "policy.zip"
ACTIVATIONS = ("Tanh", "ReLU", "LeakyReLU", "ELU", "GELU", "SiLU")  # names from torch.nn, never code


def network_spec(policy: Any) -> dict[str, Any]:
    """The architecture of an SB3 maskable actor-critic ``policy``: what :func:`build_network` needs."""
    obs, act = policy.observation_space, policy.action_space
    activation = getattr(policy, "activation_fn", None)
    name = getattr(activation, "__name__", str(activation))
    if name not in ACTIVATIONS:
        raise ValueError(f"policy activation {name!r} is not one of {ACTIVATIONS}; it cannot be recorded as data.")
    arch = policy.net_arch
    if isinstance(arch, dict):
        arch = {k: [int(v) for v in vs] for k, vs in arch.items()}
    else:
        arch = [int(v) for v in arch]
    return {"class": "MaskableActorCriticPolicy", "observation_size": int(obs.shape[0]),
            "observation_clip": float(obs.high.flat[0]), "action_nvec": [int(n) for n in act.nvec],
            "net_arch": arch, "activation_fn": name, "ortho_init": bool(getattr(policy, "ortho_init", True)),
            "share_features_extractor": bool(getattr(policy, "share_features_extractor", True))}


def _checked_spec(spec: Any, source: str, error: type[Exception]) -> dict[str, Any]:
    def bad(what: str) -> Exception:
        return error(f"{source}: policy.json `network` {what}; retrain the policy with this version.")

    if not isinstance(spec, Mapping):
        raise bad(f"must be an object, got {type(spec).__name__}")
    if spec.get("class") != "MaskableActorCriticPolicy":
        raise bad(f"`class` must be 'MaskableActorCriticPolicy', got {spec.get('class')!r}")
    size, nvec, clip = spec.get("observation_size"), spec.get("action_nvec"), spec.get("observation_clip")
    if not (isinstance(size, int) and not isinstance(size, bool) and 0 < size <= 1_000_000):
        raise bad(f"`observation_size` must be an integer in 1..1000000, got {size!r}")
    if not (isinstance(nvec, list) and 0 < len(nvec) <= 10_000
            and all(isinstance(n, int) and not isinstance(n, bool) and 0 < n <= 1_000_000 for n in nvec)):
        raise bad(f"`action_nvec` must be a list of positive integers, got {nvec!r}")
    if not (isinstance(clip, (int, float)) and not isinstance(clip, bool) and 0 < clip < 1e9):
        raise bad(f"`observation_clip` must be a positive number, got {clip!r}")
    arch = spec.get("net_arch")
    layers = list(arch.values()) if isinstance(arch, Mapping) else [arch]
    if not all(isinstance(ls, list) and len(ls) <= 64 and all(isinstance(n, int) and not isinstance(n, bool)
                                                               and 0 < n <= 65_536 for n in ls) for ls in layers):
        raise bad(f"`net_arch` must be a list (or {{pi, vf}} lists) of layer widths, got {arch!r}")
    if spec.get("activation_fn") not in ACTIVATIONS:
        raise bad(f"`activation_fn` must be one of {', '.join(ACTIVATIONS)}, got {spec.get('activation_fn')!r}")
    return dict(spec)


def build_network(spec: Mapping[str, Any], *, source: str = "policy", error: type[Exception] = ValueError) -> Any:
    """A fresh ``MaskableActorCriticPolicy`` with the recorded architecture (weights not loaded)."""
    import numpy as np
    import torch.nn as nn
    from gymnasium import spaces
    from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy

    spec = _checked_spec(spec, source, error)
    clip = float(spec["observation_clip"])
    obs = spaces.Box(-clip, clip, shape=(spec["observation_size"],), dtype=np.float32)
    act = spaces.MultiDiscrete(np.array(spec["action_nvec"], dtype=np.int64))
    return MaskableActorCriticPolicy(obs, act, lambda _: 0.0, net_arch=spec["net_arch"],
                                     activation_fn=getattr(nn, spec["activation_fn"]),
                                     ortho_init=bool(spec.get("ortho_init", True)),
                                     share_features_extractor=bool(spec.get("share_features_extractor", True)))


def file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes (checkpoints record it to detect a torn or altered weights file)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_tensors(path: str | os.PathLike[str], *, source: str, fix: str,
                 error: type[Exception] = ValueError) -> dict[str, Any]:
    """All tensors of a safetensors file; ``error`` naming the file and ``fix`` when it is unreadable."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise error(f"{source}: {path.name} is missing; {fix}.")
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own SafetensorError, OSError or ValueError
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise error(f"{source}: {path.name} is not a readable safetensors file (truncated or corrupt: {reason}); "
                    f"{fix}.") from None


def write_tensors(path: str | os.PathLike[str], tensors: Mapping[str, Any]) -> Path:
    """Write ``tensors`` to ``path`` atomically (a temp file beside it, then a rename; removed on failure)."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_network(folder: str | os.PathLike[str], policy: Any) -> tuple[Path, dict[str, Any]]:
    """``folder/policy.safetensors`` from ``policy``'s state dict; returns the path and its :func:`network_spec`."""
    return write_tensors(Path(folder) / WEIGHTS, policy.state_dict()), network_spec(policy)


def load_network(folder: str | os.PathLike[str], spec: Any, *, source: str,
                 error: type[Exception] = ValueError) -> Any:
    """The policy network rebuilt from ``spec`` with ``folder/policy.safetensors`` loaded (strict)."""
    policy = build_network(spec, source=source, error=error)
    tensors = read_tensors(Path(folder) / WEIGHTS, source=source, fix="retrain the policy", error=error)
    try:
        policy.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "shapes differ"
        raise error(f"{source}: policy.safetensors does not fit the architecture policy.json records ({first}); "
                    "the two files do not belong together: retrain the policy.") from None
    policy.set_training_mode(False)
    return policy


def refuse_pickled(folder: str | os.PathLike[str], *, error: type[Exception] = ValueError) -> None:
    """Raise ``error`` for a folder that holds only an old pickled ``policy.zip`` (module docstring)."""
    raise error(f"`--policy` {str(folder)!r} holds policy.zip, a pickled policy from an older version, which is "
                "never loaded (unpickling can run code); retrain it with `autosurgeon train --out`, or if you "
                f"trust the file convert it once with `python -m agents.policy_convert {str(folder)} --trust-pickle`.")


__all__ = ["ACTIVATIONS", "PICKLED", "WEIGHTS", "build_network", "file_digest", "load_network", "network_spec",
           "read_tensors", "refuse_pickled", "save_network", "write_tensors"]
