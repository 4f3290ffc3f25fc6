"""``autosurgeon tune``: Optuna search over the surgery policy's PPO hyperparameters (resumable).

    autosurgeon tune --device local --models tiny-llama,digits-cnn --trials 20 --timesteps 8192 --out policies/tune

The study is stored in SQLite (``--storage``, default ``sqlite:///OUT/study.db``) or any database
(``--storage postgresql://...``); running the same command again, or in several processes or machines at
once, continues it until it holds ``--trials`` finished trials. ``--workers N`` / ``--scheduler ADDR`` run
one such process per Dask worker. Trials that fall behind the median are
pruned. The best settings are written to ``OUT/best.json``.
"""
from __future__ import annotations

import argparse
from typing import Any

from autosurgeon.cli.scaleout_args import add_cluster_args
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.evaluate.registry import names as evaluator_names


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "tune", help="tune the surgery policy's PPO hyperparameters with Optuna (SQLite, pruning, resumable)",
        description="Optuna TPE over MaskablePPO hyperparameters; each trial trains on --models and is scored by "
        "its front's hypervolume minus its budget-violation rate.")
    parser.add_argument("--device", default="local", metavar="PROFILE", help="hardware profile (default: local)")
    parser.add_argument("--models", required=True, help="comma-separated model specs")
    parser.add_argument("--trials", type=int, required=True, help="finished trials the study should hold")
    parser.add_argument("--timesteps", type=int, default=8192, help="training steps per trial (default 8192)")
    parser.add_argument("--out", required=True, help="folder for study.db and best.json")
    parser.add_argument("--storage", default=None, help="Optuna storage URL (default sqlite:///OUT/study.db)")
    parser.add_argument("--study", default="surgery-ppo", help="study name (default surgery-ppo)")
    parser.add_argument("--evaluator", choices=evaluator_names(cheap=True), default="analytic")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-envs", type=int, default=2)
    add_cluster_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autosurgeon.files.runfolder import check_out_path

    check_out_path(args.out, argument="--out")  # before any work: one line for '', a file, an unwritable parent
    from agents.tune import tune

    kwargs = dict(device=args.device, models=args.models.split(","), trials=args.trials, timesteps=args.timesteps,
                  out=args.out, storage=args.storage, study_name=args.study, evaluator=args.evaluator,
                  seed=args.seed, n_envs=args.n_envs)
    if args.workers is None and args.scheduler is None:
        result = tune(**kwargs)
    else:  # every worker joins the study through its database (agents.tune_dask)
        from agents.tune_dask import tune_on_cluster
        from experiments.sweep.cluster import dask_client

        if args.worker_gpus is not None or args.worker_threads is not None:
            raise InvalidArgumentError("`--worker-gpus` / `--worker-threads` are for sweeps; for tune set "
                                       "CUDA_VISIBLE_DEVICES / OMP_NUM_THREADS in each worker's environment.")
        with dask_client(workers=args.workers, scheduler=args.scheduler) as client:
            tasks = args.workers or len(client.scheduler_info()["workers"])
            result = tune_on_cluster(client, tasks=tasks, local=args.workers is not None, **kwargs)
    print(f"study {result.study_name} ({result.storage}): {result.finished} finished trials, {result.pruned} pruned")
    if result.best_value is not None:
        print(f"  best value {result.best_value:.4f} with {result.best_params}")
    return 0
