"""The one library logger, defined in the lowest layer so every package can use it.

All five packages log under the ``autosurgeon`` logger (``autosurgeon.runtime.streaming`` …), so a
user raises or silences the whole library in one place. The library installs no handler of its own
(a ``NullHandler`` keeps Python's last-resort handler quiet); the CLI installs the only one.
"""
from __future__ import annotations

import logging

LIBRARY_LOGGER = "autosurgeon"

logging.getLogger(LIBRARY_LOGGER).addHandler(logging.NullHandler())


def get_logger(name: str) -> logging.Logger:
    """Return the logger for module ``name`` (pass ``__name__``), nested under ``autosurgeon``."""
    if name == LIBRARY_LOGGER or name.startswith(LIBRARY_LOGGER + "."):
        return logging.getLogger(name)
    return logging.getLogger(f"{LIBRARY_LOGGER}.{name}")
