"""Pareto sweeps over the SearchSpace: pymoo NSGA-II, random search, Optuna samplers, baselines, hypervolume.

``run_sweep(SweepConfig, out)`` runs one sweep into ``runs/NAME/`` (records persisted as they arrive,
``resume=True`` continues); ``load_config`` reads ``experiments/configs/*.json|toml``; ``front`` picks a
plan from a run's front by memory budget or objective preference.
"""
from __future__ import annotations

from experiments.sweep.config import SweepConfig, load_config
from experiments.sweep.runner import SweepResult, build_evaluator, load_run, run_sweep

__all__ = ["SweepConfig", "SweepResult", "build_evaluator", "load_config", "load_run", "run_sweep"]
