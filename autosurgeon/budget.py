"""MemoryBudget: the one meaning of a memory budget, parsed in one place.

Every command spells it ``--memory-budget [TIER=]SIZE|SHARE%[,TIER=SIZE|SHARE%...]``:

* ``gpu=3GiB,cpu=20GiB`` — bytes per tier (``gpu``, ``cpu``, ``disk``);
* ``25%`` or ``cpu=25%`` — a share of a reference: the unmodified model's weight bytes;
* a bare entry (no ``TIER=``) is the *fastest* tier of the execution device: ``gpu`` where the device has
  one, else ``cpu`` (what ``plan --budget-memory`` meant before).

A budget is resolved to ``{tier: bytes}`` only when the reference and the device are known
(:meth:`MemoryBudget.resolve`), so a plan can carry ``"25%"`` and mean the same on any copy of the model.
Plans store it (``Plan.budgets``) in its written form; ``apply_plan`` enforces it.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autosurgeon.errors import InvalidArgumentError
from runtime.errors import JalapenoError
from runtime.sizes import parse_bytes

TIERS = ("gpu", "cpu", "disk")
FASTEST = "fastest"  # the key of a bare entry: the execution device's fastest tier
FLAG = "--memory-budget"
GRAMMAR = "[TIER=]SIZE|SHARE%[,...]"
_HELP_EXAMPLE = "e.g. 25%, 2GiB, gpu=3GiB,cpu=20GiB or cpu=40%"
_SHARE = re.compile(r"^\s*([+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*%\s*$")
# Anything past this is a typo or an overflow, not a machine (1 EiB).
MAX_BYTES = 2**60


@dataclass(frozen=True)
class Share:
    """A fraction of the reference bytes (the unmodified model's weights): ``Share(25.0)`` is 25 %."""

    percent: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.percent) and self.percent > 0):
            raise InvalidArgumentError(f"a memory-budget share must be a positive finite percentage, got "
                                       f"{self.percent!r}%.")

    def __str__(self) -> str:
        return f"{self.percent:g}%"


@dataclass(frozen=True)
class MemoryBudget:
    """Per-tier limits: bytes (int) or a :class:`Share`; ``FASTEST`` stands for the device's fastest tier.

    An empty budget means "no limit" (``bool(budget)`` is False).
    """

    limits: Mapping[str, int | Share] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for tier, value in self.limits.items():
            if tier not in (*TIERS, FASTEST):
                raise InvalidArgumentError(f"memory-budget tier {tier!r} is unknown; use one of "
                                           f"{', '.join(TIERS)} (or no TIER= for the fastest tier).")
            if not isinstance(value, Share) and not (isinstance(value, int) and 0 <= value <= MAX_BYTES):
                raise InvalidArgumentError(f"memory-budget {tier} must be bytes in [0, 2^60] or a Share, "
                                           f"got {value!r}.")

    def __bool__(self) -> bool:
        return bool(self.limits)

    # ---- parsing
    @classmethod
    def parse(cls, value: Any, *, argument: str = FLAG) -> MemoryBudget:
        """From text (``"gpu=3GiB,cpu=20%"``, ``"25%"``), a mapping (``{"gpu": "3GiB"}``), bytes, or None/"".

        Errors name ``argument``, the value and the accepted forms.
        """
        if value is None or isinstance(value, MemoryBudget):
            return value or cls()
        if isinstance(value, Mapping):
            items = [(str(k).strip().lower(), v) for k, v in value.items() if v is not None]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            items = [(FASTEST, value)]
        elif isinstance(value, str):
            items = []
            for part in filter(None, (p.strip() for p in value.split(","))):
                tier, sep, size = part.rpartition("=")
                if sep and not size.strip():
                    raise InvalidArgumentError(f"`{argument}` entry {part!r} has no size; {_HELP_EXAMPLE}.")
                items.append((tier.strip().lower() if sep else FASTEST, size.strip()))
        else:
            raise InvalidArgumentError(f"`{argument}` must be text such as 'gpu=3GiB,cpu=25%', got "
                                       f"{type(value).__name__}.")
        limits: dict[str, int | Share] = {}
        for tier, size in items:
            if tier not in (*TIERS, FASTEST):
                raise InvalidArgumentError(f"`{argument}` tier {tier!r} is unknown; use one of {', '.join(TIERS)}, "
                                           f"or no TIER= for the device's fastest tier ({_HELP_EXAMPLE}).")
            if tier in limits:
                raise InvalidArgumentError(f"`{argument}` gives tier {tier!r} twice.")
            limits[tier] = _parse_limit(size, argument=f"{argument} {tier}" if tier != FASTEST else argument)
        return cls(limits)

    # ---- use
    def resolve(self, *, reference_bytes: int | None = None, fastest: str | None = None) -> dict[str, int]:
        """``{tier: bytes}``: shares taken of ``reference_bytes``, the bare entry put on ``fastest``.

        Raises InvalidArgumentError if a share needs a reference or a bare entry needs a tier that is not given.
        """
        out: dict[str, int] = {}
        for tier, value in self.limits.items():
            if tier == FASTEST:
                if fastest is None:
                    raise InvalidArgumentError("a memory budget without TIER= needs the execution device's fastest "
                                               "tier; give it as gpu=SIZE or cpu=SIZE.")
                tier = fastest
            if isinstance(value, Share):
                if reference_bytes is None:
                    raise InvalidArgumentError(f"memory budget {tier}={value} is a share, but no reference size "
                                               "(the unmodified model's weight bytes) is known here; give bytes.")
                nbytes = int(reference_bytes * value.percent / 100.0)
            else:
                nbytes = value
            if tier in out:
                raise InvalidArgumentError(f"memory budget gives tier {tier!r} twice (once as the fastest tier).")
            out[tier] = nbytes
        return out

    def tier_bytes(self, tier: str, *, reference_bytes: int | None = None, fastest: str | None = None) -> int | None:
        """The limit on one tier in bytes (None: unlimited)."""
        return self.resolve(reference_bytes=reference_bytes, fastest=fastest).get(tier)

    # ---- persistence: the written form, so shares stay shares
    def to_json(self) -> dict[str, str | int]:
        return {tier: str(v) if isinstance(v, Share) else v for tier, v in self.limits.items()}

    @classmethod
    def from_json(cls, data: Any, *, source: str = "plan") -> MemoryBudget:
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise InvalidArgumentError(f"{source}: `budgets` must be an object of tier -> size, got "
                                       f"{type(data).__name__}.")
        return cls.parse(data, argument=f"{source} budgets")

    def __str__(self) -> str:
        return ",".join(f"{v}" if t == FASTEST else f"{t}={v}" for t, v in self.limits.items()) or "none"


def _parse_limit(value: Any, *, argument: str) -> int | Share:
    if isinstance(value, str):
        match = _SHARE.match(value)
        if match is not None:
            percent = float(match.group(1))
            if not (math.isfinite(percent) and percent > 0):
                raise InvalidArgumentError(f"`{argument}` share must be a positive percentage, got {value!r}.")
            return Share(percent)
        if value.strip().endswith("%"):
            raise InvalidArgumentError(f"`{argument}` must be a size such as 2GiB or a share such as 25%, "
                                       f"got {value!r}.")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidArgumentError(f"`{argument}` must be a finite size, got {value!r}.")
    try:
        nbytes = parse_bytes(value, what=argument)
    except JalapenoError as exc:  # its message names the unit or the sign that is wrong
        raise InvalidArgumentError(f"{str(exc).rstrip('.')}; a share such as 25% works too.") from None
    except (OverflowError, ValueError):  # 1e999: a float with no integer
        raise InvalidArgumentError(f"`{argument}` must be a size such as 2GiB or 300MB, or a share such as 25%, "
                                   f"got {value!r}.") from None
    if nbytes > MAX_BYTES:
        raise InvalidArgumentError(f"`{argument}` is {value!r}, over 1 EiB; give a size such as 2GiB.")
    return nbytes


def help_text(what: str) -> str:
    """The one help string every command's ``--memory-budget`` shows (argparse-safe: ``%`` doubled)."""
    text = (f"{what}: {GRAMMAR}, {_HELP_EXAMPLE}; a bare SIZE or SHARE% is the device's fastest tier, a SHARE% "
            "is of the unmodified model's weight bytes")
    return text.replace("%", "%%")


__all__ = ["FASTEST", "FLAG", "GRAMMAR", "MemoryBudget", "Share", "TIERS", "help_text"]
