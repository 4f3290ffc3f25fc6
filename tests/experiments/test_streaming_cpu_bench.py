"""The CPU streaming benchmark's machinery on a tiny model: rows run, tokens compare, cold rows evict files."""
from __future__ import annotations

import os

import pytest

from experiments.benchmarks.streaming_cpu import (
    CpuBenchSettings,
    disk_read_bandwidth,
    drop_file_cache,
    folder_resident_fraction,
    run,
    to_markdown,
)


def test_drop_file_cache_counts_the_files(tmp_path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 5000)
    os.makedirs(tmp_path / "sub")
    (tmp_path / "sub" / "b").write_bytes(b"y" * 3000)
    assert drop_file_cache(str(tmp_path)) == 8000


def test_folder_resident_fraction_follows_the_drop(tmp_path) -> None:
    (tmp_path / "a").write_bytes(os.urandom(64 * 1024))
    assert folder_resident_fraction(str(tmp_path)) > 0.99  # just written: cached
    fd = os.open(tmp_path / "a", os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    drop_file_cache(str(tmp_path))
    if folder_resident_fraction(str(tmp_path)) > 0.01:
        pytest.skip("this file system keeps pages after POSIX_FADV_DONTNEED")
    (tmp_path / "a").read_bytes()
    assert folder_resident_fraction(str(tmp_path)) > 0.99


def test_disk_read_bandwidth_reads_the_probe_three_ways(tmp_path) -> None:
    bw = disk_read_bandwidth(str(tmp_path), 4 * 2**20)
    assert set(bw) == {"preadv", "o_direct", "populate"}
    assert all(v > 0 or v != v for v in bw.values())  # a figure, or NaN where the drop did not evict
    assert not os.listdir(tmp_path)  # the probe is removed


@pytest.mark.slow
def test_tiny_run_interleaves_rows_and_checks_tokens() -> None:
    s = CpuBenchSettings(hidden=64, intermediate=128, layers=3, heads=4, vocab=256, ram_fraction=0.7, warmup=1,
                         tokens=2, accelerate_tokens=1, rounds=2, threads=1, disk_probe_mib=8,
                         rows=("eager", "ours", "ours-int8-disk", "ours-cold", "eager-thp"), profile=())
    res = run(s, progress=lambda msg: None)
    rows = res["rows"]
    assert set(rows) == {"eager", "ours", "ours-int8-disk", "ours-cold", "eager-thp"}
    assert [r["order"] for r in res["rounds"]] == [["eager", "ours", "ours-int8-disk", "ours-cold", "eager-thp"],
                                                   ["ours", "ours-int8-disk", "ours-cold", "eager-thp", "eager"]]
    assert rows["eager-thp"]["tokens_match_ram_fp32"]  # the same weights, copied onto huge pages
    assert len(rows["ours"]["vs_ram_thp"]["per_round"]) == 2
    assert rows["ours"]["tokens_match_ram_fp32"] and rows["ours-cold"]["tokens_match_ram_fp32"]
    assert len(rows["ours"]["vs_ram"]["per_round"]) == 2
    assert rows["ours-cold"]["cold_bound_tok_s"] > 0
    assert rows["ours-cold"]["resident_after_drop"] < 0.02  # the drop was real: nothing of its files stayed cached
    assert set(res["disk_read"]) == {"start", "end"}
    assert rows["ours-int8-disk"]["streamed_bytes"] < rows["ours"]["streamed_bytes"]
    assert "ours" in to_markdown(res)
