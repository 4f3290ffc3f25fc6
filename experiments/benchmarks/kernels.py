"""Kernel benchmark: weight-only int8/int4 linear vs fp32, bf16 and torch's stock kernels, with the bandwidth bound.

    python -m experiments.benchmarks.kernels                       # CPU -> results/kernels_cpu.md
    python -m experiments.benchmarks.kernels --device cuda         # GPU -> results/kernels_gpu.md

Method: for each (shape, batch, kernel) ``warmup`` untimed calls then ``repeats`` timed calls, median. On CPU the
kernels of one (shape, batch) are timed interleaved — each repeat calls every kernel once, in a seeded random
order — so load from other jobs on a shared machine falls on all of them alike; the fastest call is reported too. Weights are
rotated among enough copies to exceed ``--rotate-mib`` (default 256 MiB, several times the last-level cache) so
every call streams its weight from memory, as decode does. The bound is the fewest bytes a call must move
(weight codes + scales + offsets + x + y) over the memory bandwidth measured in the same run: on CPU the best of
a few AVX-512 read passes over 512 MiB (a GEMV only reads its weight), on CUDA a 1 GiB device-to-device copy
(read + write bytes). On CUDA each timed call is a replay of a CUDA graph holding 20 calls (launch overhead out;
eager timing is reported beside it), timed with events. Every kernel's output is checked against a float64
reference on the same dequantized weight in the same run.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from runtime.kernels import choose_kernel, dequantize, get_kernel, quantize_weight
from runtime.kernels.formats import QuantizedWeight

RESULTS = Path(__file__).parent / "results"


@dataclass
class Row:
    shape: str
    batch: int
    kernel: str
    fmt: str
    median_ms: float
    eager_ms: float | None
    min_ms: float
    bytes_moved: int
    rel_err: float | None
    tol: float | None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _time_cpu(fn: Callable[[], object], warmup: int, repeats: int) -> tuple[float, float]:
    """(median s, min s) of ``repeats`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), min(ts)


def _time_cuda(fn: Callable[[], object], warmup: int, repeats: int, graph_calls: int = 20) -> tuple[float, float]:
    """(graph median s per call, eager median s per call), both with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    eager = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        eager.append(a.elapsed_time(b) / 1e3)
    graph_s = float("nan")
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                fn()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(graph_calls):
                fn()
        g.replay()
        torch.cuda.synchronize()
        reps = []
        for _ in range(max(3, repeats // 2)):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            g.replay()
            b.record()
            b.synchronize()
            reps.append(a.elapsed_time(b) / 1e3 / graph_calls)
        graph_s = statistics.median(reps)
    except Exception as exc:  # some kernels cannot be captured (host syncs): report eager only
        print(f"  (no CUDA graph: {type(exc).__name__}: {str(exc)[:80]})", file=sys.stderr)
    return graph_s, statistics.median(eager)


def _bandwidth(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        src = torch.empty(2**30, dtype=torch.uint8, device=device).random_(0, 255)
        dst = torch.empty_like(src)
        _, eager = _time_cuda(lambda: dst.copy_(src), 2, 10, graph_calls=2)
        del src, dst
        return 2 * 2**30 / eager, "device-to-device copy of 1 GiB, read+write bytes, median of 10"
    from runtime.kernels.cpu import read_bandwidth

    best = read_bandwidth(256 * 2**20, repeats=30, best=True)
    if best:
        return best, "AVX-512 read of 256 MiB, all threads, fastest of 30 passes"
    a = torch.empty(512 * 2**20, dtype=torch.uint8).random_(0, 255)
    b = torch.empty_like(a)
    t, _ = _time_cpu(lambda: b.copy_(a), 2, 5)
    return 2 * a.numel() / t, "torch copy of 512 MiB, read+write bytes, median of 5"


def _copies(make: Callable[[], object], nbytes: int, rotate_bytes: int) -> list[object]:
    return [make() for _ in range(max(1, min(16, math.ceil(rotate_bytes / max(nbytes, 1)))))]


def _clone_qw(qw: QuantizedWeight) -> QuantizedWeight:
    from dataclasses import replace

    return replace(qw, qweight=qw.qweight.clone(), scales=qw.scales.clone(),
                   offsets=None if qw.offsets is None else qw.offsets.clone())


def run(device: torch.device, shapes: list[tuple[int, int]], batches: list[int], *, warmup: int, repeats: int,
        group_size: int, rotate_bytes: int) -> tuple[list[Row], dict[str, object]]:
    torch.manual_seed(0)
    load_before = os.getloadavg()
    bw, bw_method = _bandwidth(device)
    rows: list[Row] = []
    choices: list[tuple[str, str, int, str, float, str]] = []
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
        kernels = {"int8": ["cuda-triton", "cuda-int8pack", "dequant-bf16"],
                   "int4": ["cuda-int4-gemv", "cuda-triton", "cuda-int4-tinygemm", "dequant-bf16"],
                   "fp8": ["cuda-fp8"]}
        floats = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    else:
        kernels = {"int8": ["cpu-avx512", "cpu-avx512-a16", "int8-dynamic", "torch-int8pack-cpu", "dequant-bf16"],
                   "int4": ["cpu-avx512", "cpu-avx512-a16", "cpu-avx512-bf16", "torch-int4pack-cpu"]}
        floats = {"fp32": torch.float32, "bf16": torch.bfloat16}

    act = 2 if cuda else 4  # bytes per activation element the quantized kernels read/write

    for n, k in shapes:
        w = torch.randn(n, k, device=device)
        shape = f"{n}x{k}"
        # Every case of this shape is built first, then timed together: on CPU interleaved (round-robin in a
        # seeded random order, so other jobs' load spreads over all kernels alike), on CUDA one after another.
        cases: list[tuple[int, str, str, Callable[[], object], int, float, float | None]] = []
        keep: list[object] = []
        for fname, dt in floats.items():
            wd = w.to(dt)
            ws = _copies(lambda wd=wd: wd.clone(), wd.numel() * wd.element_size(), rotate_bytes)
            keep.append(ws)
            for b in batches:
                x = torch.randn(b, k, device=device, dtype=dt)
                it = [0]

                def call(ws=ws, x=x, it=it) -> torch.Tensor:
                    it[0] = (it[0] + 1) % len(ws)
                    return x @ ws[it[0]].t()

                ref = x.double() @ wd.double().t()
                err = float(((x @ wd.t()).double() - ref).norm() / ref.norm())
                nbytes = wd.numel() * wd.element_size() + (b * k + b * n) * wd.element_size()
                cases.append((b, f"{fname} x@W.t()", fname, call, nbytes, err, None))
            del wd
        qws_by_fmt = {}
        for fmt, names in kernels.items():
            qw = quantize_weight(w, fmt, group_size=group_size)
            qws = _copies(lambda qw=qw: _clone_qw(qw), qw.nbytes, rotate_bytes)
            qws_by_fmt[fmt] = (qw, [nm for nm in names if get_kernel(nm).supports(fmt, device)])
            wref = dequantize(qw, torch.float64)
            for name in qws_by_fmt[fmt][1]:
                kern = get_kernel(name)
                preps = [kern.prepare(q) if kern.prepare is not None else None for q in qws]
                keep.append((qws, preps))
                for b in batches:
                    x = torch.randn(b, k, device=device)
                    it = [0]

                    def call(kern=kern, qws=qws, preps=preps, x=x, it=it) -> torch.Tensor:
                        it[0] = (it[0] + 1) % len(qws)
                        return kern.run(x, qws[it[0]], preps[it[0]])

                    y = kern.run(x, qws[0], preps[0]).double()
                    ref = x.double() @ wref.t()
                    err = float((y - ref).norm() / ref.norm())
                    cases.append((b, name, fmt, call, qw.nbytes + (b * k + b * n) * act, err, kern.tolerance))
            del wref
        for b in batches:
            mine = [c for c in cases if c[0] == b]
            if cuda:
                for _, label, fmt, fn, nbytes, err, tol in mine:
                    g, e = _time_cuda(fn, warmup, repeats)
                    med = g if g == g else e
                    rows.append(Row(shape, b, label, fmt, med * 1e3, e * 1e3, min(med, e) * 1e3, nbytes, err, tol))
                continue
            times: list[list[float]] = [[] for _ in mine]
            for c in mine:
                for _ in range(warmup):
                    c[3]()
            order = list(range(len(mine)))
            rng = random.Random(b)
            for _ in range(repeats):
                rng.shuffle(order)
                for i in order:
                    t0 = time.perf_counter()
                    mine[i][3]()
                    times[i].append(time.perf_counter() - t0)
            for (_, label, fmt, _, nbytes, err, tol), ts in zip(mine, times):
                rows.append(Row(shape, b, label, fmt, statistics.median(ts) * 1e3, None, min(ts) * 1e3, nbytes,
                                err, tol))
        del cases, keep
        for fmt, (qw, usable) in qws_by_fmt.items():
            for b in batches:  # what the runtime's per-layer choice picks on this real shape
                ch = choose_kernel(qw, batch=b, candidates=usable, warmup=2, repeats=5)
                choices.append((shape, fmt, b, ch.name, ch.median_s[ch.name] * 1e3,
                                ", ".join(f"{nm} {ch.median_s[nm] * 1e3:.3f}" for nm in ch.median_s)))
        del w, qws_by_fmt
    meta = {
        "device": torch.cuda.get_device_name(device) if cuda else _cpu_name(),
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "torch": torch.__version__,
        "bandwidth": bw, "bandwidth_method": bw_method, "load_before": load_before, "load_after": os.getloadavg(),
        "warmup": warmup, "repeats": repeats, "group_size": group_size, "rotate_mib": rotate_bytes // 2**20,
        "choices": choices,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    return rows, meta


def to_markdown(rows: list[Row], meta: dict[str, object], device: torch.device) -> str:
    bw = float(meta["bandwidth"])  # type: ignore[arg-type]
    loaded = max(meta["load_before"][0], meta["load_after"][0]) > 0.75 * (meta["cpus"] or 1)  # type: ignore[index]
    lines = [
        f"# Kernel benchmark ({device.type})",
        "",
        f"- device: {meta['device']}; torch {meta['torch']}; {meta['threads']} threads of {meta['cpus']} CPUs",
        f"- date: {meta['date']}; warm-up {meta['warmup']}, repeats {meta['repeats']}, median; weights rotated over "
        f">= {meta['rotate_mib']} MiB of copies (streamed from memory, not cache); int4 group size {meta['group_size']}",
        f"- bandwidth for the bound: {bw / 1e9:.1f} GB/s ({meta['bandwidth_method']}), measured in this run",
        f"- load average before/after: {meta['load_before'][0]:.2f} / {meta['load_after'][0]:.2f}"  # type: ignore[index]
        + (" — **the machine was loaded by other jobs: absolute times are noisy, compare ratios**" if loaded else ""),
        "- shape is out_features x in_features (N x K); x is (batch, K); `vs fp32` = fp32 time / kernel time;",
        "  `% of bound` = (bytes moved / bandwidth) / time; bytes = weight codes + scales (+ offsets) + x + y;",
        "  `rel err` = ||y - ref|| / ||ref|| against float64 on the same (de)quantized weight, `tol` the kernel's stated one.",
    ]
    if device.type == "cuda":
        lines.append("- GPU times: CUDA-graph replay of 20 calls / 20 (launch overhead removed); eager column: one call "
                     "timed with events. fp32 with TF32 off.")
    else:
        lines.append("- `min ms`: fastest single call (less sensitive to other jobs' time slices than the median); "
                     "`min % bound` = bound / min ms. The bound uses the fastest read pass, so both are best cases.")
    lines += ["", "| shape | batch | kernel | fmt | ms | vs fp32 | bound ms | % of bound | rel err | tol |"
              + (" eager ms |" if device.type == "cuda" else " min ms | min vs fp32 | min % bound |"),
              "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
              + (" ---: |" if device.type == "cuda" else " ---: | ---: | ---: |")]
    fp32 = {(r.shape, r.batch): r.median_ms for r in rows if r.kernel.startswith("fp32")}
    fp32_min = {(r.shape, r.batch): r.min_ms for r in rows if r.kernel.startswith("fp32")}
    for r in rows:
        bound_ms = r.bytes_moved / bw * 1e3
        ratio = fp32.get((r.shape, r.batch), float("nan")) / r.median_ms
        err = "" if r.rel_err is None else f"{r.rel_err:.1e}"
        tol = "" if r.tol is None else f"{r.tol:.1e}"
        line = (f"| {r.shape} | {r.batch} | {r.kernel} | {r.fmt} | {r.median_ms:.3f} | {ratio:.2f}x | {bound_ms:.3f} | "
                f"{100 * bound_ms / r.median_ms:.0f}% | {err} | {tol} |")
        if device.type == "cuda":
            line += f" {r.eager_ms:.3f} |" if r.eager_ms is not None else " |"
        else:
            line += (f" {r.min_ms:.3f} | {fp32_min.get((r.shape, r.batch), float('nan')) / r.min_ms:.2f}x |"
                     f" {100 * bound_ms / r.min_ms:.0f}% |")
        lines.append(line)
    lines += ["", "## Per-layer choice (`choose_kernel`, one weight not rotated, warm-up 2, median of 5)", "",
              "| shape | fmt | batch | chosen | ms | all candidates (ms) |", "| --- | --- | ---: | --- | ---: | --- |"]
    for shape, fmt, b, name, ms, alls in meta["choices"]:  # type: ignore[union-attr]
        lines.append(f"| {shape} | {fmt} | {b} | {name} | {ms:.3f} | {alls} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--shapes", default="11008x4096,4096x11008", help="comma list of NxK (out x in)")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--rotate-mib", type=int, default=256)
    p.add_argument("--out", type=Path, default=None, help="markdown file (default results/kernels_<cpu|gpu>.md)")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    shapes = [tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")]
    rows, meta = run(device, shapes, [int(b) for b in a.batches.split(",")], warmup=a.warmup, repeats=a.repeats,
                     group_size=a.group_size, rotate_bytes=a.rotate_mib * 2**20)
    md = to_markdown(rows, meta, device)
    out = a.out or RESULTS / f"kernels_{'gpu' if device.type == 'cuda' else 'cpu'}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
