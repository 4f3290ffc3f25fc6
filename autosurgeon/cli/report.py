"""``autosurgeon report``: measure the project's claims, each against its baseline in the same run, and write
``experiments/benchmarks/REPORT.md``.

    autosurgeon report                      # CPU claims here (a few minutes); GPU claims here if CUDA is
                                            # present, else read from results/claims_gpu.json (card and date said)
    autosurgeon report --quick --out /tmp/REPORT.md   # tiny shapes: checks the code path in seconds
    autosurgeon report --skip-gpu           # never measure on a GPU here (saved GPU figures are still read)

Claims and targets: speed 2–4× through placement (vs accelerate offload and vs everything on one
device/tier at the same memory cap), memory 4–8× through precision, energy per token 30–50% lower (NVML on
the GPU; an estimate on a CPU without RAPL, labelled and not counted), quality loss < 1%. A claim not met is
reported as missed, with the gap. Progress goes to stderr; the table to stdout.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report", help="measure the claims (speed, memory, energy, quality) and write REPORT.md",
        description="Measure each claim with its baseline in the same run and write a report: a table of claim, "
        "target, measured figure, baseline, met/missed with the gap, and device, then each row's method.")
    parser.add_argument("--quick", action="store_true",
                        help="tiny shapes and few steps (seconds; exercises the code path, not the claims); "
                        "writes experiments/benchmarks/results/claims_quick.md unless --out is given")
    parser.add_argument("--out", default=None, metavar="PATH",
                        help="where the report goes (default experiments/benchmarks/REPORT.md)")
    parser.add_argument("--skip-gpu", action="store_true",
                        help="do not measure on a GPU here even if one is present; the GPU rows then come from "
                        "the saved GPU results, if any")
    parser.add_argument("--gpu-json", default=None, metavar="PATH",
                        help="saved GPU results to read (or write, when measured here); default "
                        "experiments/benchmarks/results/claims_gpu.json")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autosurgeon.files.atomic import check_out_file

    check_out_file(args.out, argument="--out")  # before minutes of measuring: '', a folder, a bad parent
    check_out_file(args.gpu_json, argument="--gpu-json")
    from experiments.benchmarks.claims import build_report
    from experiments.benchmarks.claims_report import table

    start = time.perf_counter()

    def progress(line: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f}s] {line}", file=sys.stderr, flush=True)

    path, records = build_report(quick=args.quick, out=args.out, skip_gpu=args.skip_gpu, gpu_json=args.gpu_json,
                                 progress=progress)
    print("\n".join(table(records)))
    missed = sum(r.status == "missed" for r in records)
    met = sum(r.status == "met" for r in records)
    print(f"\n{met} met, {missed} missed, {len(records) - met - missed} not counted; report: {path}")
    return 0
