"""AutoSurgeon: hardware-aware model surgery for PyTorch models.

Importing this package never touches CUDA or NVML; hardware is probed only when asked
(see ``autosurgeon.hardware.resolve``).
"""
from __future__ import annotations

from autosurgeon._logging import get_logger

__version__ = "0.1.0"
# The Python API (autosurgeon/api.py), imported on first use so that `import autosurgeon` stays light.
# `make_plan`, not `plan`: `autosurgeon.plan` is the Plan module, and importing it would shadow a `plan` here.
_API = ("load", "make_plan", "apply", "prompt")
__all__ = ["__version__", "get_logger", *_API]


def __getattr__(name: str) -> object:
    if name in _API:
        from autosurgeon import api

        return getattr(api, name)
    raise AttributeError(f"module 'autosurgeon' has no attribute {name!r}")
