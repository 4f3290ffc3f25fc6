"""Where the sweep's algorithms and baselines used to live: re-exported from their own modules.

Search algorithms are registered in ``experiments.sweep.registry`` (one file each under ``algos/``);
baselines are in ``experiments.sweep.baselines``.
"""
from __future__ import annotations

from experiments.sweep.baselines import baseline_vectors, greedy_fill_vectors, knapsack_vectors, uniform_vectors

__all__ = ["baseline_vectors", "greedy_fill_vectors", "knapsack_vectors", "uniform_vectors"]
