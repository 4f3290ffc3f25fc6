"""The three-line Python API: lazy on import, same budgets and reports as the CLI, greedy outputs unchanged."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def test_import_autosurgeon_stays_light() -> None:
    code = ("import sys, autosurgeon; assert callable(autosurgeon.__getattr__); "
            "print(sorted(m for m in ('torch', 'autosurgeon.api', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_api_names_resolve_and_unknown_ones_fail() -> None:
    import autosurgeon as asg

    assert asg.load is __import__("autosurgeon.api", fromlist=["load"]).load
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        asg.nope  # noqa: B018


def test_unmodified_apply_within_a_budget_matches_plain_greedy(tmp_path: Path) -> None:
    import autosurgeon as asg

    model = asg.load("tiny-llama")
    ids = asg.prompt(model, "def ")
    with torch.no_grad():
        expected = model.model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0,
                                         attention_mask=torch.ones_like(ids))
    with asg.apply(model, memory_budget="cpu=4MiB", watts=5.0,
                   offload_dir=str(tmp_path)) as session:
        out = session.generate(ids, max_new_tokens=6)
        stats = session.stats()
    assert torch.equal(out, expected)
    assert stats.peak_bytes["cpu"] <= 4 * 2**20 and stats.budgets["cpu"] == 4 * 2**20
    assert stats.extra["streamed_blocks"]  # the budget streams blocks from the disk tier
    assert stats.energy_j is not None and stats.energy_j > 0 and stats.energy_source in ("rapl", "estimate")


def test_prompt_ids_and_argument_errors() -> None:
    import autosurgeon as asg
    import autosurgeon.plan  # noqa: F401  (the Plan module, once imported, must not shadow an API name)
    from autosurgeon.errors import InvalidArgumentError

    model = asg.load("tiny-llama", device="meta")
    assert asg.prompt(model, ids="1,2,3").tolist() == [[1, 2, 3]]
    with pytest.raises(InvalidArgumentError, match="exactly one of `text` and `ids`"):
        asg.prompt(model)
    with pytest.raises(InvalidArgumentError, match="give `memory_budget`"):
        asg.make_plan(model)


@pytest.mark.slow
def test_plan_then_apply_in_three_lines() -> None:
    import autosurgeon as asg

    model = asg.load("tiny-llama")
    plan = asg.make_plan(model, memory_budget="50%", max_quality_loss=0.05)
    with asg.apply(model, plan, watts=5.0) as session:
        out = session.generate(asg.prompt(model, "def "), max_new_tokens=4)
    assert out.shape == (1, 8) and session.stats().tokens == 4
