"""The claims report: measure each claim with its baseline in the same run and write REPORT.md.

    python -m experiments.benchmarks.claims                  # CPU claims here; GPU claims here if CUDA, else
                                                             # the saved results/claims_gpu.json
    python -m experiments.benchmarks.claims --quick --out /tmp/REPORT.md   # tiny shapes: the code path only
    python -m experiments.benchmarks.claims --gpu --out claims_gpu.json    # on a GPU machine: GPU claims only

``autosurgeon report`` calls :func:`build_report`. The claims and their targets (the issue's): speed 2–4×
through placement, memory 4–8× through precision, energy per token 30–50% lower, quality loss < 1%. How each
is measured: ``claims_cpu`` (this machine) and ``claims_gpu`` (a CUDA GPU); verdicts: ``claims_record``;
the page: ``claims_report``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from autosurgeon._logging import get_logger
from experiments.benchmarks.claims_record import ClaimRecord

logger = get_logger(__name__)
Progress = Callable[[str], None]

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEFAULT_OUT = HERE / "REPORT.md"
QUICK_OUT = RESULTS / "claims_quick.md"
DEFAULT_GPU_JSON = RESULTS / "claims_gpu.json"
DEFAULT_CPU_JSON = RESULTS / "claims_cpu.json"


def _rel(path: Path) -> str:
    """``path`` relative to the repository when inside it, else absolute."""
    path = Path(path).resolve()
    root = HERE.parent.parent
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def gpu_part(*, quick: bool, skip_gpu: bool, gpu_json: Path, progress: Progress) -> tuple[list[ClaimRecord], str]:
    """GPU rows and the report's note on where they came from: measured here (CUDA present and not skipped),
    read from the saved file (and its card and date), or "not measured" rows when neither is possible."""
    from experiments.benchmarks.claims_gpu import GPU_QUICK, GpuSettings, gpu_records, missing_gpu_records, run_gpu

    if not skip_gpu and _cuda():
        progress("GPU claims: measuring on this machine's GPU")
        data = run_gpu(GPU_QUICK if quick else GpuSettings(), progress)
        target = gpu_json if not quick else gpu_json.with_name("claims_gpu_quick.json")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(data, indent=1, default=str))
        return gpu_records(data, where="measured in this run"), (
            f"measured in this run on {data['card']} ({data['date_utc']}); raw numbers in `{_rel(target)}`.")
    if gpu_json.is_file():
        data = json.loads(gpu_json.read_text())
        why = "skipped (`--skip-gpu`)" if skip_gpu else "no CUDA device here"
        progress(f"GPU claims: {why}; reading {_rel(gpu_json)} ({data.get('card')}, {data.get('date_utc')})")
        return gpu_records(data, where=f"saved GPU run `{_rel(gpu_json)}`"), (
            f"NOT measured in this run ({why}): read from `{_rel(gpu_json)}`, measured on **{data.get('card')}** at "
            f"{data.get('date_utc')} (torch {data.get('torch')}, {data.get('host_cores')} host cores) by "
            f"`python -m experiments.benchmarks.claims --gpu` on the lent GPU machine.")
    why = f"{'skipped (`--skip-gpu`)' if skip_gpu else 'no CUDA device here'} and no saved GPU results"
    progress(f"GPU figures not measured: {why} at {_rel(gpu_json)}")
    return missing_gpu_records(f"GPU figures not measured: {why}"), (
        f"**GPU figures not measured**: {why} at `{_rel(gpu_json)}`; the GPU rows are marked not measured, "
        "nothing is filled in.")


def other_gpu_runs(gpu_json: Path) -> list[str]:
    """One line per other saved full GPU run (another card or time) beside ``gpu_json`` (``claims_gpu_*.json``):
    its card, date and the GPU rows' figures, so the report shows how much the same measurement moved between runs."""
    from experiments.benchmarks.claims_gpu import gpu_records

    lines = []
    for path in sorted(gpu_json.parent.glob("claims_gpu_*.json")):
        if path == gpu_json or "quick" in path.name:
            continue
        data = json.loads(path.read_text())
        figures = "; ".join(f"{r.title.removeprefix('GPU').lstrip(': ')}: {r.measured}"
                            for r in gpu_records(data, where=path.name) if r.figure is not None)
        lines.append(f"Other saved GPU run `{_rel(path)}` ({data.get('card')}, {data.get('date_utc')}; quality model "
                     f"`{data.get('quality', {}).get('model', '?')}`): {figures}.")
    return lines


def build_report(*, quick: bool = False, out: str | os.PathLike[str] | None = None, skip_gpu: bool = False,
                 gpu_json: str | os.PathLike[str] | None = None, progress: Progress | None = None,
                 command: str = "autosurgeon report") -> tuple[Path, list[ClaimRecord]]:
    """Measure the CPU claims, get the GPU ones (module docstring), write the report and the raw CPU JSON.

    Args:
        quick: tiny shapes and few steps (tests); the default output then goes to ``results/claims_quick.md``
            so the committed report is never overwritten by a quick run.
        out: where REPORT.md goes (default ``experiments/benchmarks/REPORT.md``); the raw CPU results go to
            ``results/claims_cpu.json`` for the default, else beside ``out`` with a ``.json`` suffix.
        skip_gpu: do not measure on a GPU here even if one is present (saved GPU figures are still read).
        gpu_json: the saved GPU results (default ``results/claims_gpu.json``).
        progress: receives one line per step (the CLI prints them on stderr).

    Returns:
        (the report's path, the records).
    """
    from experiments.benchmarks import claims_cpu
    from experiments.benchmarks.claims_report import render

    progress = progress or logger.info
    started = time.perf_counter()
    settings = claims_cpu.QUICK if quick else claims_cpu.CpuSettings()
    out_path = Path(out) if out is not None else (QUICK_OUT if quick else DEFAULT_OUT)
    cpu_json = DEFAULT_CPU_JSON if out is None and not quick else out_path.with_suffix(".json")
    gpu_path = Path(gpu_json) if gpu_json is not None else DEFAULT_GPU_JSON
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    source = f"measured in this run, {stamp}"

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        progress("CPU claims: speed (placement) and energy")
        speed = claims_cpu.measure_speed(settings, progress)
        progress("CPU claims: memory (precision) and quality")
        memory = claims_cpu.measure_memory(settings, progress)
    finally:
        torch.set_num_threads(threads)
    records = [*claims_cpu.speed_records(speed, settings, source=source),
               *claims_cpu.memory_records(memory, settings, source=source),
               *claims_cpu.energy_records(speed, settings, source=source)]
    gpu_rows, gpu_note = gpu_part(quick=quick, skip_gpu=skip_gpu, gpu_json=gpu_path, progress=progress)
    records += gpu_rows
    order = {"speed": 0, "memory": 1, "energy": 2, "quality": 3}
    records.sort(key=lambda r: order[r.claim])  # stable: CPU rows before GPU rows within a claim
    wall = time.perf_counter() - started
    notes = [f"CPU: {os.cpu_count()} cores shared with other jobs while measured (load average "
             f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end): absolute speeds vary run to run, so "
             "the CPU configurations take turns in interleaved rounds and each ratio comes from this one run.",
             f"Raw CPU numbers: `{_rel(cpu_json)}`; raw GPU numbers: `{_rel(gpu_path)}`.",
             *other_gpu_runs(gpu_path)]
    meta = {"command": command + (" --quick" if quick else ""), "generated_utc": stamp, "wall_s": wall,
            "cpu_machine": claims_cpu.machine(), "gpu_note": gpu_note, "quick": quick, "notes": notes}
    text = render(records, meta)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(text)
    cpu_json.parent.mkdir(parents=True, exist_ok=True)
    cpu_json.write_text(json.dumps({"meta": meta, "speed": speed, "memory": memory,
                                    "records": [r.to_dict() for r in records]}, indent=1, default=str))
    progress(f"wrote {_rel(out_path)} and {_rel(cpu_json)} in {wall:.0f} s")
    return out_path, records


def _stderr(start: float) -> Progress:
    def emit(line: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f}s] {line}", file=sys.stderr, flush=True)

    return emit


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="measure the GPU claims only and write their JSON to --out")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and few steps (exercises the code path)")
    parser.add_argument("--out", default=None, help="REPORT.md path (with --gpu: the JSON path)")
    parser.add_argument("--skip-gpu", action="store_true", help="do not measure on a GPU here")
    parser.add_argument("--gpu-json", default=None, help="saved GPU results (default results/claims_gpu.json)")
    parser.add_argument("--heldout-file", default=None, help="(--gpu) held-out windows saved with torch.save")
    parser.add_argument("--quality-model", default=None, help="(--gpu) zoo LM for the quality rows")
    args = parser.parse_args(argv)
    progress = _stderr(time.perf_counter())
    if args.gpu:
        import dataclasses

        from experiments.benchmarks.claims_gpu import GPU_QUICK, GpuSettings, gpu_records, run_gpu
        from experiments.benchmarks.claims_report import table

        settings = dataclasses.replace(GPU_QUICK if args.quick else GpuSettings(), heldout_file=args.heldout_file)
        if args.quality_model:
            settings = dataclasses.replace(settings, quality_model=args.quality_model)
        data = run_gpu(settings, progress)
        target = Path(args.out or DEFAULT_GPU_JSON)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(data, indent=1, default=str))
        rows = table(gpu_records(data, where="measured in this run"))
        target.with_suffix(".md").write_text(
            f"# GPU claims: {data['card']}, {data['date_utc']}\n\nWritten by `python -m experiments.benchmarks.claims "
            f"--gpu` (raw numbers: `{target.name}`); the full report with methods is `experiments/benchmarks/"
            "REPORT.md`.\n\n" + "\n".join(rows) + "\n")
        print("\n".join(rows))
        print(f"errors: {data['errors'] or 'none'}; wall {data['wall_s']:.0f} s; wrote {target}")
        return 0
    path, records = build_report(quick=args.quick, out=args.out, skip_gpu=args.skip_gpu, gpu_json=args.gpu_json,
                                 progress=progress, command="python -m experiments.benchmarks.claims")
    from experiments.benchmarks.claims_report import table

    print("\n".join(table(records)))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
