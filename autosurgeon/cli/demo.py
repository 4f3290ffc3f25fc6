"""``autosurgeon demo``: the README's first command, a short tour on this machine.

For now (until the full demo exists): profile this machine (quick, cached), load the default zoo model
``tiny-llama`` (trained on first use, cached) with its quality metrics, and print its block-level
analysis on the local profile.
"""
from __future__ import annotations

import argparse
import sys

from autosurgeon.analysis import analyze
from autosurgeon.analysis_format import binary_bytes, format_analysis, seconds, si
from autosurgeon.cli.analyze import check_sizes, quiet_cache_deprecation, resolve_device
from autosurgeon.errors import InvalidArgumentError

DEFAULT_MODEL = "tiny-llama"
# Quality first, then its baseline and cost; the zoo records more (see `autosurgeon zoo`).
_KEY_METRICS = ("perplexity", "unigram_perplexity", "accuracy", "train_seconds")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="a short tour: profile this machine, load tiny-llama, analyse it",
        description="Profile this machine (quick, cached), load the zoo model (trained on first use, "
        "cached), print its metrics and its block-level analysis on this machine.",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"zoo model to show (default {DEFAULT_MODEL})")
    parser.add_argument("--seq-len", type=int, default=128, help="prompt length analysed (default 128)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from autosurgeon.zoo import cache_folder, load_model

    check_sizes(1, args.seq_len)
    print("== 1. this machine", flush=True)
    profile = resolve_device("local")
    unit = profile.default_unit()
    rates = ", ".join(f"{k} {si(v)}FLOP/s" for k, v in unit.gemm_flops.items())
    origin = "measured" if profile.measured else "on paper"
    print(f"{profile.name} ({origin}); default unit {unit.name}: {binary_bytes(unit.memory_bytes)} memory, "
          f"{si(unit.memory_bandwidth)}B/s bandwidth; GEMM {rates}")
    print(f"\n== 2. model {args.model}", flush=True)

    try:
        trained = (cache_folder(args.model) / "metrics.json").is_file()
    except InvalidArgumentError:  # a shape has no cache folder (nothing to train); a bad name fails below
        trained = True
    if not trained:
        print(f"training {args.model} on first use (minutes on a small CPU; cached afterwards) ...", file=sys.stderr)
    loaded = load_model(args.model)
    params = sum(p.numel() for p in loaded.model.parameters())
    shown = [k for k in _KEY_METRICS if k in loaded.metrics] or sorted(loaded.metrics)
    metrics = ", ".join(f"{k} {loaded.metrics[k]:.4g}" for k in shown) or "none recorded"
    print(f"{type(loaded.model).__name__}, {si(params)} params, task {loaded.task}; metrics: {metrics}")

    print(f"\n== 3. analysis on {profile.name} (batch 1, {args.seq_len} tokens, prefill)")
    inputs = loaded.example_inputs(1, args.seq_len)
    with quiet_cache_deprecation():
        prefill = analyze(loaded.model, inputs, profile=profile)
    print(format_analysis(prefill))
    if loaded.task == "causal-lm":
        decode_inputs = loaded.example_inputs(1, args.seq_len, phase="decode")
        with quiet_cache_deprecation():
            decode = analyze(loaded.model, decode_inputs, profile=profile, phase="decode")
        t = decode.totals
        print(f"\none decode step after {args.seq_len} tokens: {si(t['flops'])}FLOPs, "
              f"{binary_bytes(t['memory_bytes'])} moved, roofline {seconds(t['roofline_s'])} ({t['bound']}-bound)")
    print("\nnext: `autosurgeon analyze llama-70b-shape --device h100-80gb` (any size, on the meta device)")
    return 0
