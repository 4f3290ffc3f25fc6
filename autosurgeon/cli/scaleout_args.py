"""Scale-out options shared by ``sweep``, ``tune`` and ``train``: a Dask cluster and a shared Optuna database.

Only argparse here; the engines load lazily inside the commands (``experiments.sweep.cluster``,
``agents.storage``).
"""
from __future__ import annotations

import argparse


def add_cluster_args(parser: argparse.ArgumentParser) -> None:
    """``--workers N`` (a local Dask cluster) and ``--scheduler tcp://HOST:PORT`` (an existing one)."""
    group = parser.add_argument_group("scale-out (Dask)")
    group.add_argument("--workers", type=int, default=None, metavar="N",
                       help="evaluate on a local Dask cluster of N worker processes (each loads the model once)")
    group.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                       help="evaluate on an existing Dask cluster: one `dask worker` per execution device, each with one "
                       "thread and the resource device=1 (README: Scale-out)")
    group.add_argument("--worker-threads", type=int, default=None, metavar="T",
                       help="torch threads per worker (default with --workers: cores // N). Records equal a serial "
                       "run's when the threads do: an evaluator notes them, and a measured one depends on them")
    group.add_argument("--worker-gpus", default=None, metavar="0,1,..",
                       help="with --workers: CUDA device ids, one per worker in turn (worker k sees gpus[k %% n])")


def add_storage_args(parser: argparse.ArgumentParser, *, study_default: str | None = None) -> None:
    """``--storage URL`` (PostgreSQL or any SQLAlchemy URL) and ``--study-name`` for a shared Optuna study."""
    parser.add_argument("--storage", default=None, metavar="URL",
                        help="Optuna study database shared by several processes or machines, e.g. "
                        "postgresql://user:password@host:5432/optuna (any SQLAlchemy URL)")
    parser.add_argument("--study-name", default=study_default, metavar="NAME",
                        help="the shared study's name; processes giving the same --storage and name join it")
