"""``autosurgeon demo --scenario streaming``: print the GPU scenario (``experiments.demo_streaming``) and save it."""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any


def run_streaming(args: argparse.Namespace, progress: Any) -> int:
    from autosurgeon.analysis.tables import binary_bytes
    from autosurgeon.cli.demo_table import race_table, standings_text
    from experiments.demo_streaming import (
        BUDGET,
        MODEL,
        StreamingSettings,
        run_streaming_demo,
    )

    settings = StreamingSettings(model=args.model or MODEL, budget=args.memory_budget or BUDGET,
                                 max_quality_loss=args.max_quality_loss, tokens=args.tokens,
                                 quality_samples=args.quality_samples, seed=args.seed)
    result = run_streaming_demo(settings, progress=progress)
    print(f"device: {result.profile.name} ({', '.join(u.name for u in result.profile.units)})")
    tier = result.tiers[0].upper()
    print(f"model: {result.model} ({binary_bytes(result.model_bytes)}) under {settings.budget} "
          f"({binary_bytes(result.budget_bytes)} on the {tier}): it does not fit; quality loss <= "
          f"{settings.max_quality_loss:.1%}\n")
    print("what this budget buys, against what you would do otherwise (same budget, same run):\n")
    print(race_table(result))
    print("\nthe chosen plan" + (f" ({result.chosen.label})" if result.chosen is not None else "") + ":")
    print(standings_text(result))
    for note in result.notes:
        print(f"note: {note}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".result.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    os.replace(tmp, out / "result.json")
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    print(f"\nfiles:\n  result      {out / 'result.json'}")
    print(f"time: {time.perf_counter() - progress.started:.0f} s ({timing})")
    return 0 if result.chosen is not None else 1
