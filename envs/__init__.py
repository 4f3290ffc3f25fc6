"""Model surgery as Gymnasium environments (DESIGN.md, layer 3).

Importing ``envs`` registers:

* ``AutoSurgeon/Surgery-v0`` — :class:`envs.surgery.SurgeryEnv` with its defaults (tiny-llama-test on the
  meta device, the local profile, the analytic evaluator). Registered ``nondeterministic=True`` because
  with a measuring evaluator (profiled, runtime) rewards are measured; no ``max_episode_steps``: an
  episode ends after the model's last decision unit.

Importing does not build anything (string entry point): the model and profile load on ``make``.
"""
from __future__ import annotations

import gymnasium

ENV_IDS: tuple[str, ...] = ("AutoSurgeon/Surgery-v0",)

if "AutoSurgeon/Surgery-v0" not in gymnasium.registry:
    gymnasium.register(id="AutoSurgeon/Surgery-v0", entry_point="envs.surgery:SurgeryEnv", nondeterministic=True)

__all__ = ["ENV_IDS"]
