"""Re-export of the one library logger (defined in ``runtime._log``, the lowest layer)."""
from __future__ import annotations

from runtime._log import LIBRARY_LOGGER, get_logger

__all__ = ["LIBRARY_LOGGER", "get_logger"]
