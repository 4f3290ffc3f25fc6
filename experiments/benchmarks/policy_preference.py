"""Does a trained policy listen to its preference input? Plans per preference and the action-probability spread.

For a saved policy (``autosurgeon train --out``), a model and a paper device (analytic evaluator, deterministic):

* the policy's plan for each of ``--front`` evenly spread preferences at the full budget (as ``apply --front K``):
  its normalised objectives (latency, memory, energy / the unmodified model's) and how many distinct plans;
* along the trajectory of the centre preference, at every step, the masked action distributions the policy gives
  when only the preference features of the same observation change: the largest change of any action's
  probability (0: the preference input is ignored) and the entropy of the distribution (summed over knobs; near 0:
  collapsed).

Run: ``python -m experiments.benchmarks.policy_preference --policy DIR --device h100-80gb --models a,b --out FILE``
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from agents.apply import simplex_preferences
from agents.policy_io import load_policy
from envs.observation import OBJECTIVES
from envs.surgery import SurgeryEnv


def probe(network: Any, env: SurgeryEnv, k: int = 8) -> dict[str, Any]:
    """Plans per preference and the preference spread of the action distributions (module docstring)."""
    prefs = simplex_preferences(k)
    plans = []
    for w in prefs:
        obs, _ = env.reset(seed=0, options={"model": 0, "preference": w, "budget_fraction": 1.0})
        done, info = False, {}
        while not done:
            action, _ = network.predict(obs, action_masks=env.action_masks(), deterministic=True)
            obs, _, done, _, info = env.step(action)
        plans.append({"preference": w.round(3).tolist(), "ratios": np.round(info["ratios"], 4).tolist(),
                      "vector": env.x.tolist()})
    centre = prefs[int(np.argmin(np.linalg.norm(prefs - 1.0 / len(OBJECTIVES), axis=1)))]
    obs, _ = env.reset(seed=0, options={"model": 0, "preference": centre, "budget_fraction": 1.0})
    pref_slice = slice(len(obs) - len(OBJECTIVES), len(obs))
    spreads, entropies, done = [], [], False
    while not done:
        masks = env.action_masks()
        dists = []
        for w in prefs:
            o = obs.copy()
            o[pref_slice] = w
            dist = network.get_distribution(network.obs_to_tensor(o[None])[0], action_masks=masks[None])
            dists.append(np.concatenate([d.probs.detach().numpy()[0] for d in dist.distributions]))
        dists = np.array(dists)
        spreads.append(float(np.max(np.abs(dists - dists.mean(axis=0)))))
        p = dists[int(np.argmin(np.linalg.norm(prefs - centre, axis=1)))]
        entropies.append(float(-(p[p > 0] * np.log(p[p > 0])).sum()))
        action, _ = network.predict(obs, action_masks=masks, deterministic=True)
        obs, _, done, _, _ = env.step(action)
    return {"distinct_plans": len({tuple(p["vector"]) for p in plans}), "plans": plans,
            "prob_spread_median": float(np.median(spreads)), "prob_spread_max": float(np.max(spreads)),
            "entropy_median": float(np.median(entropies)), "entropy_min": float(np.min(entropies)),
            "steps": len(spreads)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policy", required=True)
    ap.add_argument("--device", required=True)
    ap.add_argument("--models", required=True, help="comma-separated model specs")
    ap.add_argument("--front", type=int, default=8)
    ap.add_argument("--out", required=True, help="JSON file")
    args = ap.parse_args(argv)
    network, meta = load_policy(args.policy)
    rows = []
    for spec in args.models.split(","):
        env = SurgeryEnv(models=[spec], device=args.device, knobs=tuple(meta["knobs"]))
        row = {"model": Path(spec).name, "device": args.device, **probe(network, env, args.front)}
        rows.append(row)
        print(f"{row['model']} on {args.device}: {row['distinct_plans']} distinct plans / {args.front}; probability "
              f"spread median {row['prob_spread_median']:.4f} max {row['prob_spread_max']:.4f}; entropy median "
              f"{row['entropy_median']:.3f} min {row['entropy_min']:.3f}")
    Path(args.out).write_text(json.dumps({
        "command": "python -m experiments.benchmarks.policy_preference " + " ".join(sys.argv[1:] if argv is None else argv),
        "policy": {"timesteps": meta.get("timesteps"), "reward": meta.get("reward"), "models": meta.get("models")},
        "load_average": [round(v, 1) for v in os.getloadavg()], "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
