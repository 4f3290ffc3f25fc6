"""One TensorStore per execution device, sharing the host and disk tiers through one ledger.

A model run across several devices gives every device its own :class:`~runtime.tensors.TensorStore` (its
own budget on its execution tier, its own Streamer and staging slots) while the tiers all devices stream
from — host memory and disk — have one budget for the whole machine. :class:`DeviceStore` charges each byte
to its own store first (the device's budget; a refusal names the device) and then to a shared
:class:`Ledger` (the machine's tier budgets; a refusal there undoes the device's charge), so both hold at
every moment and neither can be exceeded. Nothing is allocated on a refused charge, as in the TensorStore.

Two logical devices may share one physical device (two "devices" on one GPU or on the host): their stores
are separate, so each keeps its own budget and accounting while the tensors live side by side.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Mapping

from runtime.errors import BudgetExceededError, JalapenoError
from runtime.sizes import format_bytes
from runtime.tensors import TIERS, TensorStore


class Ledger:
    """The machine-wide budgets of the shared tiers: charges from every DeviceStore, per-device holders."""

    def __init__(self, budgets: Mapping[str, int | None] | None = None) -> None:
        budgets = dict(budgets or {})
        for tier, value in budgets.items():
            if tier not in TIERS:
                raise JalapenoError(f"ledger tier {tier!r} is unknown; use one of {', '.join(TIERS)}.")
            if value is not None and value < 0:
                raise JalapenoError(f"budget for tier {tier!r} must be >= 0 bytes, got {value}.")
        self.budgets: dict[str, int | None] = {t: budgets.get(t) for t in TIERS}
        self._used = dict.fromkeys(TIERS, 0)
        self._peak = dict.fromkeys(TIERS, 0)
        self._by_device: dict[str, dict[str, int]] = {t: {} for t in TIERS}
        self._lock = threading.Lock()

    def charge(self, tier: str, nbytes: int, *, device: str, label: str) -> None:
        with self._lock:
            budget = self.budgets[tier]
            if budget is not None and self._used[tier] + nbytes > budget:
                held = self._by_device[tier]
                top = max(held, key=held.__getitem__) if held else None
                most = f"device {top!r} holds the most ({format_bytes(held[top])})" if top else "nothing is held there"
                raise BudgetExceededError(
                    f"shared tier {tier!r} budget {format_bytes(budget)} ({budget} B) cannot take {label!r} for device "
                    f"{device!r}: it needs {format_bytes(nbytes)} more on top of {format_bytes(self._used[tier])} "
                    f"in use by all devices; {most}. Raise the {tier!r} budget to at least "
                    f"{format_bytes(self._used[tier] + nbytes)}, or home more weights on a slower tier.")
            self._used[tier] += nbytes
            self._peak[tier] = max(self._peak[tier], self._used[tier])
            self._by_device[tier][device] = self._by_device[tier].get(device, 0) + nbytes

    def uncharge(self, tier: str, nbytes: int, *, device: str) -> None:
        with self._lock:
            self._used[tier] -= nbytes
            left = self._by_device[tier].get(device, 0) - nbytes
            if left > 0:
                self._by_device[tier][device] = left
            else:
                self._by_device[tier].pop(device, None)

    def used(self, tier: str) -> int:
        return self._used[tier]

    def peak(self, tier: str) -> int:
        return self._peak[tier]


class DeviceStore(TensorStore):
    """A TensorStore for one execution device whose charges also go to a shared :class:`Ledger`.

    Args:
        device: the logical device's name, used in messages and the ledger (``"gpu:1"``).
        budget: bytes this device may hold on its execution tier ``exec_tier`` (None: unbounded).
        exec_tier: ``"gpu"`` or ``"cpu"``: the tier of the physical device the logical one runs on.
        ledger: the machine's shared budgets (host and disk); every device's charges meet there.
        offload_dir, pin_memory: as for TensorStore.
    """

    def __init__(self, device: str, *, budget: int | None, exec_tier: str, ledger: Ledger,
                 offload_dir: str | os.PathLike | None = None, pin_memory: bool | None = None) -> None:
        if exec_tier not in ("gpu", "cpu"):
            raise JalapenoError(f"`exec_tier` must be 'gpu' or 'cpu', got {exec_tier!r}.")
        super().__init__(budgets={exec_tier: budget}, offload_dir=offload_dir, pin_memory=pin_memory)
        self.device = device
        self.exec_tier = exec_tier
        self.ledger = ledger

    def _charge(self, tier: str, nbytes: int, label: str) -> None:
        try:
            super()._charge(tier, nbytes, label)
        except BudgetExceededError as exc:
            raise BudgetExceededError(f"device {self.device!r}: {exc}") from None
        try:
            self.ledger.charge(tier, nbytes, device=self.device, label=label)
        except BudgetExceededError:
            super()._uncharge(tier, nbytes, label)
            raise

    def _uncharge(self, tier: str, nbytes: int, label: str) -> None:
        super()._uncharge(tier, nbytes, label)
        self.ledger.uncharge(tier, nbytes, device=self.device)


__all__ = ["DeviceStore", "Ledger"]
