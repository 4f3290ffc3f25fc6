"""Tile sweep of the CUDA int4 GEMV (``cuda-int4-gemv``) against tinygemm and a bf16 GEMV, batch 1, on a GPU.

Why: the kernel's autotune list decides its speed on decode shapes; this measures every listed tile (and the
autotuned pick) on the real Llama-7B decode shapes with the weights rotated over >= 256 MiB of copies (read from
HBM, not L2), each timed as a CUDA-graph replay of ``calls`` products (launch cost removed), median of repeats.
`% of bound` = bytes read (codes + scales + offsets) / measured device-to-device copy bandwidth / time.

    python -m experiments.benchmarks.gemv_tiles --out results/gemv_tiles_gpu.md
"""
from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from experiments.benchmarks.kernels import _bandwidth
from runtime.kernels import quantize_weight
from runtime.kernels.cuda import tinygemm_prepare, tinygemm_run
from runtime.kernels.triton_gemv import _build, gemv_int4
from runtime.kernels.triton_gemv_variants import gemv1_variant

SHAPES = [(4096, 4096), (12288, 4096), (11008, 4096), (22016, 4096), (4096, 11008), (32000, 4096)]


def _graph_time(calls: list[Callable[[], object]], repeats: int) -> float:
    """Median seconds per call of one CUDA graph holding every call once."""
    for fn in calls:
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in calls:
            fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        graph.replay()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3 / len(calls))
    return statistics.median(times)


# Candidate one-row kernels (runtime.kernels.triton_gemv_variants): (variant, BLOCK_N, steps, warps, stages)
CANDIDATES = [("magic", 4, 64, 4, 2), ("magic", 2, 64, 4, 2), ("magic", 4, 32, 4, 2), ("magic", 8, 32, 4, 2),
              ("group", 4, 1, 4, 2), ("group", 4, 2, 4, 2), ("group", 2, 4, 4, 2), ("group", 8, 1, 4, 3),
              ("group", 8, 2, 8, 2), ("group", 16, 1, 8, 2)]


def _candidate_rows(x: torch.Tensor, qws: list[Any], repeats: int) -> list[tuple[str, float]]:
    rows = []
    for variant, bn, steps, warps, stages in CANDIDATES:
        name = f"{variant} BLOCK_N={bn} steps={steps} warps={warps} stages={stages}"
        try:
            calls = [functools.partial(gemv1_variant, x, q, variant, block_n=bn, steps=steps, num_warps=warps,
                                       num_stages=stages) for q in qws]
            rows.append((name, _graph_time(calls, repeats)))
        except Exception as exc:  # noqa: BLE001  (a candidate that does not compile here is reported, not fatal)
            rows.append((f"{name}: {type(exc).__name__}", float("nan")))
    return rows


def _shape_rows(n: int, k: int, bw: float, rotate_mib: int, repeats: int, triton: Any, kernel: Any,
                sweep_tiles: bool = True) -> list[str]:
    w = torch.randn(n, k, device="cuda")
    qw0 = quantize_weight(w, "int4", group_size=128)
    copies = max(2, (rotate_mib << 20) // max(qw0.nbytes, 1))
    qws = [quantize_weight(w + 1e-3 * i, "int4", group_size=128) for i in range(copies)]
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    y = torch.empty(1, n, device="cuda", dtype=torch.float32)
    bound = qw0.nbytes / bw
    rows: list[tuple[str, float]] = []
    wb = [w.to(torch.bfloat16) + 0 for _ in range(max(2, (rotate_mib << 20) // (2 * n * k)))]
    rows.append(("bf16 x@W.t() (bound = int4 bytes)", _graph_time([lambda t=t: x @ t.t() for t in wb], repeats)))
    del wb
    for tiles in (8, 4, 2):  # tinygemm's K tiling (8 is the runtime's)
        packed = [tinygemm_prepare(q, tiles) for q in qws]
        if any(pk is None for pk in packed):
            continue
        rows.append((f"tinygemm inner_k_tiles={tiles}", _graph_time(
            [lambda q=q, pk=pk: tinygemm_run(x, q, pk) for q, pk in zip(qws, packed)], repeats)))
        del packed
    rows.append(("gemv autotuned", _graph_time([lambda q=q: gemv_int4(x, q) for q in qws], repeats)))
    best = kernel.best_config
    rows += _candidate_rows(x, qws, repeats)
    if not sweep_tiles:
        out = [f"| {n}x{k} | {name} | {t * 1e6:.1f} | {100 * bound / t:.0f}% |" for name, t in rows]
        return [*out, f"| {n}x{k} | (autotune picked {best}) | | |"]

    def call(q: Any, cfg: Any) -> None:
        kp = q.padded_in_features
        bn, nb = cfg.kwargs["BLOCK_N"], cfg.kwargs["NB"]
        kernel.fn[(triton.cdiv(n, bn),)](
            x, q.qweight, q.scales, q.offsets, y, n, k, kp, kp // 128, q.qweight.stride(0), q.scales.stride(0),
            GS=128, BLOCK_N=bn, NB=nb, num_warps=cfg.num_warps, num_stages=cfg.num_stages)

    for cfg in kernel.configs:
        name = f"gemv BLOCK_N={cfg.kwargs['BLOCK_N']} NB={cfg.kwargs['NB']} warps={cfg.num_warps} " \
               f"stages={cfg.num_stages}"
        try:
            rows.append((name, _graph_time([lambda q=q, c=cfg: call(q, c) for q in qws], repeats)))
        except Exception as exc:  # noqa: BLE001  (a tile that does not compile here is reported, not fatal)
            rows.append((f"{name}: {type(exc).__name__}", float("nan")))
    out = [f"| {n}x{k} | {name} | {t * 1e6:.1f} | {100 * bound / t:.0f}% |" for name, t in rows]
    return [*out, f"| {n}x{k} | (autotune picked {best}) | | |"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--rotate-mib", type=int, default=256)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in SHAPES), help="comma list of NxK")
    p.add_argument("--no-tiles", action="store_true", help="skip the per-tile rows of cuda-int4-gemv")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    triton, _, kernel = _build()  # the one-row kernel: decode at batch 1
    bw, _ = _bandwidth(torch.device("cuda"))  # the kernel benchmark's copy measurement, same method
    title = (f"# int4 GEMV tiles, batch 1 ({torch.cuda.get_device_name()}, torch {torch.__version__}, "
             f"triton {triton.__version__}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
    method = (f"- copy bandwidth (read+write, 1 GiB, median of 10): {bw / 1e9:.1f} GB/s; weights rotated over >= "
              f"{a.rotate_mib} MiB; CUDA-graph replay, median of {a.repeats}")
    lines = [title, "", method, "",
             "| shape | kernel / tile | us | % of bound |", "| --- | --- | ---: | ---: |"]
    for n, k in (tuple(int(v) for v in s.split("x")) for s in a.shapes.split(",")):
        lines += _shape_rows(n, k, bw, a.rotate_mib, a.repeats, triton, kernel, sweep_tiles=not a.no_tiles)
        torch.cuda.empty_cache()
    a.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
