"""The sweeps-vs-baselines benchmark's table: the evaluator in the title, measured figures labelled as such."""
from __future__ import annotations

from experiments.benchmarks.sweeps_vs_baselines import render


def _row(algo: str, hv: float) -> dict:
    return {"model": "m", "device": "local", "seed": 0, "quality": "none", "algo": algo, "hv_front": hv,
            "hv_baselines_all": 4.0, "best_family": "least-memory", "hv_best_family": 3.9, "hv_search_only": hv - 0.1,
            "front_size": 5, "search_on_front": 3}


def test_render_names_the_evaluator_and_flags_measured_figures_under_load() -> None:
    meta = {"command": "c", "machine": "m", "load_before": [5.0], "load_after": [6.0], "budget": 200}
    analytic = render([_row("nsga2", 4.4), _row("random", 4.0)], meta)
    assert "(analytic evaluator, paper devices)" in analytic and "load changes wall time only" in analytic
    assert "| 1.1000 |" in analytic and "least memory" in analytic
    profiled = render([_row("nsga2", 4.2), _row("random", 4.0)], {**meta, "evaluator": "profiled"})
    assert "(profiled evaluator, this machine's measured profile)" in profiled and "not final" in profiled
    assert "| 1.0500 |" in profiled and "| no |" in profiled
