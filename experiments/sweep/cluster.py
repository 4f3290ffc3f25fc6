"""A Dask client for a sweep: a local cluster of N worker processes, or an existing scheduler's cluster.

Every worker declares its execution device as one unit of the Dask resource ``device`` (``dask worker
tcp://HOST:PORT --nthreads 1 --resources device=1`` on an existing cluster; a local cluster does it for
its workers), and every evaluation holds one unit, so a worker runs one evaluation at a time on its device.
A local cluster raises ``distributed.scheduler.allowed-failures`` to ``allowed_failures`` so that an evaluation
whose workers keep dying is re-run that many times before the sweep fails, and waits up to
``restart_timeout_s`` for a killed worker's nanny to start its replacement (an existing scheduler keeps its
own setting: start it with ``DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=10`` for the same).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from autosurgeon.errors import AutoSurgeonError, InvalidArgumentError

RESOURCE = "device"


def require_distributed() -> None:
    """Raise a clear error naming the extra to install when ``dask.distributed`` is missing."""
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        raise AutoSurgeonError(f"`--workers` / `--scheduler` need Dask distributed ({exc}); install it with "
                               "`pip install 'autosurgeon[scale]'` (or `pip install 'dask[distributed]'`).") from None


def check_cluster_args(workers: int | None, scheduler: str | None) -> None:
    """Validate ``--workers`` / ``--scheduler`` (at most one; workers >= 1; a tcp:// or tls:// address)."""
    if workers is not None and scheduler is not None:
        raise InvalidArgumentError(f"give `--workers` ({workers}) or `--scheduler` ({scheduler!r}), not both: "
                                   "--workers starts a local cluster, --scheduler joins an existing one.")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise InvalidArgumentError(f"`--workers` must be an integer >= 1 (local worker processes), got {workers!r}.")
    if scheduler is not None and "://" not in scheduler:
        raise InvalidArgumentError(f"`--scheduler` must be a Dask scheduler address such as tcp://10.0.0.5:8786, "
                                   f"got {scheduler!r}.")


def local_threads(workers: int) -> int:
    """Torch threads per local worker: the machine's cores shared out (at least 1)."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


@contextmanager
def dask_client(*, workers: int | None = None, scheduler: str | None = None, processes: bool = True,
                allowed_failures: int = 10, timeout_s: float = 60.0, restart_timeout_s: float = 600.0
                ) -> Iterator[Any]:
    """A ``distributed.Client`` on a local cluster of ``workers`` processes, or on ``scheduler``; closed after.

    Args:
        workers: local worker processes (threads with ``processes=False``: tests), one thread each.
        scheduler: an existing scheduler's address (its workers must declare the ``device`` resource).
        processes: local workers as processes (True) or threads of this process (False).
        allowed_failures: worker deaths one task may survive on a local cluster.
        timeout_s: how long to wait for the scheduler and for a first worker.
        restart_timeout_s: how long a local cluster waits for a killed worker's replacement before it gives
            that worker up.
    """
    check_cluster_args(workers, scheduler)
    if workers is None and scheduler is None:
        raise InvalidArgumentError("give `--workers N` (a local Dask cluster) or `--scheduler tcp://HOST:PORT`.")
    require_distributed()
    import dask
    from distributed import Client, LocalCluster

    cluster = None
    # A killed local worker is restarted by its nanny; under load that can take well over Dask's default 15 s
    # lost-worker-timeout, after which the cluster would close the nanny and run on one worker fewer.
    with dask.config.set({"distributed.scheduler.allowed-failures": int(allowed_failures),
                          "distributed.deploy.lost-worker-timeout": f"{restart_timeout_s:g}s"}):
        if workers is not None:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=processes,
                                   resources={RESOURCE: 1}, dashboard_address=":0", silence_logs=logging.ERROR)
            client = Client(cluster, timeout=timeout_s)
        else:
            try:
                client = Client(scheduler, timeout=timeout_s)
            except OSError as exc:
                raise AutoSurgeonError(f"`--scheduler` {scheduler!r}: no Dask scheduler answered within "
                                       f"{timeout_s:g} s ({exc}); start one with `dask scheduler` and check the "
                                       "address.") from None
        try:
            client.wait_for_workers(1, timeout=timeout_s)
            check_resources(client)
            yield client
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


@contextmanager
def sweep_cluster(*, workers: int | None = None, scheduler: str | None = None, gpus: str | None = None,
                  threads: int | None = None, processes: bool = True) -> Iterator[Any]:
    """A ``dask_eval.SweepCluster`` for the CLI's ``--workers`` / ``--scheduler`` / ``--worker-gpus`` /
    ``--worker-threads``; None without a cluster."""
    check_cluster_args(workers, scheduler)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InvalidArgumentError(f"`--worker-threads` must be an integer >= 1, got {threads!r}.")
    if gpus is not None and workers is None:
        raise InvalidArgumentError(f"`--worker-gpus` {gpus!r} spreads a local cluster's workers over GPUs; give "
                                   "`--workers N` too (on an existing cluster set CUDA_VISIBLE_DEVICES per worker).")
    if workers is None and scheduler is None:
        yield None
        return
    ids = [g.strip() for g in gpus.split(",") if g.strip()] if gpus else None
    with dask_client(workers=workers, scheduler=scheduler, processes=processes) as client:
        from experiments.sweep.dask_eval import SweepCluster

        # Local CPU workers share the cores; GPU workers and remote ones keep their own thread setting.
        if threads is None and workers is not None and not ids:
            threads = local_threads(workers)
        yield SweepCluster(client, threads=threads, gpus=ids)


def check_resources(client: Any) -> None:
    """Refuse a cluster none of whose workers declares the ``device`` resource (its tasks would never run)."""
    workers = client.scheduler_info().get("workers", {})
    with_device = [a for a, w in workers.items() if w.get("resources", {}).get(RESOURCE, 0) >= 1]
    if not with_device:
        raise InvalidArgumentError(
            f"none of the cluster's {len(workers)} worker(s) declares the Dask resource {RESOURCE!r}, so no "
            f"evaluation could be scheduled; start each worker with `dask worker SCHEDULER --nthreads 1 "
            f"--resources {RESOURCE}=1` (one per execution device).")


__all__ = ["RESOURCE", "check_cluster_args", "check_resources", "dask_client", "local_threads",
           "require_distributed", "sweep_cluster"]
