"""Claims report: verdicts and gaps, rendering, the GPU part's three sources, and the GPU run itself (gpu)."""
from __future__ import annotations

import json
import math

import pytest

from experiments.benchmarks.claims import gpu_part
from experiments.benchmarks.claims_gpu import GPU_TITLES, gpu_records, missing_gpu_records
from experiments.benchmarks.claims_record import (
    ENERGY,
    MEMORY,
    QUALITY,
    SPEED,
    ClaimRecord,
    judge,
    not_measured,
    ratio_record,
    reduction_record,
)
from experiments.benchmarks.claims_report import render, verdicts


def test_judge_ratio_met_missed_and_above_range() -> None:
    assert judge(SPEED, 2.5)[0] == "met"
    status, gap = judge(SPEED, 1.5)
    assert status == "missed" and "0.50× short of 2×" in gap and "75%" in gap
    status, gap = judge(SPEED, 7.7)
    assert status == "met" and "above the stated range" in gap
    assert judge(MEMORY, 3.99)[0] == "missed"
    assert judge(MEMORY, 4.0)[0] == "met"


def test_judge_reduction_and_quality_bound() -> None:
    status, gap = judge(ENERGY, 0.20)
    assert status == "missed" and "10.0 points short of 30%" in gap
    assert judge(ENERGY, 0.35) == ("met", "5.0 points past the 30% minimum")
    status, gap = judge(QUALITY, 0.0157)
    assert status == "missed" and "0.57 points over the 1% bound" in gap
    assert judge(QUALITY, 0.0016)[0] == "met"
    assert judge(QUALITY, -0.001)[0] == "met"  # a plan may score better than the reference on held-out text


def test_judge_without_figure_is_not_measured() -> None:
    assert judge(SPEED, None)[0] == "not measured"
    assert judge(SPEED, math.nan)[0] == "not measured"


def test_records_compute_figures_from_measured_pairs() -> None:
    r = ratio_record("speed", "x", ours=13.5, base=1.8, unit="tok/s", method="m", device="d", source="s")
    assert r.figure == pytest.approx(7.5) and r.status == "met"
    m = ratio_record("memory", "x", ours=2_000_000, base=12_000_000, unit="B", higher_is_better=False, method="m",
                     device="d", source="s")
    assert m.figure == pytest.approx(6.0) and m.status == "met"
    e = reduction_record("x", ours=8.0, base=10.0, unit="J/token", method="m", device="d", source="s")
    assert e.figure == pytest.approx(0.2) and e.status == "missed"
    assert ClaimRecord.from_dict(json.loads(json.dumps(e.to_dict()))) == e
    with pytest.raises(ValueError, match="`claim` must be one of"):
        ClaimRecord(claim="latency", title="x", target=SPEED, figure=1.0, ours="", baseline="", method="",
                    device="", source="")


def _records() -> list[ClaimRecord]:
    common = dict(method="how it was measured", device="CPU X", source="measured in this run")
    return [
        ratio_record("speed", "placement vs accelerate", ours=3.0, base=1.0, unit="tok/s", **common),
        ratio_record("speed", "placement vs one tier", ours=1.2, base=1.0, unit="tok/s", **common),
        ratio_record("memory", "precision vs float32", ours=2.0, base=12.0, unit="B", higher_is_better=False,
                     **common),
        reduction_record("energy vs accelerate", ours=1.0, base=2.0, unit="J/token", **common),
        ClaimRecord(claim="quality", title="perplexity loss", target=QUALITY, figure=0.002, ours="ppl 5.01",
                    baseline="ppl 5.00", **common),
        not_measured("energy", "GPU energy", why="GPU figures not measured: no CUDA device here"),
    ]


def test_render_reports_met_and_missed_with_gap() -> None:
    text = render(_records(), {"command": "autosurgeon report", "generated_utc": "2026-11-26 02:00 UTC",
                               "wall_s": 12.0, "cpu_machine": "CPU X", "gpu_note": "not measured.", "quick": False})
    table = [line for line in text.splitlines() if line.startswith("| speed")]
    assert len(table) == 2
    assert "**met** (1.50× the 2× minimum)" in table[0]
    assert "**MISSED** (0.80× short of 2× (60% of the minimum))" in table[1]
    assert "| 6.00× |" in text and "| 50.0% lower |" in text and "| +0.200% |" in text
    assert "not measured (GPU figures not measured: no CUDA device here)" in text
    assert "missed: placement vs one tier — 1.20×" in text
    assert "### 1. speed: placement vs accelerate" in text and "how it was measured" in text


def test_verdicts_do_not_count_estimates_or_missing_rows() -> None:
    rows = [*_records(), ClaimRecord(claim="energy", title="cpu estimate", target=ENERGY, figure=0.6, ours="",
                                     baseline="", method="", device="", source="", status="estimate", gap="est.")]
    line = next(v for v in verdicts(rows) if v.startswith("- **Energy"))
    assert "met in 1 of 1 measured comparisons" in line
    assert "cpu estimate (estimate)" in line and "GPU energy (not measured)" in line


def test_missing_gpu_json_reports_not_measured(tmp_path) -> None:
    lines: list[str] = []
    records, note = gpu_part(quick=True, skip_gpu=True, gpu_json=tmp_path / "absent.json", progress=lines.append)
    assert [r.title for r in records] == [t for _, t in GPU_TITLES.values()]
    assert all(r.status == "not measured" and r.figure is None and r.measured == "—" for r in records)
    assert "GPU figures not measured" in note and "skipped" in note
    assert any("not measured" in line for line in lines)


def _saved_gpu_run() -> dict:
    """A hand-written GPU results file in run_gpu's layout (test data, not a measurement)."""
    def row(tps: float, jpt: float, **extra: object) -> dict:
        return {"tokens": [1, 2, 3], "tokens_per_s": tps, "median_token_s": 1 / tps, "n_timed": 10,
                "j_per_token": jpt, "watts_avg": jpt * tps, "energy_seconds": 5.0, "energy_source": "nvml",
                "cuda_max_allocated": 2**30, "label": "row", "tokens_match_reference": True, **extra}

    return {"card": "Test Card 80GB", "date_utc": "2026-11-26 02:00 UTC", "torch": "2.x", "host_cores": 16,
            "settings": {"hidden": 64, "layers": 2, "vocab": 100, "prompt_len": 4, "warmup": 1, "tokens": 4,
                         "min_seconds": 1.0},
            "cap_bytes": 2**30, "model_bytes": 7_000_000_000, "h2d_pinned_Bps": 5.5e10, "idle": {"watts": 100.0},
            "power_limit_w": 700.0, "errors": ["cpu_only: RuntimeError: boom"],
            "rows": {"latency": row(13.0, 20.0, resident_blocks=6, lookahead=3, streamed_bytes=4e9),
                     "one_tier": row(12.0, 22.0, resident_blocks=0),
                     "energy": row(40.0, 9.0, resident_blocks=12, model_bytes=1_900_000_000),
                     "accelerate": row(1.8, 150.0)},
            "quality": {"model": "tiny-llama", "model_folder": "tiny-llama-x", "windows": 16, "tokens": 4096,
                        "data": "test", "reference_perplexity": 5.6,
                        "plans": {"int4": {"perplexity": 5.61, "loss": 0.0018, "se": 0.0003, "kernel": "k"},
                                  "bfloat16": {"perplexity": 5.6, "loss": 0.0, "se": 0.0}}}}


def test_saved_gpu_json_is_read_with_card_and_date(tmp_path) -> None:
    path = tmp_path / "claims_gpu.json"
    path.write_text(json.dumps(_saved_gpu_run()))
    records, note = gpu_part(quick=True, skip_gpu=True, gpu_json=path, progress=lambda _: None)
    assert "Test Card 80GB" in note and "2026-11-26 02:00 UTC" in note and "NOT measured in this run" in note
    by_title = {r.title: r for r in records}
    acc = by_title[GPU_TITLES["speed_acc"][1]]
    assert acc.figure == pytest.approx(13.0 / 1.8) and acc.status == "met"
    assert "Test Card 80GB" in acc.source and "2026-11-26" in acc.source
    cpu = by_title[GPU_TITLES["speed_cpu"][1]]
    assert cpu.status == "not measured" and "boom" in cpu.gap  # a failed configuration is said, not filled in
    lat = by_title[GPU_TITLES["energy_lat"][1]]
    assert lat.figure == pytest.approx(1 - 9.0 / 20.0) and lat.status == "met"
    tier = by_title[GPU_TITLES["speed_tier"][1]]
    assert tier.status == "missed"
    assert by_title[GPU_TITLES["memory_int4"][1]].figure == pytest.approx(7.0 / 1.9)
    assert by_title[GPU_TITLES["quality_int4"][1]].status == "met"


def test_missing_gpu_records_cover_every_gpu_row() -> None:
    rows = missing_gpu_records("why")
    assert {r.claim for r in rows} == {"speed", "energy", "memory", "quality"}
    assert all(r.gap == "why" for r in rows)


@pytest.mark.gpu
def test_gpu_quick_run_measures_every_configuration() -> None:
    from experiments.benchmarks.claims_gpu import GPU_QUICK, run_gpu

    data = run_gpu(GPU_QUICK, progress=lambda _: None)
    assert data["errors"] == []
    assert set(data["rows"]) == {"reference", "latency", "one_tier", "energy", "cpu_only", "accelerate"}
    assert data["rows"]["latency"]["tokens_match_reference"] is True
    assert data["rows"]["latency"]["energy_source"] == "nvml"
    for name in ("latency", "one_tier", "energy"):  # ours stay under the cap (accelerate is not bound by it)
        assert data["rows"][name]["cuda_max_allocated"] <= data["cap_bytes"], name
    records = gpu_records(data, where="test")
    assert all(r.status in ("met", "missed") for r in records), [(r.title, r.status, r.gap) for r in records]


def test_other_saved_gpu_runs_are_listed(tmp_path) -> None:
    from experiments.benchmarks.claims import other_gpu_runs

    main = tmp_path / "claims_gpu.json"
    main.write_text(json.dumps(_saved_gpu_run()))
    earlier = dict(_saved_gpu_run(), date_utc="2026-11-25 23:00 UTC")
    (tmp_path / "claims_gpu_run1.json").write_text(json.dumps(earlier))
    (tmp_path / "claims_gpu_quick.json").write_text(json.dumps(earlier))  # quick runs are not claims
    lines = other_gpu_runs(main)
    assert len(lines) == 1 and "2026-11-25 23:00 UTC" in lines[0] and "Test Card 80GB" in lines[0]
    assert f"{13.0 / 1.8:.2f}×" in lines[0]
