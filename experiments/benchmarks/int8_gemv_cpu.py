"""Decode-shaped int8 GEMV on this CPU against torch's fp32 GEMV: GB/s of weight read and the ratio (issue 20).

    PYTHONPATH=. python -m experiments.benchmarks.int8_gemv_cpu [--kernels cpu-avx2] [--int4-kernels cpu-avx2]
        [--out FILE]

Shapes are the streaming benchmark model's linears (hidden 1024, intermediate 2816, vocab 8000), batch 1, on
``torch.get_num_threads()`` threads. Method: every weight is rotated among enough copies to exceed 128 MiB (four
times the last-level cache), so each call streams its weight from memory, as decode does. Per shape, interleaved
rounds: each round times one pass over every copy for every kernel (order rotated by one per round); a sample is
that pass's wall time / copies. Reported: median per call, min-max over rounds, GB/s of weight bytes read
(fp32 4 B; int8 1 B + 4 B scale per row; int4 group 128: 0.5 B + 8 B per group), each kernel's per-round ratio to fp32 in the same round (median,
min-max), the process CPU time per call, and its error against a float64 reference on the same (dequantized)
weight. Non-torch imports: none.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

import torch

from runtime.kernels import dequantize, get_kernel, quantize_weight

SHAPES = ((1024, 1024), (2816, 1024), (1024, 2816), (8000, 1024))


def _pass_time(fn: Callable[[int], object], n: int) -> tuple[float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n


def run(kernels: list[str], *, rounds: int, rotate_bytes: int, shapes=SHAPES,
        int4: tuple[str, ...] = ()) -> dict[str, object]:
    torch.manual_seed(0)
    load0 = os.getloadavg()
    out: dict[str, object] = {"threads": torch.get_num_threads(), "rounds": rounds, "shapes": {}}
    for n, k in shapes:
        w = torch.randn(n, k) * 0.02
        x = torch.randn(1, k)
        copies = max(2, math.ceil(rotate_bytes / (n * k)))  # by int8 bytes: fp32 copies then are 4x that
        fcopies = max(2, math.ceil(rotate_bytes / (4 * n * k)))
        ws = [w.clone() for _ in range(fcopies)]
        qw = quantize_weight(w, "int8")
        ref = (x.double() @ dequantize(qw, torch.float64).t())
        qws = [qw] + [replace(qw, qweight=qw.qweight.clone(), scales=qw.scales.clone()) for _ in range(copies - 1)]
        calls: dict[str, tuple[Callable[[int], object], int, int]] = {
            "fp32": (lambda i, ws=ws, x=x: torch.nn.functional.linear(x, ws[i]), fcopies, 4 * n * k)}
        errs: dict[str, float] = {"fp32": float(((x @ w.t()).double() - x.double() @ w.double().t()).norm()
                                               / (x.double() @ w.double().t()).norm())}
        for name in kernels:
            kern = get_kernel(name)
            calls[name] = (lambda i, kern=kern, qws=qws, x=x: kern.run(x, qws[i], None), copies, qw.nbytes)
            errs[name] = float((kern.run(x, qw, None).double() - ref).norm() / ref.norm())
        if int4:  # the same weight in int4 (group 128): an eighth of the fp32 bytes plus scales and offsets
            q4 = quantize_weight(w, "int4", group_size=128)
            ref4 = x.double() @ dequantize(q4, torch.float64).t()
            c4 = max(2, math.ceil(rotate_bytes / q4.nbytes))
            q4s = [q4] + [replace(q4, qweight=q4.qweight.clone(), scales=q4.scales.clone(), offsets=q4.offsets.clone())
                          for _ in range(c4 - 1)]
            for name in int4:
                kern = get_kernel(name)
                calls[f"int4 {name}"] = (lambda i, kern=kern, qs=q4s, x=x: kern.run(x, qs[i], None), c4, q4.nbytes)
                errs[f"int4 {name}"] = float((kern.run(x, q4, None).double() - ref4).norm() / ref4.norm())
        names = list(calls)
        for name in names:  # warm-up: page faults, pools, first-call compilation
            fn, cnt, _ = calls[name]
            _pass_time(fn, cnt)
        wall: dict[str, list[float]] = {nm: [] for nm in names}
        cpu: dict[str, list[float]] = {nm: [] for nm in names}
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                fn, cnt, _ = calls[name]
                t, c = _pass_time(fn, cnt)
                wall[name].append(t)
                cpu[name].append(c)
        rows = {}
        for name in names:
            nbytes = calls[name][2]
            ratios = [f / q for f, q in zip(wall["fp32"], wall[name])]
            med = statistics.median(wall[name])
            rows[name] = {"median_us": med * 1e6, "min_us": min(wall[name]) * 1e6, "max_us": max(wall[name]) * 1e6,
                          "GBps": nbytes / med / 1e9, "cpu_us": statistics.median(cpu[name]) * 1e6,
                          "x_fp32": statistics.median(ratios), "x_fp32_min": min(ratios),
                          "x_fp32_max": max(ratios), "rel_err": errs[name], "weight_bytes": nbytes}
        out["shapes"][f"{n}x{k}"] = rows
    out["load"] = [load0, os.getloadavg()]
    return out


def to_markdown(res: dict[str, object]) -> str:
    lines = [(f"{res['threads']} threads, batch 1, {res['rounds']} interleaved rounds, weights rotated past the "
              f"L3; load average {res['load'][0][0]:.2f} -> {res['load'][1][0]:.2f}"), "",
             ("| shape (N x K) | kernel | median us (min-max) | GB/s of weight | x fp32 per round (min-max) | "
              "CPU us / call | rel. err vs fp64 |"), "| --- | --- | --- | --- | --- | --- | --- |"]
    for shape, rows in res["shapes"].items():
        for name, r in rows.items():
            lines.append(f"| {shape} | {name} | {r['median_us']:.0f} ({r['min_us']:.0f}-{r['max_us']:.0f}) | "
                         f"{r['GBps']:.1f} | {r['x_fp32']:.2f} ({r['x_fp32_min']:.2f}-{r['x_fp32_max']:.2f}) | "
                         f"{r['cpu_us']:.0f} | {r['rel_err']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernels", default="cpu-avx2")
    ap.add_argument("--int4-kernels", default="cpu-avx2", help="int4 kernels to time too ('' for none)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--rotate-mib", type=int, default=128)
    ap.add_argument("--out", default=None, help="write json here (and .md beside it)")
    args = ap.parse_args(argv)
    res = run(args.kernels.split(","), rounds=args.rounds, rotate_bytes=args.rotate_mib * 2**20,
              int4=tuple(k for k in args.int4_kernels.split(",") if k))
    md = to_markdown(res)
    print(md)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(res, fh, indent=1)
        with open(os.path.splitext(args.out)[0] + ".md", "w") as fh:
            fh.write(md)


if __name__ == "__main__":
    main()
