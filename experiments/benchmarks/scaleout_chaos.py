"""WorkerKiller: ``kill -9`` Dask workers while they hold sweep evaluations (for the scale-out benchmark and tests).

A thread that, after a random delay (seeded), asks the scheduler which workers are processing an
``autosurgeon-eval-*`` task, picks one of them at random and sends its process SIGKILL — an evaluation is
then in flight on a dead worker by construction. Local clusters only (it signals pids on this machine).
"""
from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

PREFIX = "autosurgeon-eval-"


class WorkerKiller(threading.Thread):
    """Kill up to ``kills`` busy workers of ``client``'s local cluster, each after a delay in ``delay_s``.

    ``killed`` lists ``(worker address, evaluation keys it was processing, seconds since start, probe())``;
    ``probe`` (optional) is called at each kill, e.g. to note how far the sweep had got; ``ready`` (optional) is
    waited for after the delay, e.g. until the sweep has written a drawn number of records.
    """

    def __init__(self, client: Any, *, kills: int = 1, seed: int = 0, delay_s: tuple[float, float] = (0.0, 1.0),
                 poll_s: float = 0.005, probe: Callable[[], Any] | None = None,
                 ready: Callable[[], bool] | None = None) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.kills = int(kills)
        self.rng = random.Random(seed)
        self.delay_s = delay_s
        self.poll_s = poll_s
        self.probe = probe
        self.ready = ready  # optional: after the delay, also wait until this is true (e.g. N records written)
        self.killed: list[tuple[str, list[str], float, Any]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        started = time.perf_counter()
        while len(self.killed) < self.kills and not self.stop.is_set():
            if self.stop.wait(self.rng.uniform(*self.delay_s)):
                return
            while self.ready is not None and not self.ready():
                if self.stop.wait(self.poll_s):
                    return
            while not self.stop.is_set():
                busy = {a: [str(k) for k in keys if str(k).startswith(PREFIX)]
                        for a, keys in self.client.processing().items()}
                busy = {a: keys for a, keys in busy.items() if keys}
                if busy:
                    break
                time.sleep(self.poll_s)
            else:
                return
            address = self.rng.choice(sorted(busy))
            try:
                pid = self.client.run(os.getpid, workers=[address])[address]
            except Exception:  # noqa: BLE001 - it finished or died meanwhile: try another moment
                continue
            os.kill(pid, signal.SIGKILL)
            self.killed.append((address, busy[address], time.perf_counter() - started,
                                None if self.probe is None else self.probe()))


__all__ = ["PREFIX", "WorkerKiller"]
