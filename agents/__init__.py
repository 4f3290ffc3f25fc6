"""Agents that propose plans: PPO per device, the Markov placement model, Optuna tuning (DESIGN.md, layer 4)."""
