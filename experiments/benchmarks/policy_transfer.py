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
UNSEEN = ("unseen-gpt2", "unseen-opt", "unseen-qwen2", "unseen-neox", "unseen-phi", "unseen-gemma", "unseen-bert",
          "unseen-vit")
DEVICES = ("h100-80gb", "jetson-orin-nano-8gb")


# --reward: how the policy is trained (agents.ppo.train's reward options); "v0" = the defaults
REWARDS = {"v0": {},
           "weighted-sum": {"reward_shaping": True, "preference_alphas": (1.0, 0.3),
                            "reward": {"scale": "reachable", "scalarisation": "weighted-sum"}},
           "chebyshev": {"reward_shaping": True, "preference_alphas": (1.0, 0.3),
                         "reward": {"scale": "reachable", "scalarisation": "chebyshev"}}}


def train_policy(device: str, models: list[str], minutes: float, out: Path, seed: int,
                 reward: str = "v0") -> dict[str, Any]:
    from agents.ppo import train
    from envs.reward import RewardConfig

    t0 = time.perf_counter()
    options = dict(REWARDS[reward])
    if "reward" in options:
        options["reward"] = RewardConfig(**options["reward"])
    res = train(device=device, models=models, timesteps=10**8, out=out, evaluator="analytic", seed=seed,
                max_seconds=minutes * 60, overwrite=True, hv_every=10**9, **options)
    from agents.policy_io import read_meta

    reward = read_meta(out).get("reward", {})
    return {"device": device, "models": models, "timesteps": res.timesteps, "seconds": round(time.perf_counter() - t0, 1),
            "seed": seed, "reward": reward}


def trained_record(device: str, policy: Path) -> dict[str, Any]:
    """The training record of a policy trained earlier (``--policies``), from its policy.json."""
    from agents.policy_io import read_meta

    meta = read_meta(policy)
    return {"device": device, "models": list(meta.get("models", [])), "timesteps": meta.get("timesteps"),
            "seconds": round(float(meta.get("train_seconds", 0.0)), 1), "seed": meta.get("seed"),
            "reward": meta.get("reward", {}), "policy": str(policy)}


def policy_points(policy: Path, model: str, device: str, sweep_ev: Any, budgets: int) -> dict[str, Any]:
    """The policy's plans priced in the sweep's space (module docstring): its 8 plans (each at its preference's budget), all its
    candidates (8 preferences x ``budgets`` budget levels), and apply's front (those and the uniform baselines)."""
    from agents.apply import apply_policy, budget_levels
    from experiments.sweep.baselines import uniform_vectors

    res = apply_policy(policy, model, device=device, front=8, evaluator="analytic", baselines=uniform_vectors,
                       budget_fractions=budget_levels(budgets))
    space = sweep_ev.space

    def priced(vectors: list[np.ndarray]) -> list[list[float]]:
        ys = [space.repair(space.encode(res.space.decode(x))) for x in vectors]
        return [list(sweep_ev.evaluate(y).objectives(("latency", "memory", "energy"))) for y in ys]

    full = priced(res.front.vectors)
    # The same policy without a budget per preference (every preference at the full budget, session 6's apply):
    # its distinct plans, for comparison in the same run.
    flat = apply_policy(policy, model, device=device, front=8, evaluator="analytic", baselines=uniform_vectors,
                        budget_fractions=(1.0,), preference_budgets=False)
    full_budget = priced(flat.front.vectors)
    # The same policy without the budget fill (agents.apply.fill_budget; session 7's apply): the policy's plans alone.
    raw = apply_policy(policy, model, device=device, front=8, evaluator="analytic", baselines=uniform_vectors,
                       budget_fractions=budget_levels(budgets), budget_fill=False)
    no_fill = priced(raw.front.vectors)
    changed = int(np.sum(np.any(np.stack(res.front.vectors) != res.front.vectors[0], axis=0)))
    front = res.front.members
    return {"objectives": full, "candidates_objectives": priced([c.vector for c in res.front.candidates]),
            "apply_front_objectives": priced([m.vector for m in front]),
            "apply_front_origins": [m.origin for m in front],
            "distinct": len({tuple(y) for y in full}), "distinct_full_budget": len({tuple(y) for y in full_budget}),
            "distinct_no_fill": len({tuple(y) for y in no_fill}),
            "own_origins": [m.origin for m in _own_members(res.front)],
            "apply_front_no_fill_objectives": priced([m.vector for m in raw.front.members]),
            "preference_budget_fractions": res.front.extra.get("preference_budget_fractions"),
            "distinct_policy_vectors": len({tuple(v.tolist()) for v in res.front.vectors}),
            "distinct_candidates": len(res.front.candidates), "budget_levels": budgets,
            "policy_evaluations": res.front.evaluations, "baseline_evaluations": len(res.baselines),
            "decisions_changed_across_preferences": changed, "decisions": len(res.front.vectors[0]),
            "apply_hv": res.front.extra.get("with_baselines_hypervolume")}


def _own_members(front: Any) -> list[Any]:
    """The candidates that are the preferences' own plans (``front.vectors``), in preference order."""
    by_vector = {}
    for c in front.candidates:
        by_vector.setdefault(c.vector.tobytes(), c)
    return [by_vector[v.tobytes()] for v in front.vectors]


def one(model_dir: str, label: str, device: str, policy: Path, seeds: list[int], root: Path,
        budgets: int) -> dict[str, Any]:
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
    pol = policy_points(policy, model_dir, device, ev, budgets)
    apply_s = time.perf_counter() - t0
    hv_policy = hypervolume(pol["objectives"], ref, scales=scales)
    hv_with = hypervolume(pol["objectives"] + base_points, ref, scales=scales)
    hv_candidates = hypervolume(pol["candidates_objectives"], ref, scales=scales)
    hv_apply = hypervolume(pol["apply_front_objectives"], ref, scales=scales)
    hv_apply_no_fill = hypervolume(pol["apply_front_no_fill_objectives"], ref, scales=scales)
    hv_nsga = [s["hypervolume"] for s in sweeps]
    return {"model": label, "device": device, "hv_policy": hv_policy, "hv_policy_with_baselines": hv_with,
            "hv_candidates": hv_candidates, "hv_apply_front": hv_apply, "hv_apply_front_no_fill": hv_apply_no_fill,
            "hv_nsga2": hv_nsga, "hv_nsga2_mean": float(np.mean(hv_nsga)), "nsga2_front_size": [s["front_size"] for s in sweeps],
            "best_family": best_family, "hv_best_family": best_hv, "hv_baselines_all": s0["hypervolume_baselines"],
            "apply_s": round(apply_s, 1), **{k: v for k, v in pol.items() if not k.endswith("objectives") and k != "apply_front_origins"},
            "policy_objectives": pol["objectives"], "scales": scales,
            "apply_front_objectives": pol["apply_front_objectives"], "apply_front_origins": pol["apply_front_origins"]}


def _baseline_records(run_dir: Path) -> list[dict[str, Any]]:
    out = []
    with open(run_dir / "evals.jsonl") as fh:
        for line in fh:
            r = json.loads(line)
            if r["algo"].startswith("baseline:") and r.get("feasible", True):
                out.append(r)
    return out


def _reward_words(reward: dict[str, Any] | None) -> str:
    """How the policy's reward was made, from its policy.json (``envs.reward``; older policies: raw, unshaped)."""
    reward = reward or {}
    scale = reward.get("scale", "raw")
    words = "raw 1 - ratio, uncapped" if scale == "raw" else (
        f"scores over reachable gains (floor {reward.get('gain_floor')}), capped to [-{reward.get('loss_cap')}, "
        f"{reward.get('gain_cap')}]")
    if scale != "raw":  # policies trained before the option: a weighted sum
        words = f"{reward.get('scalarisation', 'weighted-sum')} of " + words
    return words + (", potential-based shaping" if reward.get("shaping") else ", terminal only")


def nondominated_count(points: list[list[float]]) -> int:
    """How many distinct points of ``points`` no other one dominates (minimisation)."""
    pts = np.unique(np.round(np.asarray(points, dtype=np.float64), 12), axis=0)
    return sum(1 for p in pts if not any(np.all(q <= p) and np.any(q < p) for q in pts))


def render(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    out = ["# Policy transfer to the unseen set (analytic evaluator, paper devices)", "",
           f"Generated by `{meta['command']}`; {meta['machine']}; load average {meta['load_before']} before, "
           f"{meta['load_after']} after (the analytic evaluator is deterministic; load changes wall time only).", "",
           "Training (per device, analytic evaluator, knobs precision + placement, MaskablePPO defaults): "
           + "; ".join(f"{t['device']}: {t['timesteps']} timesteps in {t['seconds']:.0f} s on {', '.join(t['models'])}, "
                       f"seed {t['seed']}, reward {_reward_words(t.get('reward'))}" for t in meta["training"]) + ".", "",
           ("Policy plans: each of the 8 preferences at the memory budget its memory weight asks for "
            "(`agents.apply.preference_budget`, apply's default), on the env's floor of GPU + CPU bytes "
            "(`envs.smallest`), filled towards the policy's own full-budget plan while that budget allows "
            "(`agents.apply.fill_budget`, origin `policy+fill`; apply's default); distinct plans: how many differ in "
            "objectives (how many of those no other dominates; the policy's own plans without the fill, session 7's "
            "apply; the same policy's 8 plans all at the full budget, session 6's apply). NSGA-II's baselines include "
            "the least-memory plan (`experiments.sweep.baselines.least_memory_vectors`)."), "",
           "HV in the sweep's normalised space (latency, memory, energy / the unmodified model's; reference "
           "[3.0, 1.1, 3.5], the one `apply --json` uses too); NSGA-II: 200 evaluations with the baselines, mean "
           f"over seeds {meta['seeds']}. Policy: its 8 plans, each at its preference's budget (`--front 8`); its candidates (8 "
           f"preferences x {meta['budgets']} budget levels, `--front 8 --front-budgets {meta['budgets']}`); apply's "
           "front = the non-dominated set of those candidates and the uniform baselines (what `apply` returns). "
           "The best baseline family's HV is the sweep's.", "",
           "| model | device | HV policy 8 | HV candidates | HV apply front | HV NSGA-II (mean) | policy 8 / NSGA-II "
           "| candidates / NSGA-II | apply front / NSGA-II | candidates / best baseline | apply front / best baseline "
           "| best family (HV) | distinct plans / 8 (non-dominated; without the fill; all at the full budget) "
           "| apply front without the fill / NSGA-II | policy evals (+ baselines) | apply front origins "
           "| NSGA-II front sizes |", "|---" * 17 + "|"]
    for r in rows:
        nsga, best = r["hv_nsga2_mean"], r["hv_best_family"]
        origins = r["apply_front_origins"]
        n_pol = sum(1 for o in origins if o == "policy")
        n_fill = sum(1 for o in origins if o == "policy+fill")
        no_fill = r.get("hv_apply_front_no_fill")
        out.append(f"| {r['model']} | {r['device']} | {r['hv_policy']:.4f} | {r['hv_candidates']:.4f} | "
                   f"{r['hv_apply_front']:.4f} | {nsga:.4f} | {r['hv_policy'] / nsga:.3f} | "
                   f"{r['hv_candidates'] / nsga:.3f} | {r['hv_apply_front'] / nsga:.3f} | "
                   f"{r['hv_candidates'] / best:.3f} | {r['hv_apply_front'] / best:.3f} | {r['best_family']} "
                   f"({best:.4f}) | {r['distinct']} ({nondominated_count(r['policy_objectives'])}; "
                   f"{r.get('distinct_no_fill', '-')}; {r.get('distinct_full_budget', '-')}) | "
                   f"{'-' if no_fill is None else f'{no_fill / nsga:.3f}'} | "
                   f"{r['policy_evaluations']} (+{r['baseline_evaluations']}) | "
                   f"{n_pol} policy, {n_fill} policy+fill, {len(origins) - n_pol - n_fill} baseline | "
                   f"{r['nsga2_front_size']} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    from experiments.benchmarks.unseen import build_unseen

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", default=",".join(DEVICES))
    ap.add_argument("--train-models", default=",".join(TRAIN))
    ap.add_argument("--unseen", default=",".join(UNSEEN))
    ap.add_argument("--minutes", type=float, default=3.0, help="training wall time per device")
    ap.add_argument("--seeds", default="0,1,2", help="NSGA-II seeds")
    ap.add_argument("--budgets", type=int, default=4, help="budget levels per preference (apply --front-budgets)")
    ap.add_argument("--train-seed", type=int, default=0, help="the policy's training seed (without --policies)")
    ap.add_argument("--reward", choices=sorted(REWARDS), default="v0", help="the policy's reward options (REWARDS)")
    ap.add_argument("--policies", default=None, metavar="DIR",
                    help="use the policies DIR/policy-<device> trained earlier (same training models) instead of training")
    ap.add_argument("--root", default="runs/bench-policy-transfer")
    ap.add_argument("--out", default="experiments/benchmarks/results/policy_transfer")
    ap.add_argument("--merge", default=None, metavar="A.json,B.json",
                    help="only render: merge the JSON results of runs made one device each (in parallel) into --out")
    args = ap.parse_args(argv)
    if args.merge:
        parts = [json.loads(Path(f).read_text()) for f in args.merge.split(",")]
        meta = {**parts[0]["meta"], "command": " + ".join(p["meta"]["command"] for p in parts),
                "training": [t for p in parts for t in p["meta"]["training"]],
                "load_before": [p["meta"]["load_before"] for p in parts],
                "load_after": [p["meta"].get("load_after") for p in parts]}
        rows = [r for p in parts for r in p["rows"]]
        out = Path(args.out)
        out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
        good = [r for r in rows if "error" not in r]
        out.with_suffix(".md").write_text(render(good, meta) + "".join(
            f"\n- {r['model']} on {r['device']}: {r['error']}" for r in rows if "error" in r) + "\n")
        return 0
    torch.set_num_threads(1)
    root = Path(args.root)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    meta: dict[str, Any] = {
        "command": "python -m experiments.benchmarks.policy_transfer " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs, torch 1 thread",
        "load_before": [round(v, 1) for v in os.getloadavg()], "seeds": seeds, "training": [],
        "budgets": args.budgets}
    rows: list[dict[str, Any]] = []
    out = Path(args.out)
    for device in args.devices.split(","):
        if args.policies:
            policy = Path(args.policies) / f"policy-{device}"
            meta["training"].append(trained_record(device, policy))
        else:
            policy = root / f"policy-{device}"
            meta["training"].append(train_policy(device, args.train_models.split(","), args.minutes, policy,
                                                 seed=args.train_seed,
                                                 reward=args.reward))
        for name in args.unseen.split(","):
            try:
                rows.append(one(str(build_unseen(name)), name, device, policy, seeds, root, args.budgets))
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
