"""The demo's race table: every same-budget alternative next to the chosen plan, and its standing against each."""
from __future__ import annotations

from typing import Any

NOISY = 0.15  # MEASURING.md: a spread above this is labelled noisy, not hidden


def _bytes(n: float | None) -> str:
    from autosurgeon.analysis.tables import binary_bytes

    return "-" if n is None else binary_bytes(n)


def race_table(result: Any) -> str:
    """Rows: unmodified, accelerate, uniform int8/int4, knapsack, the search's pick; figures from one harness."""
    comparison = result.comparison
    chosen = result.chosen.label if result.chosen is not None else None
    tiers = [t for t in ("gpu", "cpu", "disk") if any(r.tier_bytes.get(t, 0) for r in comparison.rows)]
    header = ("", "tok/s", "spread", *[t.upper() for t in tiers], "mJ/token", "quality loss", "fits")
    rows = []
    for r in comparison.rows:
        name = r.label + (" (chosen)" if r.label == chosen else "")
        quality = "-" if r.quality_loss is None else f"{r.quality_loss:+.2%}"
        energy = "-" if r.energy_j_per_token is None else f"{r.energy_j_per_token * 1e3:.2f}"
        rows.append((name, f"{r.tokens_per_s:.1f}", f"{r.spread:.0%}" + (" noisy" if r.spread > NOISY else ""), *[_bytes(r.tier_bytes.get(t, 0)) for t in tiers],
                     energy, quality, "yes" if r.fits else "NO"))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row))
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    energy_labels = sorted({r.energy_label for r in comparison.rows})
    methods = sorted({r.quality_method for r in comparison.rows if r.quality_method})
    tokens = len(comparison.rows[0].tokens) if comparison.rows else 0
    lines.append("")
    lines.append(f"measured in one process, interleaved: {comparison.rounds} rounds of {tokens} greedy tokens per "
                 "contender after a warm-up, median (spread = (max-min)/median of the rounds); load average "
                 f"{comparison.load_before:.1f} -> {comparison.load_after:.1f}")
    if any(r.spread > NOISY for r in comparison.rows):
        lines.append("noisy: a spread above 15 % means the machine was busy; trust the per-round ratios below "
                     "(both sides of a ratio ran in the same round)")
    memory = sorted({f"{'accelerate' if r.kind == 'accelerate' else 'plans'}: {r.memory_method}"
                     for r in comparison.rows})
    lines.append("memory: " + "; ".join(memory))
    lines.append("energy: " + "; ".join(energy_labels))
    lines.append("quality: " + ("; ".join(methods) if methods else "not measured"))
    for r in comparison.rows:
        if r.why_not:
            lines.append(f"does not fit: {r.label}: " + "; ".join(r.why_not))
    return "\n".join(lines)


def standings_text(result: Any) -> str:
    """The chosen plan against each other row, one line each."""
    if result.chosen is None:
        return "no plan fits the budget at the quality bound when measured; nothing to stand against the others"
    return "\n".join(f"  {line}" for line in result.standings)


__all__ = ["race_table", "standings_text"]
