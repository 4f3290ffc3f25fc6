"""What one streamed unit costs the host, piece by piece: mapping, page-table work, copies, the GEMV on each.

For weights of the decode's shapes (an MLP linear of the issue-20 model, 2816 x 1024 fp32 = 11 MiB, and a whole
block, 12.25 M floats = 49 MiB) written to the disk tier by the runtime's own store, warm page cache, median of
``repeats`` (interleaved per repeat):

* ``remap``: ``mmap`` + ``MAP_POPULATE`` + ``munmap`` (the previous per-use mapping);
* ``populate`` / ``drop`` / ``willneed``: ``madvise`` on a persistent mapping (:mod:`runtime.mapped`);
* ``pread``: ``preadv`` of the bytes into a reused buffer (the ``read`` path's copy);
* ``gemv anon`` / ``gemv mapped``: batch-1 ``F.linear`` on the same weight in ordinary (anonymous, 4 KiB
  pages unless THP says otherwise) memory and on the mapped file (the page cache's large folios, PMD-mapped
  where aligned), both cold in cache (a 256 MiB buffer is streamed between repeats);
* ``handoff``: submitting a no-op to the streamer's one-thread executor and waiting for it (what each
  prefetch on the worker costs in thread wake-ups, without any I/O);
* ``faults``: minor page faults per populate (getrusage).

Run: ``python -m experiments.benchmarks.streaming_cpu_micro [--threads 2] [--json PATH]``.
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import torch.nn.functional as F

from runtime.mapped import MappedFiles
from runtime.tensors import TensorStore


def measure(shapes: dict[str, tuple[int, int]], *, repeats: int, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    out: dict[str, Any] = {"threads": threads, "repeats": repeats, "load_1min": [os.getloadavg()[0]], "units": {}}
    flush = torch.empty(64 * 2**20, dtype=torch.float32)  # 256 MiB: evicts the 32 MiB L3 between repeats
    with tempfile.TemporaryDirectory(prefix="jalapeno-micro-") as tmp:
        store = TensorStore(offload_dir=tmp)
        mapped = MappedFiles(store)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jalapeno-io")
        try:
            for name, (n, k) in shapes.items():
                w = torch.randn(n, k, generator=torch.Generator().manual_seed(0))
                store.register({name: w}, "disk", label=name)
                entry = store.entry(name)
                fd = os.open(entry.path, os.O_RDONLY)
                size = os.fstat(fd).st_size
                (view,), rng = mapped.views([name])
                buf = torch.empty(entry.nbytes, dtype=torch.uint8)
                x = torch.randn(1, k)
                times: dict[str, list[float]] = {key: [] for key in (
                    "remap", "populate", "drop", "willneed", "pread", "gemv anon", "gemv mapped", "handoff")}
                faults: list[int] = []

                def remap() -> None:
                    m = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                                  prot=mmap.PROT_READ)
                    m.close()

                def pread() -> None:
                    os.preadv(fd, [memoryview(buf.numpy())], entry.offset)

                steps: list[tuple[str, Callable[[], Any]]] = [
                    ("remap", remap), ("willneed", lambda: mapped.willneed(rng)), ("pread", pread),
                    ("handoff", lambda: pool.submit(lambda: None).result()),
                    ("populate", lambda: mapped.populate(rng)), ("gemv mapped", lambda: F.linear(x, view)),
                    ("drop", lambda: mapped.drop(rng)), ("gemv anon", lambda: F.linear(x, w)),
                ]
                for rep in range(repeats + 2):
                    for key, fn in steps:
                        if key.startswith("gemv"):
                            flush.add_(1.0)  # stream 256 MiB: the weight comes from DRAM, as in decode
                        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                        t0 = time.perf_counter()
                        fn()
                        dt = time.perf_counter() - t0
                        if rep >= 2:  # two warm-up repeats
                            times[key].append(dt)
                            if key == "populate":
                                faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
                os.close(fd)
                del view
                res = {key: {"median_us": statistics.median(v) * 1e6, "min_us": min(v) * 1e6, "max_us": max(v) * 1e6}
                       for key, v in times.items()}
                res["bytes"] = entry.nbytes
                res["faults_per_populate"] = statistics.median(faults)
                out["units"][name] = res
        finally:
            pool.shutdown()
            mapped.close()
            store.close()
    out["load_1min"].append(os.getloadavg()[0])
    return out


def to_markdown(res: dict[str, Any]) -> str:
    keys = ["remap", "populate", "drop", "willneed", "pread", "handoff", "gemv anon", "gemv mapped"]
    lines = [f"{res['threads']} torch threads, median (min–max) of {res['repeats']} interleaved repeats, µs; load average "
             f"{res['load_1min'][0]:.1f} → {res['load_1min'][1]:.1f}.", "",
             "| unit | " + " | ".join(keys) + " | faults / populate |", "| --- " * (len(keys) + 2) + "|"]
    for name, r in res["units"].items():
        cells = [f"{r[k]['median_us']:.0f} ({r[k]['min_us']:.0f}–{r[k]['max_us']:.0f})" for k in keys]
        lines.append(f"| {name} ({r['bytes'] / 2**20:.0f} MiB) | " + " | ".join(cells) + f" | {r['faults_per_populate']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    res = measure({"mlp linear 2816x1024": (2816, 1024), "block 12544x1024": (12544, 1024)}, repeats=args.repeats,
                  threads=args.threads)
    print(to_markdown(res))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
