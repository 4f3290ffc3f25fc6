"""``tune`` on a Dask cluster: every worker joins the same Optuna study through its database and runs trials.

Optuna distributes a study through its storage: any process that opens the study by name and URL and runs
``study.optimize`` adds trials that every other process's sampler sees. Here a Dask cluster starts those
processes where the devices are: one task per worker slot (``device`` resource), each running
:func:`agents.tune.tune` with its own sampler seed (``seed + k``: equal seeds would propose equal first
trials) until the study holds ``trials`` finished trials. A worker killed mid-trial: Dask re-runs its task
elsewhere, which joins the study again; the heartbeat (``agents.storage``) marks the dead trial failed and
retries it once. The coordinator then reads the study and writes ``best.json``.

The storage must be reachable from every worker: a server database (``postgresql://``) for a cluster of
machines; SQLite on a local cluster only (one disk, file locks).
"""
from __future__ import annotations

import uuid
from typing import Any

from agents.tune import tune
from autosurgeon._logging import get_logger
from autosurgeon.errors import InvalidArgumentError

logger = get_logger(__name__)


def tune_on_cluster(client: Any, *, tasks: int, local: bool, **kwargs: Any) -> Any:
    """Run ``agents.tune.tune(**kwargs)`` as ``tasks`` joined processes on ``client``'s workers; the study's result.

    Args:
        client: a ``distributed.Client`` (``experiments.sweep.cluster.dask_client``).
        tasks: how many tune processes join the study (one per worker).
        local: the cluster is on this machine (SQLite storage allowed).
        kwargs: ``tune`` arguments; ``storage`` is required for a remote cluster.
    """
    from pathlib import Path

    from experiments.sweep.cluster import RESOURCE  # lazy: a layer above, and it needs the optional dask

    storage = kwargs.get("storage") or f"sqlite:///{(Path(kwargs['out']) / 'study.db').resolve()}"
    if storage.startswith("sqlite") and not local:
        raise InvalidArgumentError(f"`--storage` {storage.split('?')[0]!r} is a file on this machine; workers of "
                                   "an existing cluster cannot share it. Give a server database, e.g. "
                                   "--storage postgresql://user:password@host:5432/optuna.")
    kwargs = {**kwargs, "storage": storage}
    seed = int(kwargs.pop("seed", 0))
    tag = uuid.uuid4().hex[:8]
    futures = [client.submit(tune, **kwargs, seed=seed + k, key=f"autosurgeon-tune-{tag}-{k}", pure=False,
                             resources={RESOURCE: 1}) for k in range(max(1, int(tasks)))]
    try:
        client.gather(futures)
    finally:
        for f in futures:
            f.release()
    return tune(**kwargs, seed=seed)  # the study already holds the trials: this only reads it and writes best.json


__all__ = ["tune_on_cluster"]
