"""PNG plots of a front: every pair of objectives in 2-D, all evaluations in grey, the front in colour,
the baselines marked.

Uses matplotlib's object API with the Agg canvas (``Figure`` + ``FigureCanvasAgg``), never ``pyplot``:
no global backend switch, no figure registry, so a library call cannot open windows or leak figures in
the caller's session.
"""
from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Display scale and unit per objective (stored values are SI: seconds, bytes, joules, relative loss).
DISPLAY: dict[str, tuple[float, str]] = {
    "latency": (1e3, "latency (ms)"), "prefill": (1e3, "prefill (ms)"),
    "throughput": (-1.0, "throughput (tokens/s)"), "energy": (1e3, "energy (mJ)"),
    "quality": (100.0, "quality loss (%)"),
}
BASELINE_MARKERS = ("s", "^", "D", "v", "P", "X", "*", "h")


def axis(name: str) -> tuple[float, str]:
    """(scale, label) shown for objective ``name``; memory objectives in MiB."""
    if name.startswith("memory"):
        return 1.0 / 2**20, f"{name} (MiB)"
    return DISPLAY.get(name, (1.0, name))


def _points(records: Sequence[Mapping[str, Any]]) -> np.ndarray:
    if not records:
        return np.zeros((0, 0))
    return np.array([[float(v) for v in r["objectives"]] for r in records], dtype=np.float64)


def _scale_axis(set_scale: Any, values: np.ndarray) -> None:
    """Log scale where the values are positive and span more than two decades (memory across tiers)."""
    finite = values[np.isfinite(values)]
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 100:
        set_scale("log")


def draw_pair(ax: Any, i: int, j: int, names: Sequence[str], all_pts: np.ndarray, front_pts: np.ndarray,
              baselines: Mapping[str, np.ndarray], feasible: np.ndarray | None = None) -> None:
    """One 2-D projection (objective ``i`` on x, ``j`` on y) into matplotlib axes ``ax``; infeasible
    evaluations (``feasible`` False: over the quality bound) are drawn as light crosses."""
    (sx, lx), (sy, ly) = axis(names[i]), axis(names[j])
    if all_pts.size:
        ok = feasible if feasible is not None and len(feasible) == len(all_pts) else np.ones(len(all_pts), bool)
        ax.scatter(all_pts[ok, i] * sx, all_pts[ok, j] * sy, s=6, c="0.7", label="evaluated", zorder=1)
        if not ok.all():
            ax.scatter(all_pts[~ok, i] * sx, all_pts[~ok, j] * sy, s=8, c="0.8", marker="x", linewidths=0.6,
                       label="infeasible", zorder=1)
    if front_pts.size:
        order = np.argsort(front_pts[:, i])
        ax.scatter(front_pts[order, i] * sx, front_pts[order, j] * sy, s=22, c="tab:blue", label="front", zorder=3)
    for k, (name, pts) in enumerate(baselines.items()):
        if pts.size:
            ax.scatter(pts[:, i] * sx, pts[:, j] * sy, s=40, marker=BASELINE_MARKERS[k % len(BASELINE_MARKERS)],
                       facecolors="none", edgecolors=f"C{(k + 1) % 10}", linewidths=1.2, label=name, zorder=4)
    stacked = [p for p in (all_pts, front_pts, *baselines.values()) if p.size]
    if stacked:
        both = np.vstack(stacked)
        _scale_axis(ax.set_xscale, both[:, i] * sx)
        _scale_axis(ax.set_yscale, both[:, j] * sy)
    ax.set_xlabel(lx)
    ax.set_ylabel(ly)
    ax.grid(True, alpha=0.3)


def plot_front(plots_dir: Path, *, names: Sequence[str], records: Sequence[Mapping[str, Any]],
               front_idx: Sequence[int], baselines: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
               title: str = "") -> dict[str, Path]:
    """Write ``front.png`` (all pairs in one grid) and ``front_<a>_vs_<b>.png`` per pair; return their paths.

    Keys of the result: ``"front_png"`` and ``"plot:<a>_vs_<b>"``. With one objective the grid shows the
    objective against the evaluation index.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    all_pts = _points(records)
    feasible = np.array([bool(r.get("feasible", True)) for r in records], dtype=bool)
    front_pts = _points([records[i] for i in front_idx])
    base = {name: _points(recs) for name, recs in (baselines or {}).items()}
    if len(names) == 1:  # a single objective: plot it against evaluation order
        all_pts = np.column_stack([np.arange(len(all_pts)), all_pts]) if all_pts.size else all_pts
        front_pts = np.column_stack([np.asarray(front_idx, float), front_pts]) if front_pts.size else front_pts
        base = {k: np.column_stack([np.zeros(len(v)), v]) if v.size else v for k, v in base.items()}
        names = ["evaluation", *names]
    pairs = list(itertools.combinations(range(len(names)), 2))
    out: dict[str, Path] = {}

    def save(fig: Any, path: Path) -> None:
        FigureCanvasAgg(fig)
        fig.savefig(path, dpi=100)

    for i, j in pairs:
        fig = Figure(figsize=(5, 4), tight_layout=True)
        ax = fig.add_subplot(1, 1, 1)
        draw_pair(ax, i, j, names, all_pts, front_pts, base, feasible)
        ax.legend(fontsize="small")
        if title:
            ax.set_title(title, fontsize="small")
        path = plots_dir / f"front_{_slug(names[i])}_vs_{_slug(names[j])}.png"
        save(fig, path)
        out[f"plot:{_slug(names[i])}_vs_{_slug(names[j])}"] = path

    cols = min(3, len(pairs))
    rows = -(-len(pairs) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.6 * rows), tight_layout=True)
    for k, (i, j) in enumerate(pairs):
        ax = fig.add_subplot(rows, cols, k + 1)
        draw_pair(ax, i, j, names, all_pts, front_pts, base, feasible)
        if k == 0:
            ax.legend(fontsize="x-small")
    if title:
        fig.suptitle(title, fontsize="medium")
    path = plots_dir / "front.png"
    save(fig, path)
    out["front_png"] = path
    return out


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name)


__all__ = ["axis", "draw_pair", "plot_front"]
