"""experiments/benchmarks/multi_gpu.py: refuses in one line without two GPUs; its --cpu path runs every row."""
from __future__ import annotations

import json

from experiments.benchmarks.multi_gpu import main


def test_refuses_in_one_line_with_fewer_than_two_gpus(tmp_path, capsys) -> None:
    assert main(["--out", str(tmp_path)], gpus=1) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "needs 2 CUDA GPUs, 1 visible" in err
    assert not (tmp_path / "multi_gpu.json").exists()


def test_cpu_path_runs_two_logical_devices_with_the_reference_tokens(tmp_path) -> None:
    assert main(["--cpu", "--out", str(tmp_path), "--layers", "4", "--new-tokens", "3", "--rounds", "2",
                 "--cap", "400KiB"]) == 0
    res = json.loads((tmp_path / "multi_gpu.json").read_text())
    assert len(res["reference"]["tokens"]) == 4
    rows = res["rows"]
    assert [r["round"] for r in rows] == [0, 0, 0, 1, 1, 1]
    assert [r["name"] for r in rows[:3]] == ["ours, 2 devices at the cap each, interleaved",
                                            "ours, 1 device at the cap",
                                            "ours, 2 devices at the cap each, contiguous halves"]
    assert [r["name"] for r in rows[3:]] == [r["name"] for r in rows[1:3] + rows[:1]]  # round 1 rotated
    assert all(r["tokens_match_reference"] for r in rows)
    two = rows[0]["devices"]
    assert set(two) == {"host:0", "host:1"} and two["host:0"]["blocks"] == [0, 2] and two["host:1"]["blocks"] == [1, 3]
    assert rows[2]["devices"]["host:0"]["blocks"] == [0, 1] and rows[2]["layout"] == "contiguous"
    assert all(d["peak_bytes"] <= d["budget"] for r in rows for d in r["devices"].values())
    assert rows[1]["streamed_bytes_per_token"] > rows[0]["streamed_bytes_per_token"] > 0  # two caps hold more
    assert len(res["rounds"]) == 2 and set(res["ratios_median"]) == {"2 vs 1 device", "interleaved vs contiguous"}
    assert [r["name"] for r in res["int4_rows"]] == ["ours int4 (g128), 1 device(s) at the cap",
                                                     "ours int4 (g128), 2 device(s) at the cap"]
    md = (tmp_path / "multi_gpu.md").read_text()
    assert "| ours, 2 devices at the cap each, interleaved | 0 |" in md and "Per-round ratios" in md
