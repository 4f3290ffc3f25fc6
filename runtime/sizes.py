"""Byte sizes written by people (``3GiB``, ``500MB``, ``1.5e9``) parsed into integers, and back."""
from __future__ import annotations

import re

from runtime.errors import JalapenoError

# Binary units are powers of 1024, decimal ones powers of 1000 (IEC 80000-13), so "3GiB" means what
# nvidia-smi and torch report and "3GB" what a disk label says.
_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
    "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40,  # the shorthand accelerate and docker accept
}
MAX_BYTES = 2**63 - 1  # the largest size a byte count can hold (int64); anything above is a typo or 1e999
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str | int | float, *, what: str = "size") -> int:
    """Return the number of bytes ``text`` names (``"3GiB"`` -> 3221225472).

    Args:
        text: a number of bytes, or a number followed by B, kB, MB, GB, TB, KiB, MiB, GiB, TiB (case-insensitive).
        what: the argument's name, used in the error message.

    Raises:
        JalapenoError: the text is not a size, or is negative.
    """
    if isinstance(text, bool):
        raise JalapenoError(f"`{what}` must be a byte size such as 3GiB or 500MB, got {text!r}.")
    if isinstance(text, (int, float)):
        value, unit = float(text), ""
    else:
        match = _PATTERN.match(str(text))
        if match is None:
            raise JalapenoError(
                f"`{what}` must be a byte size such as 3GiB, 500MB or 1048576, got {text!r}."
            )
        value, unit = float(match.group(1)), match.group(2).lower()
    if unit not in _UNITS:
        raise JalapenoError(
            f"`{what}` has an unknown unit {unit!r} in {text!r}; use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB."
        )
    if value != value or value < 0:  # NaN, or negative
        raise JalapenoError(f"`{what}` must be >= 0 bytes, got {text!r}.")
    if value * _UNITS[unit] > MAX_BYTES:  # inf (1e999) included
        raise JalapenoError(f"`{what}` must be at most {MAX_BYTES} bytes (8 EiB), got {text!r}; give a real size "
                            "such as 3GiB.")
    return int(round(value * _UNITS[unit]))


def format_bytes(n: int | float) -> str:
    """Render a byte count for people: binary units, three significant digits (``1.50 GiB``)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} B" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} GiB"  # unreachable; keeps type checkers calm
