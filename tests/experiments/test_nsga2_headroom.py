"""The headroom benchmark's CPU path: both searches per seed, the long run, and its front with ties counted once."""
from __future__ import annotations

from experiments.benchmarks.nsga2_headroom import one, render


def test_headroom_row_and_render(tmp_path) -> None:
    row = one("tiny-moe-test", "h100-80gb", "none", 20, 30, [0], tmp_path)
    assert len(row["hv_random"]) == len(row["hv_nsga2"]) == 1 and row["hv_long"] > 0
    assert row["long_over_random"][0] == row["hv_long"] / row["hv_random"][0]
    assert row["nsga2_over_random"][0] == row["hv_nsga2"][0] / row["hv_random"][0]
    assert row["long_front"] and len({tuple(m["normalised"]) for m in row["long_front"]}) == len(row["long_front"])
    text = render([row], {"command": "x", "machine": "m", "load_before": [0], "load_after": [0]})
    assert "| tiny-moe-test | h100-80gb | none |" in text and "Long runs' fronts" in text
