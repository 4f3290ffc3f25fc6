"""What a sweep's front owes to its search: origins, the baselines' hypervolume, and whether the search added anything.

The front is the non-dominated set of everything evaluated, baselines included, so its hypervolume is never
below the baselines'. What tells a search that earned its keep from one that did not is whether any search
member (an origin that is not ``baseline:…``) is on that front: when none is, :func:`front_outcome` says so
in a note the sweep prints and logs.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from experiments.sweep.hypervolume import hypervolume
from experiments.sweep.ids import is_baseline, origin, record_id


def _hv(records: Sequence[dict[str, Any]], reference_point: Sequence[float], scales: Sequence[float]) -> float:
    return hypervolume([r["objectives"] for r in records if r["feasible"]], reference_point, scales=scales)


def front_rows(records: Sequence[dict[str, Any]], front: Sequence[int]) -> list[dict[str, Any]]:
    """The front as short rows: id, origin, eval, objectives, quality loss (what ``--json`` prints)."""
    return [{"id": record_id(records[i]), "origin": origin(records[i]), "eval": records[i]["eval"],
             "objectives": [float(v) for v in records[i]["objectives"]],
             "quality_loss": records[i].get("quality_loss")} for i in front]


def front_outcome(records: Sequence[dict[str, Any]], front: Sequence[int], *, reference_point: Sequence[float],
                  scales: Sequence[float]) -> tuple[dict[str, Any], list[str]]:
    """Summary entries (origins, per-family and baselines' hypervolume, ``search_dominated``) and notes."""
    base = [r for r in records if is_baseline(r)]
    search = [r for r in records if not is_baseline(r)]
    fams: dict[str, list[dict[str, Any]]] = {}
    for r in base:
        fams.setdefault(str(r.get("family") or origin(r).split(":", 1)[1]), []).append(r)
    on_front = [records[i] for i in front]
    search_on_front = [r for r in on_front if not is_baseline(r)]
    hv_all = _hv(records, reference_point, scales)
    hv_base = _hv(base, reference_point, scales)
    out = {
        "origins": dict(Counter(origin(r) for r in records)),
        "front_origins": dict(Counter(origin(r) for r in on_front)),
        "hypervolume_baselines": hv_base,
        "hypervolume_search_only": _hv(search, reference_point, scales),
        "baselines": {fam: {"n": len(rs), "hypervolume": _hv(rs, reference_point, scales)} for fam, rs in fams.items()},
        "search_members": len(search), "search_on_front": len(search_on_front),
        "search_dominated": bool(search) and not search_on_front,
        "front": front_rows(records, front),
    }
    notes = []
    if out["search_dominated"]:
        notes.append(f"every one of the {len(search)} plans the search found is dominated: the front "
                     f"(hypervolume {hv_all:.4f}) is the baselines' alone ({', '.join(sorted(out['front_origins']))}); "
                     "the search added nothing at this budget.")
    elif base and hv_all <= hv_base + 1e-12:
        notes.append(f"the search's plans on the front tie the baselines' (hypervolume {hv_all:.4f} = the baselines' "
                     f"{hv_base:.4f}); nothing gained at this budget.")
    return out, notes


__all__ = ["front_outcome", "front_rows"]
