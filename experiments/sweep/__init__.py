"""Pareto sweeps over the SearchSpace: pymoo NSGA-II, random search, Optuna samplers, baselines, hypervolume.

``run_sweep(SweepConfig, out)`` runs one sweep into ``runs/NAME/`` (records persisted as they arrive,
``resume=True`` continues); ``load_config`` reads ``experiments/configs/*.json|toml``; ``front`` picks a
plan from a run's front by memory budget or objective preference; ``registry`` lists the search
algorithms (one file each under ``algos/``). The names below load on first use (PEP 562), so importing
``experiments.sweep.registry`` (the CLI's ``--algo`` choices) stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"SweepConfig": "config", "load_config": "config", "SweepResult": "runner", "build_evaluator": "runner",
         "load_run": "runner", "run_sweep": "runner"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SweepConfig", "SweepResult", "build_evaluator", "load_config", "load_run", "run_sweep"]
