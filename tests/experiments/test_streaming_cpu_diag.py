"""The streamed-decode diagnostic on a tiny model: every variant steps, tokens compare, the counters are filled."""
from __future__ import annotations

from experiments.benchmarks.streaming_cpu_diag import VARIANTS, run, to_markdown


def test_diag_steps_every_variant_with_the_in_ram_tokens() -> None:
    res = run(steps=3, warmup=1, threads=1, ram_fraction=0.5, hidden=64, intermediate=128, layers=3, heads=4,
              vocab=256)
    assert list(res["rows"]) == list(VARIANTS)
    assert all(r["tokens_match_first"] for r in res["rows"].values())
    assert res["rows"]["eager"]["vs_first_median"] == 1.0
    for r in res["rows"].values():
        assert r["wall"] > 0 and r["inner"] > 0 and r["outer"] >= r["inner"] * 0.99
    assert "ours-rebind" in to_markdown(res)
