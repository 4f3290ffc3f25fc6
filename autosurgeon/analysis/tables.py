"""Plain-text tables of a ``ModelAnalysis`` (used by ``autosurgeon analyze`` and ``autosurgeon demo``).

Library code returns the text; only the CLI prints it.
"""
from __future__ import annotations

from autosurgeon.analysis.model_analysis import ModelAnalysis, UnitInfo

COLUMNS = ("unit", "kind", "params", "FLOPs", "weights", "act in+out", "F/B", "par", "roofline", "bound")
_RIGHT = {"params", "FLOPs", "weights", "act in+out", "F/B", "par", "roofline"}


def si(value: float, unit: str = "") -> str:
    """Decimal prefixes (k, M, G, T, P): counts and FLOPs."""
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{prefix}{unit}"
    return f"{value:.3g}{unit}" if value else f"0{unit}"


def binary_bytes(nbytes: float) -> str:
    """Binary prefixes (KiB, MiB, GiB, TiB): bytes."""
    for scale, prefix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if nbytes >= scale:
            return f"{nbytes / scale:.4g} {prefix}"
    return f"{int(nbytes)} B"


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us")):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value / 1e-9:.3g} ns"


def _row(unit: UnitInfo) -> tuple[str, ...]:
    return (
        unit.name or "<root>",
        unit.kind,
        si(unit.params),
        si(unit.flops),
        binary_bytes(unit.weight_read_bytes),
        binary_bytes(unit.activation_bytes + (unit.kv_cache_bytes if unit.kind == "block" else 0)),
        f"{unit.intensity:.3g}",
        f"{unit.parallelism:.2f}",
        seconds(unit.roofline_s),
        unit.bound or "-",
    )


def format_units(units: list[UnitInfo]) -> str:
    """An aligned table of ``units`` with the columns in ``COLUMNS``."""
    rows = [COLUMNS] + [_row(u) for u in units]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = []
    for n, row in enumerate(rows):
        cells = [c.rjust(w) if COLUMNS[i] in _RIGHT else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_analysis(analysis: ModelAnalysis, *, leaves: bool = False) -> str:
    """Header, the block-level table (or the leaves with ``leaves=True``) and a totals line."""
    t = analysis.totals
    shapes = ", ".join(f"{k} {tuple(v)}" for k, v in analysis.input_shapes.items())
    where = f"roofline on {analysis.profile} / {analysis.compute_unit}" if analysis.profile else "no roofline (no profile)"
    lines = [
        f"{analysis.model_class}  phase {analysis.phase}  inputs {shapes}  on {analysis.device}",
        f"{where}; analysed in {analysis.analysis_s:.2f} s",
        "",
        format_units(analysis.leaves if leaves else analysis.blocks),
        "",
        f"total: {si(t['params'])} params, {binary_bytes(t['weight_bytes'])} weights "
        f"({', '.join(f'{k} {binary_bytes(v)}' for k, v in t['bytes_by_dtype'].items())}), {si(t['flops'])}FLOPs, "
        f"{binary_bytes(t['memory_bytes'])} moved (weights read {binary_bytes(t['weight_read_bytes'])}, "
        f"KV cache read {binary_bytes(t['kv_cache_bytes'])}), intensity {t['intensity']:.3g} F/B",
    ]
    if t.get("roofline_s") is not None:
        lines.append(
            f"roofline: whole model {seconds(t['roofline_s'])} ({t['bound']}-bound); "
            f"sum over units {seconds(t['roofline_sum_s'])}"
        )
    level = "leaf" if leaves else "block"
    missing_flops = t[f"unattributed_{level}_flops"]
    missing_bytes = t[f"unattributed_{level}_weight_bytes"]
    if missing_flops or missing_bytes:
        lines.append(f"unattributed at {level} level: {si(missing_flops)}FLOPs, {binary_bytes(missing_bytes)} weights")
    others = t["num_block_units"] - t["num_blocks"]
    count = (
        f"{t['num_leaves']} leaves"
        if leaves
        else f"{t['num_blocks']} block{'s' * (t['num_blocks'] != 1)} + {others} other unit{'s' * (others != 1)}"
    )
    lines.append(
        f"{count}. Columns: weights = bytes read per pass; act = boundary activations (+KV cache for blocks); "
        "F/B = FLOPs per byte moved; par = parallelism score (0-1)."
    )
    return "\n".join(lines)
