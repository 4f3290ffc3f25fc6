"""Errors the runtime raises for a caller's input or budgets (never for its own bugs)."""
from __future__ import annotations


class JalapenoError(Exception):
    """Base of the runtime's errors: the message names the argument or budget, the value and the fix."""


class BudgetExceededError(JalapenoError, MemoryError):
    """A tier's byte budget cannot hold what was asked of it."""
