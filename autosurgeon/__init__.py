"""AutoSurgeon: hardware-aware model surgery for PyTorch models.

Importing this package never touches CUDA or NVML; hardware is probed only when asked
(see ``autosurgeon.hardware.resolve``).
"""
from __future__ import annotations

from autosurgeon._logging import get_logger

__version__ = "0.1.0"
__all__ = ["__version__", "get_logger"]
