"""The token-by-token interleaved CPU streaming comparison on a tiny model: every row steps, tokens compare."""
from __future__ import annotations

import pytest

from experiments.benchmarks.streaming_cpu_pairs import run, to_markdown


def test_pairs_step_every_row_and_match_tokens() -> None:
    rows = ["eager", "eager-thp", "ours", "ours-rebind", "ours-prev", "int8-ram", "ours-int8"]
    res = run(rows=rows, steps=3, warmup=1, threads=1, ram_fraction=0.7, hidden=64, intermediate=128, layers=3,
              heads=4, vocab=256)
    assert list(res["rows"]) == rows
    assert all(res["rows"][n]["tokens_match_ram"] for n in rows[:5])  # fp32 rows: the in-RAM model's tokens
    assert res["rows"]["eager"]["vs_ram_median"] == 1.0
    assert res["rows"]["ours-int8"]["tokens_match_int8_ram"]  # streamed int8 decodes as int8 in RAM does
    assert all(r["step_ms"] > 0 and r["cpu_ms"] >= 0 for r in res["rows"].values())
    assert "ours" in to_markdown(res)


def test_pairs_refuse_rows_they_cannot_interleave() -> None:
    with pytest.raises(SystemExit, match="ours-cold"):
        run(rows=["eager", "ours-cold"], steps=1, warmup=0, threads=1)
    with pytest.raises(SystemExit, match="accelerate"):
        run(rows=["eager", "accelerate"], steps=1, warmup=0, threads=1)
