"""Policy transfer: a policy trained without the unseen set, applied with ``--front 8`` to each unseen model.

Per paper device (analytic evaluator, deterministic):

1. Train a maskable PPO policy (``agents.ppo.train``, knobs precision + placement, seed 0) on the zoo's models and
   a shape model only (``--train-models``) for ``--minutes`` of wall time.
2. For each unseen model (``experiments.benchmarks.unseen``; never seen in training): ``apply_policy(front=8)``
   (8 evenly spread preferences, as ``autosurgeon apply --front 8``), the uniform baselines beside it.
3. The same model and device swept by NSGA-II with 200 evaluations (``--seeds``; baselines included, as every
   sweep) and quality ``none`` (no sensitivity table for these models here).

Every plan is priced in the sweep's space and normaliser (the policy's plans are encoded into it and repaired:
int4 layers get a valid group size), so the hypervolumes are comparable: objectives latency, memory, energy
divided by the unmodified model's, reference point [3.0, 1.1, 3.5]. Reported per model: the policy front's HV,
with and without the baselines, over NSGA-II's (goal >= 0.9) and over the best baseline family's (goal >= 1.0);
distinct plans over the 8 preferences and NSGA-II's front size; and a preference check: how many of the
policy's decisions change between the 8 preferences (0 would mean it ignores its preference input).

Run: ``python -m experiments.benchmarks.policy_transfer --out experiments/benchmarks/results/policy_transfer``
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

TRAIN = ("tiny-llama", "tiny-moe", "digits-cnn", "llama-7b-16l-shape")
UNSEEN = ("unseen-gpt2", "unseen-opt", "unseen-qwen2", "unseen-neox", "unseen-phi", "unseen-gemma")
DEVICES = ("h100-80gb", "jetson-orin-nano-8gb")


def train_policy(device: str, models: list[str], minutes: float, out: Path, seed: int) -> dict[str, Any]:
    from agents.ppo import train

    t0 = time.perf_counter()
    res = train(device=device, models=models, timesteps=10**8, out=out, evaluator="analytic", seed=seed,
                max_seconds=minutes * 60, overwrite=True, hv_every=10**9)
    return {"device": device, "models": models, "timesteps": res.timesteps, "seconds": round(time.perf_counter() - t0, 1),
            "seed": seed}


def policy_points(policy: Path, model: str, device: str, sweep_ev: Any) -> dict[str, Any]:
    """The policy's 8-preference front priced in the sweep's space (module docstring)."""
    from agents.apply import apply_policy
    from experiments.sweep.baselines import uniform_vectors

    res = apply_policy(policy, model, device=device, front=8, evaluator="analytic", baselines=uniform_vectors)
    space = sweep_ev.space
    vectors = [space.repair(space.encode(res.space.decode(x))) for x in res.front.vectors]
    objectives = [list(sweep_ev.evaluate(y).objectives(("latency", "memory", "energy"))) for y in vectors]
    changed = int(np.sum(np.any(np.stack(res.front.vectors) != res.front.vectors[0], axis=0)))
    return {"vectors": vectors, "objectives": objectives,
            "distinct": len({y.tobytes() for y in vectors}),
            "distinct_policy_vectors": len({tuple(v.tolist()) for v in res.front.vectors}),
            "decisions_changed_across_preferences": changed, "decisions": len(res.front.vectors[0]),
            "apply_hv_own_reference": res.front.hypervolume}


def one(model_dir: str, label: str, device: str, policy: Path, seeds: list[int], root: Path) -> dict[str, Any]:
    from experiments.sweep import SweepConfig, build_evaluator, run_sweep
    from experiments.sweep.hypervolume import hypervolume

    cfg = SweepConfig(model=model_dir, device=device, evaluator="analytic", budget_evals=200, quality="none",
                      algo="nsga2", name=f"{label}-{device}")
    ev = build_evaluator(cfg)
    sweeps = []
    for seed in seeds:
        run = run_sweep(cfg.replace(seed=seed, name=f"{label}-{device}-{seed}"), root / f"{label}-{device}-{seed}",
                        evaluator=ev, outputs=False, tensorboard=False, overwrite=True)
        sweeps.append(run.summary)
    s0 = sweeps[0]
    scales = list(s0["normaliser"]["scales"].values())
    ref = s0["reference_point"]
    best_family, best_hv = max(((k, v["hypervolume"]) for k, v in s0["baselines"].items()), key=lambda kv: kv[1])
    base_points = [m["objectives"] for m in _baseline_records(root / f"{label}-{device}-{seeds[0]}")]
    t0 = time.perf_counter()
    pol = policy_points(policy, model_dir, device, ev)
    apply_s = time.perf_counter() - t0
    hv_policy = hypervolume(pol["objectives"], ref, scales=scales)
    hv_with = hypervolume(pol["objectives"] + base_points, ref, scales=scales)
    hv_nsga = [s["hypervolume"] for s in sweeps]
    return {"model": label, "device": device, "hv_policy": hv_policy, "hv_policy_with_baselines": hv_with,
            "hv_nsga2": hv_nsga, "hv_nsga2_mean": float(np.mean(hv_nsga)), "nsga2_front_size": [s["front_size"] for s in sweeps],
            "best_family": best_family, "hv_best_family": best_hv, "hv_baselines_all": s0["hypervolume_baselines"],
            "apply_s": round(apply_s, 1), **{k: v for k, v in pol.items() if k not in ("vectors", "objectives")},
            "policy_objectives": pol["objectives"], "scales": scales}


def _baseline_records(run_dir: Path) -> list[dict[str, Any]]:
    out = []
    with open(run_dir / "evals.jsonl") as fh:
        for line in fh:
            r = json.loads(line)
            if r["algo"].startswith("baseline:") and r.get("feasible", True):
                out.append(r)
    return out


def render(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    out = ["# Policy transfer to the unseen set (analytic evaluator, paper devices)", "",
           f"Generated by `{meta['command']}`; {meta['machine']}; load average {meta['load_before']} before, "
           f"{meta['load_after']} after (the analytic evaluator is deterministic; load changes wall time only).", "",
           "Training (per device, analytic evaluator, knobs precision + placement, MaskablePPO defaults): "
           + "; ".join(f"{t['device']}: {t['timesteps']} timesteps in {t['seconds']:.0f} s on {', '.join(t['models'])}, "
                       f"seed {t['seed']}" for t in meta["training"]) + ".", "",
           "HV in the sweep's normalised space (latency, memory, energy / the unmodified model's; reference "
           "[3.0, 1.1, 3.5]); NSGA-II: 200 evaluations with the baselines, mean over seeds "
           f"{meta['seeds']}; policy: its 8 plans (`--front 8`), alone and with the baselines' plans.", "",
           "| model | device | HV policy | HV policy+baselines | HV NSGA-II (mean) | policy / NSGA-II | "
           "policy / best baseline | best family (HV) | distinct plans / 8 | NSGA-II front sizes | "
           "decisions changed across preferences |", "|---" * 11 + "|"]
    for r in rows:
        out.append(f"| {r['model']} | {r['device']} | {r['hv_policy']:.4f} | {r['hv_policy_with_baselines']:.4f} | "
                   f"{r['hv_nsga2_mean']:.4f} | {r['hv_policy'] / r['hv_nsga2_mean']:.3f} | "
                   f"{r['hv_policy'] / r['hv_best_family']:.3f} | {r['best_family']} ({r['hv_best_family']:.4f}) | "
                   f"{r['distinct']} | {r['nsga2_front_size']} | {r['decisions_changed_across_preferences']} of "
                   f"{r['decisions']} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    from experiments.benchmarks.unseen import build_unseen

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", default=",".join(DEVICES))
    ap.add_argument("--train-models", default=",".join(TRAIN))
    ap.add_argument("--unseen", default=",".join(UNSEEN))
    ap.add_argument("--minutes", type=float, default=3.0, help="training wall time per device")
    ap.add_argument("--seeds", default="0,1,2", help="NSGA-II seeds")
    ap.add_argument("--root", default="runs/bench-policy-transfer")
    ap.add_argument("--out", default="experiments/benchmarks/results/policy_transfer")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(args.root)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    meta: dict[str, Any] = {
        "command": "python -m experiments.benchmarks.policy_transfer " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs, torch 1 thread",
        "load_before": [round(v, 1) for v in os.getloadavg()], "seeds": seeds, "training": []}
    rows: list[dict[str, Any]] = []
    out = Path(args.out)
    for device in args.devices.split(","):
        policy = root / f"policy-{device}"
        meta["training"].append(train_policy(device, args.train_models.split(","), args.minutes, policy, seed=0))
        for name in args.unseen.split(","):
            try:
                rows.append(one(str(build_unseen(name)), name, device, policy, seeds, root))
            except Exception as exc:  # one model's failure is a row, not the end of the benchmark
                rows.append({"model": name, "device": device, "error": f"{type(exc).__name__}: {exc}"})
            meta["load_after"] = [round(v, 1) for v in os.getloadavg()]
            out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
            good = [r for r in rows if "error" not in r]
            out.with_suffix(".md").write_text(render(good, meta) + "".join(
                f"\n- {r['model']} on {r['device']}: {r['error']}" for r in rows if "error" in r) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
