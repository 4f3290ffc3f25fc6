"""The front as files people and programs read: ``front.csv`` (one row per member) and ``front.json``.

``front.json`` is versioned (``{"_type": "autosurgeon.Front", "_version": 1, "_data": ...}``) and holds
the sweep's config, the objective names, every member's plan and metrics in full, and the baselines'
records; it is what ``agents.markov.fit_from_runs`` and ``autosurgeon front`` read back. ``front.csv``
is the same front flattened for a spreadsheet: objectives, the headline metrics and a plan summary.
"""
from __future__ import annotations

import csv
import json
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from autosurgeon.files.envelope import unwrap
from autosurgeon.errors import InvalidArgumentError

FRONT_TYPE = "autosurgeon.Front"
FRONT_VERSION = 1
METRIC_COLUMNS = ("latency_s", "prefill_s", "tokens_per_s", "energy_j", "quality_loss")
TIERS = ("gpu", "cpu", "disk")
KNOB_ORDER = ("precision", "group_size", "placement")  # the rest follow by name


def plan_decisions(plan: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{target: decisions}`` of a plan dict (``Plan.to_dict()``), rules only, ``"<default>"`` for the default."""
    data = plan.get("_data", plan) if isinstance(plan, Mapping) else {}
    out = {str(r["target"]): dict(r["decisions"]) for r in data.get("rules", [])}
    if data.get("default"):
        out["<default>"] = dict(data["default"])
    return out


def plan_summary(plan: Mapping[str, Any], metrics: Mapping[str, Any] | None = None) -> dict[str, float | int | str]:
    """Counts of each precision and placement over the plan's rules, and the bytes the plan holds.

    Keys: ``<knob>:<value>`` for every knob the plan decides (precision, group_size, placement, then the
    rest by name): the number of rules setting that value (a plan from
    ``SearchSpace.decode`` has one exact rule per module, so these are module counts), ``n_rules``, and
    from the metrics ``weight_bytes`` (sum of ``peak_bytes`` over tiers: weights + staging + packed copies,
    as the runtime's TensorStore charges them; activations are not in it) and ``bytes:<tier>``.
    """
    decisions = plan_decisions(plan)
    out: dict[str, float | int | str] = {"n_rules": len(decisions)}
    knobs = sorted({k for d in decisions.values() for k in d}, key=lambda k: (k not in KNOB_ORDER, KNOB_ORDER.index(k)
                                                                             if k in KNOB_ORDER else 0, k))
    for knob in knobs:
        counts = Counter(str(d[knob]) for d in decisions.values() if knob in d)
        for value, n in sorted(counts.items()):
            out[f"{knob}:{value}"] = n
    if metrics is not None:
        peak = _metrics_data(metrics).get("peak_bytes") or {}
        out["weight_bytes"] = int(sum(int(v) for v in peak.values()))
        for tier in TIERS:
            out[f"bytes:{tier}"] = int(peak.get(tier, 0))
    return out


def _metrics_data(metrics: Mapping[str, Any]) -> Mapping[str, Any]:
    return metrics.get("_data", metrics) if isinstance(metrics, Mapping) else {}


def objective_names(config: Mapping[str, Any]) -> list[str]:
    """The names of a record's ``objectives``, in order: ``config["objective_names"]`` if given, else
    ``config["objectives"]`` plus ``"quality"`` last when ``config["quality"] == "objective"`` (a sweep
    config lists quality apart, as a constraint or a fourth objective)."""
    names = config.get("objective_names") or config.get("objectives") if isinstance(config, Mapping) else None
    if not names or isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise InvalidArgumentError(
            f"`config['objectives']` must be a non-empty list of objective names, got {names!r}.")
    names = list(names)
    if "objective_names" not in config and config.get("quality") == "objective" and "quality" not in names:
        names.append("quality")
    return names


def check_inputs(config: Mapping[str, Any], records: Sequence[Mapping[str, Any]],
                 front_idx: Sequence[int]) -> list[str]:
    """Validate the contract's inputs; return the objective names (:func:`objective_names`)."""
    names = objective_names(config)
    for k, rec in enumerate(records):
        missing = [key for key in ("eval", "x", "plan", "metrics", "objectives") if key not in rec]
        if missing:
            raise InvalidArgumentError(f"`records[{k}]` lacks {missing}; each record needs eval, algo, generation, "
                                       "x, plan, metrics, objectives, feasible.")
        if len(rec["objectives"]) != len(names):
            raise InvalidArgumentError(f"`records[{k}]['objectives']` has {len(rec['objectives'])} values but "
                                       f"config['objectives'] names {len(names)}: {list(names)}.")
    bad = [i for i in front_idx if not (isinstance(i, int) and 0 <= i < len(records))]
    if bad:
        raise InvalidArgumentError(f"`front_idx` must index `records` (0..{len(records) - 1}), got {bad[:5]}.")
    return list(names)


def member_row(rank: int, rec: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """One CSV row: identity, objectives, headline metrics and the plan summary."""
    from experiments.sweep.ids import record_id

    row: dict[str, Any] = {"id": record_id(rec), "origin": rec.get("algo", ""), "member": rank,
                           "eval": rec.get("eval"), "algo": rec.get("algo", ""),
                           "generation": rec.get("generation", ""), "feasible": bool(rec.get("feasible", True))}
    for name, value in zip(names, rec["objectives"]):
        row[f"obj:{name}"] = float(value)
    data = _metrics_data(rec["metrics"])
    for col in METRIC_COLUMNS:
        value = data.get(col)
        row[col] = "" if value is None else value
    row.update(plan_summary(rec["plan"], rec["metrics"]))
    row["x"] = " ".join(str(int(v)) for v in rec["x"])
    return row


def write_front_files(run_dir: Path, *, config: Mapping[str, Any], records: Sequence[Mapping[str, Any]],
                      front_idx: Sequence[int],
                      baselines: Mapping[str, Sequence[Mapping[str, Any]]] | None = None) -> dict[str, Path]:
    """Write ``run_dir/front.csv`` and ``run_dir/front.json`` (atomically); return ``{"front_csv", "front_json"}``."""
    from experiments.sweep.ids import record_id

    names = check_inputs(config, records, front_idx)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    members = [records[i] for i in front_idx]
    rows = [member_row(rank, rec, names) for rank, rec in enumerate(members)]
    # Columns: the union over members (a precision one member lacks is a 0, not a shift), counts grouped
    # and sorted, the vector last.
    seen: list[str] = []
    for row in rows:
        seen.extend(c for c in row if c not in seen)
    counts = sorted(c for c in seen if _is_count(c))
    head = [c for c in seen if c not in counts and c != "x"]
    at = head.index("n_rules") + 1 if "n_rules" in head else len(head)
    columns = [*head[:at], *counts, *head[at:], *(["x"] if "x" in seen else [])]
    csv_path = run_dir / "front.csv"
    tmp = csv_path.with_name(f".front.csv.{os.getpid()}.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns or ["member"])
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, 0 if _is_count(c) else "") for c in columns})
    os.replace(tmp, csv_path)

    doc = {"_type": FRONT_TYPE, "_version": FRONT_VERSION, "_data": {
        "config": dict(config), "objectives": names, "reference_point": config.get("reference_point"),
        "n_evals": len(records), "front_idx": [int(i) for i in front_idx],
        "members": [{**_jsonable(rec), "id": record_id(rec), "origin": rec.get("algo", ""), "member": rank,
                     "summary": plan_summary(rec["plan"], rec["metrics"])}
                    for rank, rec in enumerate(members)],
        "baselines": {name: [_jsonable(r) for r in recs] for name, recs in (baselines or {}).items()}}}
    json_path = run_dir / "front.json"
    tmp = json_path.with_name(f".front.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=_default) + "\n")
    os.replace(tmp, json_path)
    return {"front_csv": csv_path, "front_json": json_path}


def _is_count(column: str) -> bool:
    """A knob-value count column of :func:`plan_summary` (``precision:int8``), not ``bytes:gpu`` or ``obj:latency``."""
    return ":" in column and not column.startswith(("bytes:", "obj:"))


def read_front(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``_data`` of a ``front.json`` (a run directory or the file); InvalidArgumentError if unreadable."""
    path = Path(path)
    if path.is_dir():
        path = path / "front.json"
    if not path.is_file():
        raise InvalidArgumentError(f"front file {str(path)!r} does not exist; pass a run directory written by "
                                   "`autosurgeon sweep` (it holds front.json) or the front.json itself.")
    return unwrap(path.read_text(), type_name=FRONT_TYPE, version=FRONT_VERSION, what="front", source=str(path),
                  fix="run the sweep again")


def _jsonable(rec: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(rec)
    if "x" in out:
        out["x"] = [int(v) for v in out["x"]]
    if "objectives" in out:
        out["objectives"] = [float(v) for v in out["objectives"]]
    return out


def _default(obj: Any) -> Any:
    """numpy scalars/arrays and paths in a config or record, as JSON."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


__all__ = ["FRONT_TYPE", "FRONT_VERSION", "objective_names", "plan_decisions", "plan_summary", "read_front",
           "write_front_files"]
