"""``autosurgeon train``: train a maskable PPO surgery policy for one device.

    autosurgeon train --device local --models tiny-llama,digits-cnn --timesteps 50000 --out policies/cpu
    autosurgeon train --device local --models tiny-llama,digits-cnn --timesteps 80000 --out policies/cpu --resume
    autosurgeon train --device local --models tiny-llama --evaluator profiled --timesteps 50000 --out policies/cpu \\
        --workers 4          # the envs' finished plans measured on a local Dask cluster of 4 workers
    autosurgeon train --device local --models tiny-llama --timesteps 50000 --out policies/cpu-kv \\
        --knobs precision,placement,kv_precision,kv_budget,prefetch_depth

Writes ``policies/NAME/policy.safetensors`` + ``policy.json``, checkpoints under ``checkpoints/`` and TensorBoard
logs under ``tb/`` (``tensorboard --logdir policies/NAME/tb``). The agents package loads lazily.
"""
from __future__ import annotations

import argparse
from typing import Any

from autosurgeon.cli.scaleout_args import add_cluster_args
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.evaluate.registry import names as evaluator_names


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train", help="train a surgery policy (maskable PPO) for a device",
        description="Train a MaskablePPO policy over the AutoSurgeon/Surgery-v0 environment on the given models, "
        "sampling a model, a preference and a memory budget per episode.")
    parser.add_argument("--device", default="local", metavar="PROFILE", help="hardware profile (default: local)")
    parser.add_argument("--models", required=True, help="comma-separated model specs (zoo names, HF dirs, module:factory)")
    parser.add_argument("--timesteps", type=int, required=True, help="total environment steps to train to")
    parser.add_argument("--out", required=True, help="policy folder, e.g. policies/NAME")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint up to --timesteps")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the policy and checkpoints --out holds (default: refuse)")
    parser.add_argument("--evaluator", choices=evaluator_names(cheap=True), default="analytic",
                        help="reward evaluator: analytic (roofline, default) or profiled (per-unit runtime measurements)")
    parser.add_argument("--seed", type=int, default=0, help="seed of PPO and the environments (default 0)")
    parser.add_argument("--n-envs", type=int, default=2, help="vectorised environments (default 2)")
    parser.add_argument("--knobs", default="precision,placement",
                        help="knob kinds the policy decides (default precision,placement); session knobs "
                        "kv_precision, kv_budget, kv_tier, kv_window, prefetch, prefetch_depth add a last, "
                        "model-level decision step and widen the policy's action")
    parser.add_argument("--hv-every", type=int, default=4096, help="timesteps between front hypervolume logs")
    parser.add_argument("--power-cap", type=float, default=None, metavar="W",
                        help="train under a power cap in watts: a paper profile in its fastest power mode within W; "
                        "on a measured profile plans drawing more than W on average are penalised (clocks and power "
                        "limits are never changed)")
    parser.add_argument("--runtime-every", type=int, default=0, metavar="STEPS",
                        help="every STEPS timesteps also run the policy's plan end to end on the runtime (this "
                        "machine only; 0 = never, default)")
    add_cluster_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from agents.ppo import train

    if args.timesteps < 1:
        raise InvalidArgumentError(f"`--timesteps` must be >= 1, got {args.timesteps}.")
    if args.n_envs < 1:
        raise InvalidArgumentError(f"`--n-envs` must be >= 1, got {args.n_envs}.")
    if args.power_cap is not None:
        from autosurgeon.hardware.power_cap import check_power_cap

        check_power_cap(args.power_cap, argument="--power-cap")
    from autosurgeon.files.runfolder import check_out_path
    from experiments.sweep.cluster import check_cluster_args, sweep_cluster

    check_out_path(args.out, argument="--out")  # before a cluster starts: one line for a bad value
    check_cluster_args(args.workers, args.scheduler)
    # The envs' finished plans are measured on the cluster's workers (agents.dask_vec_env); same policy as serial.
    with sweep_cluster(workers=args.workers, scheduler=args.scheduler, gpus=args.worker_gpus,
                       threads=args.worker_threads) as cluster:
        result = train(device=args.device, models=args.models.split(","), timesteps=args.timesteps, out=args.out,
                       resume=args.resume, evaluator=args.evaluator, seed=args.seed, n_envs=args.n_envs,
                       knobs=tuple(k.strip() for k in args.knobs.split(",") if k.strip()), hv_every=args.hv_every,
                       runtime_every=args.runtime_every, power_cap_w=args.power_cap, overwrite=args.overwrite,
                       cluster=cluster)
    last = result.history[-1] if result.history else {}
    print(f"policy saved to {result.out} ({result.timesteps} timesteps, {result.seconds:.1f} s)")
    for digest, done in (result.cluster or {}).items():
        print(f"  cluster: {done['evaluated']} plans measured on {len(done['by_worker'])} worker(s) "
              f"({done['evaluations_per_s']:.2f} evaluations/s of waiting)")
    if args.power_cap is not None:
        from agents.policy_io import read_meta

        power = read_meta(result.out).get("power") or {}
        if power:
            print(f"  power cap {power['power_cap_w']:g} W: mode {power['power_mode']!r} ({power['how']})")
    for key in ("mean_reward", "improvement", "budget_violation_rate"):
        if key in last:
            print(f"  last rollout {key}: {last[key]:.4f}")
    for key, value in last.items():
        if key.startswith("hv/"):
            print(f"  front hypervolume on {key[3:]}: {value:.4f}")
    print(f"  TensorBoard: tensorboard --logdir {result.out / 'tb'}")
    return 0
