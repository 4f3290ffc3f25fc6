"""``autosurgeon profile``: measure this machine (or show a preset / profile file) and print it.

Without ``--device`` (or with ``--device local``) the machine is measured now and its cache file
rewritten; with a preset name or a JSON path, that profile is shown as it is. The table lists the
profile's power modes (how its rates scale in each) and its power-limit model; ``--power-cap W`` shows a
paper profile in the fastest mode within ``W`` (``autosurgeon.hardware.power_cap.at_power_cap``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from autosurgeon.errors import InvalidArgumentError

if TYPE_CHECKING:  # the hardware modules import torch: `autosurgeon --help` does not
    from autosurgeon.hardware.resolve import HardwareProfile


def _preset_names() -> list[str]:
    # The same listing as hardware.resolve.list_presets (tested equal), without importing torch for --help.
    return sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "presets").glob("*.json"))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "profile",
        help="measure this machine's hardware profile, or show a preset",
        description="Detect and measure this machine (GEMM rate per dtype, memory, host<->device and disk "
        "bandwidth) and cache the profile; or show a preset or a profile JSON file.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (under 10 s)")
    parser.add_argument("--json", action="store_true", help="print the profile as JSON instead of a table")
    parser.add_argument("--out", metavar="FILE", help="also write the profile JSON to FILE")
    parser.add_argument(
        "--device",
        metavar="PRESET_OR_PATH",
        default="local",
        help=f"'local' (default: measure now), a preset ({', '.join(_preset_names())}) or a profile .json",
    )
    parser.add_argument("--list", action="store_true", help="list the presets (profiles on paper) and exit")
    parser.add_argument("--power-cap", type=float, default=None, metavar="W",
                        help="show a paper profile in its fastest power mode within W watts (rates derated)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autosurgeon.files.atomic import check_out_file

    check_out_file(getattr(args, "out", None))  # before any work: one line for '', a folder, a bad parent
    from autosurgeon.hardware.resolve import (
        profile_cache_path,
        profile_local,
        resolve_profile,
        save_profile,
    )

    if args.list:
        print("\n".join(_preset_names()))
        return 0
    local = args.device == "local"
    if args.power_cap is not None:
        from autosurgeon.hardware.power_cap import check_power_cap

        check_power_cap(args.power_cap, argument="--power-cap")
        if local:
            raise InvalidArgumentError("`--power-cap` derates a profile on paper; this machine's profile is measured "
                                       "as it runs (AutoSurgeon never changes clocks or power limits). Give "
                                       "`--device PRESET_OR_PATH`, or use --power-cap with sweep/train/apply, where it "
                                       "constrains plans on a measured profile.")
    if local:
        how = "quick" if args.quick else "full, up to about a minute"
        print(f"measuring this machine ({how}) ...", file=sys.stderr)
        profile = profile_local(quick=args.quick)
    else:
        profile = resolve_profile(args.device)
        if args.power_cap is not None:
            profile = profile.at_power_cap(args.power_cap)
    if args.json:
        print(profile.to_json())
    else:
        print(format_profile(profile))
    if args.out is not None:
        path = save_profile(profile, args.out)
        print(f"wrote {path}", file=sys.stderr)
    if local:
        print(f"cached at {profile_cache_path(profile.fingerprint)}", file=sys.stderr)
    return 0


def _si(value: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.4g} {prefix}{unit}"
    return f"{value:.4g} {unit}"


def _binary(nbytes: int) -> str:
    for scale, prefix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if nbytes >= scale:
            return f"{nbytes / scale:.4g} {prefix}"
    return f"{nbytes} B"


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes else "unknown"


def format_profile(profile: HardwareProfile) -> str:
    """Plain-text table of a profile: facts, per-unit rates, links, power, notes."""
    origin = "measured here" if profile.measured else "on paper (datasheet figures)"
    lines = [f"{profile.name}  [{origin}]  fingerprint {profile.fingerprint}  schema v{profile.schema_version}"]
    if profile.board:
        lines.append(f"board     {profile.board}")
    cpu = profile.cpu
    cores = f"{cpu.physical_cores} cores / {cpu.logical_cores} threads" if cpu.physical_cores else "cores unknown"
    lines.append(f"cpu       {cpu.model} ({cpu.arch or '?'}), {cores}, RAM {_gib(cpu.memory_bytes)}")
    caches = ", ".join(f"{k.upper()} {_binary(cpu.caches[k])}" for k in ("l1d", "l2", "l3") if k in cpu.caches)
    if caches:
        lines.append(f"caches    {caches} (per instance)")
    if cpu.isa:
        lines.append(f"isa       {' '.join(cpu.isa)}")
    for gpu in profile.gpus:
        extra = [f"{_gib(gpu.memory_bytes)}"]
        if gpu.sm_count:
            extra.append(f"{gpu.sm_count} SMs")
        if gpu.compute_capability:
            extra.append(f"cc {gpu.compute_capability}")
        if gpu.power_limit_w or gpu.default_power_limit_w:
            extra.append(f"power limit {gpu.power_limit_w or '?'} W (default {gpu.default_power_limit_w or '?'} W)")
        if gpu.pcie_gen:
            extra.append(f"PCIe gen{gpu.pcie_gen} x{gpu.pcie_width}")
        if gpu.energy_counter is not None:
            extra.append("energy counter " + ("readable" if gpu.energy_counter else "absent"))
        lines.append(f"gpu {gpu.index}     {gpu.name}: {', '.join(extra)}")
    dtypes = sorted({d for u in profile.units for d in u.gemm_flops}, key=_dtype_order)
    header = f"{'unit':<8} {'kind':<4} {'memory':>10} {'mem BW':>12}" + "".join(f" {d:>13}" for d in dtypes)
    lines += ["", "GEMM rate (FLOP/s, int8 OP/s) and memory bandwidth per unit:", header, "-" * len(header)]
    for unit in profile.units:
        cells = "".join(f" {_si(unit.gemm_flops[d], '') if d in unit.gemm_flops else '-':>13}" for d in dtypes)
        bandwidth = _si(unit.memory_bandwidth, "B/s") if unit.memory_bandwidth else "-"
        flag = "" if unit.measured else "  (paper)"
        lines.append(f"{unit.name:<8} {unit.kind:<4} {_gib(unit.memory_bytes):>10} {bandwidth:>12}{cells}{flag}")
    if profile.links:
        lines += ["", "links     " + ", ".join(f"{k} {_si(v, 'B/s')}" for k, v in profile.links.items())]
    disk = profile.method.get("disk_read")
    if disk:
        dropped = "page cache dropped" if disk.get("page_cache_dropped") else "page cache NOT dropped"
        lines.append(f"disk      {disk.get('directory')} ({disk.get('filesystem') or '?'}, {dropped})")
    if profile.power:
        lines.append("power     " + ", ".join(f"{k} {v:g} W" for k, v in profile.power.items()))
    lines += format_power_modes(profile)
    if profile.measured:
        cfg = profile.method.get("config", {})
        lines.append(
            f"method    median of {cfg.get('repeats')} after {cfg.get('warmup')} warm-up, "
            f"{profile.method.get('cpu_threads')} CPU threads, torch {profile.method.get('torch')}, "
            f"{profile.method.get('seconds')} s, {'quick' if profile.method.get('quick') else 'full'}, "
            f"load average {profile.method.get('load_average_1m_before')} -> "
            f"{profile.method.get('load_average_1m_after')}"
        )
    for note in profile.notes:
        lines.append(f"note      {note}")
    if profile.sources:
        lines.append("sources   see `--json` (field -> datasheet citation)")
    return "\n".join(lines)


def format_power_modes(profile: HardwareProfile) -> list[str]:
    """Lines for the power modes: watts, idle, rate factors per unit kind, online cores; '*' marks the mode the
    rates are for; then the power-limit model, if any. Modes derived from ``power`` are labelled so."""
    from autosurgeon.hardware.power_modes import current_mode, profile_modes

    modes = profile_modes(profile)
    now = current_mode(profile)
    kinds = [k for k in ("cpu", "gpu", "dla") if any(u.kind == k for u in profile.units)]
    origin = "" if profile.power_modes else " (derived from `power`: the profile lists no power_modes)"
    lines = ["", f"power modes{origin}; factors on the reference rates, compute/memory per unit kind; * = the "
             "mode these rates are for:"]
    header = f"  {'mode':<24} {'watts':>7} {'idle':>7}" + "".join(f" {k + ' c/m':>13}" for k in kinds) + "  cores"
    lines += [header, "  " + "-" * (len(header) - 2)]
    for mode in sorted(modes, key=lambda m: -m.watts):
        mark = "*" if mode.name == now.name else " "
        cells = "".join(f" {mode.compute(k):>6.3f}/{mode.memory(k):<6.3f}" for k in kinds)
        cores = ", ".join(f"{k} {v}" for k, v in mode.cores.items()) or "-"
        lines.append(f"{mark} {mode.name:<24} {mode.watts:>7.4g} {mode.idle:>7.4g}{cells}  {cores}")
    model = profile.power_derating
    if model is not None:
        lines.append(f"power limit model: caps from {model.min_watts:g} W up to {model.mode!r} by DVFS (clock ~ "
                     f"((cap - static) / ({model.mode} - static))^(1/{model.exponent:g}) on {', '.join(model.kinds)}; "
                     "a model, labelled DERIVED/ASSUMED in the sources)")
    return lines


def _dtype_order(name: str) -> tuple[int, str]:
    order = ("float32", "tfloat32", "bfloat16", "float16", "float8_e4m3fn", "int8")
    return (order.index(name) if name in order else len(order), name)
