"""The claims report's CPU part end to end on tiny shapes (``--quick``): the code path the committed report runs."""
from __future__ import annotations

import json

import pytest

from experiments.benchmarks.claims import build_report


@pytest.mark.slow  # ~40 s on a 2-core machine: a decode under four configurations, then a tiny zoo LM's plan
def test_quick_cpu_report_measures_speed_memory_and_energy_rows(tmp_path) -> None:
    out = tmp_path / "REPORT.md"
    path, records = build_report(quick=True, out=out, skip_gpu=True, gpu_json=tmp_path / "absent.json",
                                 progress=lambda _: None)
    assert path == out and out.read_text().startswith("#")
    cpu = [r for r in records if r.source.startswith("measured in this run")]  # no GPU here: CPU rows only
    assert {r.claim for r in cpu} >= {"speed", "memory", "energy", "quality"}
    speed = [r for r in cpu if r.claim == "speed"]
    assert len(speed) == 2 and all(r.figure is not None and r.figure > 0 for r in speed)
    raw = json.loads(out.with_suffix(".json").read_text())
    rows = raw["speed"]["rows"]
    assert set(rows) == {"eager", "ours", "one_tier", "accelerate"}
    assert all(r["tokens_match_reference"] for r in rows.values())  # every configuration decodes the same tokens
    assert rows["ours"]["store_peak_cpu"] <= raw["speed"]["cap_bytes"]
