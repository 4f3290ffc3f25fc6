"""RL benchmark: a CPU surgery policy trained on tiny-llama + digits-cnn, applied to held-out tiny-moe.

1. Train ``MaskablePPO`` (``agents.ppo.train``) on this machine's measured ``local`` profile with the
   chosen evaluator (default ``profiled``: per-unit runtime measurements, composed per plan) within a wall
   budget (``--minutes``), 4 vectorised envs, seed 0.
2. Held-out model (never seen in training, default ``tiny-moe``), same profile and evaluator:
   * the policy's front from K = 8 evenly spread preferences (8 policy runs, at most 8 evaluations);
   * NSGA-II (pymoo, population 20, 10 generations = 200 evaluations, integer vectors repaired by
     ``SearchSpace.repair``; seeds 0..2), HV of the non-dominated set of everything it evaluated;
   * random search with 8 valid random plans (seeds 0..2), the same HV;
   HV in the normalised objective space of ``agents.apply`` (latency, memory, energy divided by the
   unmodified model's; reference point 2.0 each, ``agents.apply.HV_REFERENCE``).
3. Single-preference budget compliance: ``--episodes`` episodes with a Dirichlet preference and a memory
   budget drawn uniformly between the smallest reachable memory and the unmodified model's (the training
   distribution), the policy acting deterministically; share of plans within budget — on the held-out model
   and on each training model.
4. Learning curves from the TensorBoard event files (``surgery/*`` and SB3's ``rollout/ep_rew_mean``).

Run: ``python -m experiments.benchmarks.rl --out experiments/benchmarks/results/rl.md``
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def nsga2_front(ctx: Any, *, evaluations: int, seed: int, vectors: list[np.ndarray] | None = None
                ) -> tuple[np.ndarray, int]:
    """Normalised objectives of NSGA-II's non-dominated evaluated plans, and evaluations made.

    ``vectors``: if given, receives the plan vectors of those non-dominated points.
    """
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.problem import ElementwiseProblem
    from pymoo.core.repair import Repair
    from pymoo.operators.crossover.pntx import TwoPointCrossover
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair
    from pymoo.operators.sampling.rnd import IntegerRandomSampling
    from pymoo.optimize import minimize
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    from envs.observation import OBJECTIVES
    from envs.reward import normalised

    space, ev, base = ctx.space, ctx.evaluator, ctx.base
    seen: list[np.ndarray] = []
    seen_x: list[np.ndarray] = []

    class SpaceRepair(Repair):
        def _do(self, problem: Any, X: np.ndarray, **kwargs: Any) -> np.ndarray:
            return np.array([space.repair(np.rint(x).astype(np.int64)) for x in X])

    class Problem(ElementwiseProblem):
        def __init__(self) -> None:
            super().__init__(n_var=len(space), n_obj=len(OBJECTIVES), xl=np.zeros(len(space)),
                             xu=(space.nvec - 1).astype(float), vtype=int)

        def _evaluate(self, x: np.ndarray, out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
            xv = space.repair(np.rint(x).astype(np.int64))
            f = normalised(ev.evaluate(xv), base, OBJECTIVES)
            seen.append(f)
            seen_x.append(xv)
            out["F"] = f

    pop = 20
    algo = NSGA2(pop_size=pop, sampling=IntegerRandomSampling(), crossover=TwoPointCrossover(),
                 mutation=PM(eta=3.0, vtype=float, repair=RoundingRepair()), repair=SpaceRepair(),
                 eliminate_duplicates=True)
    minimize(Problem(), algo, ("n_evals", evaluations), seed=seed, verbose=False)
    F = np.array(seen)
    keep = NonDominatedSorting().do(F, only_non_dominated_front=True)
    if vectors is not None:
        vectors.extend(seen_x[i] for i in keep)
    return F[keep], len(seen)


def random_front(ctx: Any, *, n: int, seed: int) -> np.ndarray:
    from envs.observation import OBJECTIVES
    from envs.reward import normalised

    rng = np.random.default_rng(seed)
    return np.array([normalised(ctx.evaluator.evaluate(ctx.space.random_vector(rng)), ctx.base, OBJECTIVES)
                     for _ in range(n)])


def compliance(model: Any, env: Any, *, context: int, episodes: int, seed: int) -> dict[str, float]:
    from agents.apply import run_policy

    rng = np.random.default_rng(seed)
    ctx = env.contexts[context]
    base_mem = ctx.base.objective("memory")
    ok, improvements = 0, []
    for _ in range(episodes):
        w = rng.dirichlet(np.ones(3))
        budget = ctx.min_memory + rng.uniform(*env.budget_range) * (base_mem - ctx.min_memory)
        x = run_policy(model, env, preference=w, memory_budget=budget, context=context)
        m = ctx.evaluator.evaluate(x)
        ok += m.objective("memory") <= budget
    return {"episodes": episodes, "within_budget": ok / episodes}


def curves(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for run in sorted(p for p in tb_dir.iterdir() if p.is_dir()):
        acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            if tag.startswith("surgery/") or tag in ("rollout/ep_rew_mean",):
                out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from agents.apply import hypervolume, policy_front
    from agents.policy_io import load_policy
    from agents.ppo import PPOSettings, train
    from autosurgeon.hardware.resolve import resolve_profile
    from envs.surgery import SurgeryEnv

    torch.set_num_threads(1)
    profile = resolve_profile("local")
    train_models = args.models.split(",")
    out = Path(args.policy)
    t0 = time.perf_counter()
    if not args.skip_train:
        result = train(device=profile, models=train_models, timesteps=args.timesteps, out=out,
                       evaluator=args.evaluator, seed=0, n_envs=args.n_envs, settings=PPOSettings(),
                       hv_every=args.hv_every, checkpoint_every=8192, max_seconds=args.minutes * 60)
        train_s, steps = result.seconds, result.timesteps
    else:
        meta = json.loads((out / "policy.json").read_text())["_data"]
        train_s, steps = meta["train_seconds"], meta["timesteps"]
    model, meta = load_policy(out)
    held = SurgeryEnv(models=[args.heldout], device=profile, evaluator=args.evaluator)
    ctx = held.contexts[0]
    tp = time.perf_counter()
    front = policy_front(model, held, k=8)
    policy_s = time.perf_counter() - tp
    nsga = []
    for seed in range(3):
        tn = time.perf_counter()
        f, n = nsga2_front(ctx, evaluations=200, seed=seed)
        nsga.append({"seed": seed, "hv": hypervolume(f), "evaluations": n, "points": len(f),
                     "seconds": time.perf_counter() - tn})
    rnd = [{"seed": s, "hv": hypervolume(random_front(ctx, n=8, seed=s))} for s in range(3)]
    comp = {args.heldout: compliance(model, held, context=0, episodes=args.episodes, seed=1)}
    train_env = SurgeryEnv(models=train_models, device=profile, evaluator=args.evaluator)
    for i, spec in enumerate(train_models):
        comp[spec] = compliance(model, train_env, context=i, episodes=args.episodes, seed=1)
        comp[spec]["hv_k8"] = policy_front(model, train_env, k=8, context=i).hypervolume
    return {"train_seconds": train_s, "timesteps": steps, "wall_total_s": time.perf_counter() - t0,
            "evaluator": args.evaluator, "train_models": train_models, "heldout": args.heldout,
            "heldout_units": len(ctx.units), "heldout_log10_size": ctx.space.log10_size(),
            "policy_hv": front.hypervolume, "policy_distinct_plans": front.evaluations, "policy_seconds": policy_s,
            "policy_points": front.normalised.round(4).tolist(), "nsga2": nsga, "random8": rnd,
            "compliance": comp, "curves": curves(out / "tb"), "load": os.getloadavg(),
            "cpu": platform.processor() or platform.machine(), "device_class": meta["device_class"]}


def write_md(res: dict[str, Any], path: Path) -> None:
    nsga_hv = [r["hv"] for r in res["nsga2"]]
    ratio = res["policy_hv"] / np.mean(nsga_hv) if np.mean(nsga_hv) > 0 else float("nan")
    lines = [
        "# RL surgery policy: held-out front vs NSGA-II, budget compliance, learning curves", "",
        f"Generated by `python -m experiments.benchmarks.rl` on this shared 2-core CPU machine ({res['cpu']}, "
        f"device class `{res['device_class']}`, load average at the end {tuple(round(x, 1) for x in res['load'])}).",
        f"Evaluator for training and every comparison: **{res['evaluator']}** on the measured `local` profile. "
        "Objectives: latency, memory (GPU+CPU tiers), energy, each divided by the unmodified model's "
        "value from the same evaluator; HV reference point 2.0 per objective (pymoo HV, exact; max 8). Quality is "
        "not an objective here (no sensitivity table in this run), so low-bit plans are not penalised for quality.", "",
        "## Training", "",
        f"MaskablePPO (sb3-contrib, MlpPolicy 64x64, n_steps 128 x 4 envs, seed 0) on "
        f"{', '.join(res['train_models'])}: **{res['timesteps']} timesteps in {res['train_seconds'] / 60:.1f} min** "
        "of wall time (time-budgeted run).", "",
        "## Held-out model", "",
        f"`{res['heldout']}` ({res['heldout_units']} decision units, 10^{res['heldout_log10_size']:.1f} valid plans "
        "by static masks), never seen in training.", "",
        "| method | evaluations | HV |", "|---|---:|---:|",
        f"| policy, K = 8 preferences | {res['policy_distinct_plans']} distinct plans (8 runs) | {res['policy_hv']:.4f} |",
    ]
    for r in res["nsga2"]:
        lines.append(f"| NSGA-II seed {r['seed']} (pop 20) | {r['evaluations']} | {r['hv']:.4f} |")
    for r in res["random8"]:
        lines.append(f"| random valid plans, seed {r['seed']} | 8 | {r['hv']:.4f} |")
    target = "met" if ratio >= 0.9 else "MISSED"
    lines += ["", f"Policy HV / mean NSGA-II HV = **{ratio:.3f}** (target >= 0.9: {target}). "
              f"Policy front computed in {res['policy_seconds']:.2f} s.", "",
              "## Single-preference budget compliance", "",
              "Deterministic policy, Dirichlet(1,1,1) preference, memory budget uniform between the smallest "
              "reachable memory and the unmodified model's (the training distribution).", "",
              "| model | episodes | within budget | HV of K=8 front |", "|---|---:|---:|---:|"]
    for spec, c in res["compliance"].items():
        hv = f"{c['hv_k8']:.4f}" if "hv_k8" in c else f"{res['policy_hv']:.4f} (held out)"
        lines.append(f"| {spec} | {c['episodes']} | {c['within_budget'] * 100:.1f}% | {hv} |")
    held_rate = res["compliance"][res["heldout"]]["within_budget"]
    lines += ["", f"Held-out compliance target >= 95%: {'met' if held_rate >= 0.95 else 'MISSED'}.", "",
              "## Learning curves (TensorBoard scalars)", ""]
    for tag, pts in sorted(res["curves"].items()):
        if not pts:
            continue
        pts = sorted(pts)
        idx = np.unique(np.linspace(0, len(pts) - 1, min(8, len(pts))).round().astype(int))
        lines.append(f"- `{tag}`: " + ", ".join(f"{pts[i][0]}: {pts[i][1]:.3f}" for i in idx))
    lines += ["", "Raw numbers: the JSON next to this file.", ""]
    path.write_text("\n".join(lines))
    path.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="tiny-llama,digits-cnn")
    p.add_argument("--heldout", default="tiny-moe")
    p.add_argument("--evaluator", default="profiled", choices=("analytic", "profiled"))
    p.add_argument("--timesteps", type=int, default=1_000_000)
    p.add_argument("--minutes", type=float, default=9.0, help="wall budget of training")
    p.add_argument("--n-envs", type=int, default=4)
    p.add_argument("--hv-every", type=int, default=8192)
    p.add_argument("--episodes", type=int, default=40)
    p.add_argument("--policy", default="policies/rl-bench")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--out", default="experiments/benchmarks/results/rl.md")
    args = p.parse_args()
    res = run(args)
    write_md(res, Path(args.out))
    print(Path(args.out).read_text())


if __name__ == "__main__":
    main()
