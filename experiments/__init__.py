"""Pareto sweeps, baselines, configs, benchmarks and TensorBoard reporting (DESIGN.md, layer 5)."""
