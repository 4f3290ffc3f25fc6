"""Short stable plan ids and record origins: how a person names a plan across front.csv, TensorBoard and the CLI.

A plan's id is the first 8 hex digits of ``autosurgeon.evaluate.plan_hash`` (sha256 of its decisions; metadata
and fingerprints left out), so the same plan has the same id in every run, file and tool. A record's origin is
its ``algo``: ``baseline:<label>`` for the baselines (``baseline:unmodified``, ``baseline:uniform-int8`` …),
``markov`` for a warm start's plans, else the search algorithm's name.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from autosurgeon.errors import InvalidArgumentError

ID_LENGTH = 8


def plan_id(plan: Any) -> str:
    """The short id of a Plan or a plan dict (``Plan.to_dict()``)."""
    from autosurgeon.evaluate.cache import plan_hash
    from autosurgeon.plan import Plan

    if not isinstance(plan, Plan):
        plan = Plan.from_dict(plan)
    return plan_hash(plan)[:ID_LENGTH]


def record_id(record: Mapping[str, Any]) -> str:
    """A record's plan id (stored as ``id`` since ids exist; computed from its plan for older records)."""
    rid = record.get("id")
    return str(rid) if rid else plan_id(record["plan"])


def origin(record: Mapping[str, Any]) -> str:
    """Where a record's plan came from (``baseline:…``, ``markov``, ``nsga2``, ``random``, ``optuna-…``)."""
    return str(record.get("algo", ""))


def is_baseline(record: Mapping[str, Any]) -> bool:
    return origin(record).startswith("baseline:")


def find_by_id(records: Sequence[Mapping[str, Any]], prefix: str) -> int:
    """Position of the record whose plan id starts with ``prefix`` (unique); InvalidArgumentError otherwise."""
    text = str(prefix).strip().lower()
    if not text:
        raise InvalidArgumentError("`--plan` is empty; give a plan id from `autosurgeon front RUN` (e.g. 3fa2c1d0).")
    hits: dict[str, int] = {}
    for i, r in enumerate(records):
        rid = record_id(r)
        if rid.startswith(text):
            hits.setdefault(rid, i)
    if not hits:
        raise InvalidArgumentError(f"`--plan` {prefix!r} matches no plan of this run's {len(records)} evaluations; "
                                   "`autosurgeon front RUN` lists the front's ids (front.json holds every one).")
    if len(hits) > 1:
        raise InvalidArgumentError(f"`--plan` {prefix!r} matches {len(hits)} plans ({', '.join(sorted(hits)[:5])}); "
                                   "give more digits.")
    return next(iter(hits.values()))


__all__ = ["ID_LENGTH", "find_by_id", "is_baseline", "origin", "plan_id", "record_id"]
