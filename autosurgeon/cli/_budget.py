"""The one ``--memory-budget`` flag every command takes (``autosurgeon.budget`` holds the grammar).

Older spellings (``--budget-memory``, the demo's ``--budget``) still parse, hidden from ``--help``, so
scripts written against them keep working while every help text spells the budget one way.
"""
from __future__ import annotations

import argparse
from typing import Any

from autosurgeon.budget import FLAG, GRAMMAR, MemoryBudget, help_text


def add_memory_budget(parser: argparse.ArgumentParser, what: str, *, default: str | None = None,
                      old: tuple[str, ...] = ()) -> None:
    """Add ``--memory-budget`` (dest ``memory_budget``) with the shared help, and hidden ``old`` spellings."""
    parser.add_argument(FLAG, dest="memory_budget", default=default, metavar=GRAMMAR.split("[,")[0],
                        help=help_text(what + (f" (default {default})" if default else "")))
    for name in old:
        parser.add_argument(name, dest="memory_budget", help=argparse.SUPPRESS)


def memory_budget(args: argparse.Namespace) -> MemoryBudget:
    """The parsed ``--memory-budget`` (empty when not given); errors name the flag."""
    return MemoryBudget.parse(getattr(args, "memory_budget", None), argument=FLAG)


def single_budget(args: argparse.Namespace, *, reference_bytes: int, meaning: str) -> int | None:
    """Bytes of a one-number ``--memory-budget`` (a size or a share of ``reference_bytes``); None when not given.

    For commands whose budget is one figure (``meaning`` says which), a per-tier budget is refused by name.
    """
    budget = memory_budget(args)
    if not budget:
        return None
    limits = budget.resolve(reference_bytes=reference_bytes, fastest="_")
    if list(limits) != ["_"]:
        raise_one(meaning, budget)
    return limits["_"]


def raise_one(meaning: str, budget: Any) -> None:
    from autosurgeon.errors import InvalidArgumentError

    raise InvalidArgumentError(f"`{FLAG}` {budget} names tiers, but here it bounds {meaning}; give one size or "
                               "share without TIER= (e.g. 40% or 4MiB).")
