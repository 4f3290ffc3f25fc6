"""The CPU streaming benchmark's machinery on a tiny model: rows run, tokens compare, cold rows evict files."""
from __future__ import annotations

import os

import pytest

from experiments.benchmarks.streaming_cpu import CpuBenchSettings, drop_file_cache, run, to_markdown


def test_drop_file_cache_counts_the_files(tmp_path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 5000)
    os.makedirs(tmp_path / "sub")
    (tmp_path / "sub" / "b").write_bytes(b"y" * 3000)
    assert drop_file_cache(str(tmp_path)) == 8000


@pytest.mark.slow
def test_tiny_run_interleaves_rows_and_checks_tokens() -> None:
    s = CpuBenchSettings(hidden=64, intermediate=128, layers=3, heads=4, vocab=256, ram_fraction=0.7, warmup=1,
                         tokens=2, accelerate_tokens=1, rounds=2, threads=1,
                         rows=("eager", "ours", "ours-int8-disk", "ours-cold"), profile=())
    res = run(s, progress=lambda msg: None)
    rows = res["rows"]
    assert set(rows) == {"eager", "ours", "ours-int8-disk", "ours-cold"}
    assert [r["order"] for r in res["rounds"]] == [["eager", "ours", "ours-int8-disk", "ours-cold"],
                                                   ["ours", "ours-int8-disk", "ours-cold", "eager"]]
    assert rows["ours"]["tokens_match_ram_fp32"] and rows["ours-cold"]["tokens_match_ram_fp32"]
    assert len(rows["ours"]["vs_ram"]["per_round"]) == 2
    assert rows["ours-cold"]["cold_bound_tok_s"] > 0
    assert rows["ours-int8-disk"]["streamed_bytes"] < rows["ours"]["streamed_bytes"]
    assert "ours" in to_markdown(res)
