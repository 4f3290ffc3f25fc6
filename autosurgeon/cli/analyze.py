"""``autosurgeon analyze MODEL``: per-block (or per-leaf) FLOPs, bytes, intensity and roofline on a device.

The model is built on the meta device (analysis needs shapes, not weights), so even a 70B-parameter
architecture analyses in about a second without reading or training anything. The device defaults to
``local``: this machine's cached profile, measured quickly (seconds) on first use; ``--device none``
skips the roofline columns.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import warnings

from autosurgeon.errors import InvalidArgumentError

# Plain names here (torch and the analysis are imported by `run`): `autosurgeon --help` imports no torch.
# tests/autosurgeon/cli/test_help.py checks these equal the analysis's PHASES and real torch dtypes.
PHASES = ("prefill", "decode")
DTYPES = ("float32", "bfloat16", "float16")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="per-layer FLOPs, bytes, arithmetic intensity and roofline bound of a model on a device",
        description="Analyse MODEL (a zoo name, a Hugging Face model directory, or package.module:factory) "
        "on the meta device: FLOPs, weight and activation bytes, arithmetic intensity, parallelism and "
        "roofline time per unit on a device profile. Shows the blocks (plus embedding, head and other "
        "units outside the blocks) by default; --leaves shows every linear, conv, norm, attention core, "
        "MoE router and expert bank.",
    )
    parser.add_argument("model", metavar="MODEL", help="zoo name, model directory, or package.module:factory")
    parser.add_argument(
        "--device",
        default="local",
        metavar="PROFILE",
        help="'local' (default: this machine, measured quickly on first use and cached), a preset name, "
        "a profile .json, or 'none' for no roofline",
    )
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    parser.add_argument(
        "--seq-len", type=int, default=128, help="prompt length for prefill, cached context for decode (default 128)"
    )
    parser.add_argument("--phase", choices=PHASES, default="prefill", help="prefill (default) or one decode step")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="weight dtype (default: the model's)")
    parser.add_argument("--json", action="store_true", help="print the analysis as JSON (schema_version 1)")
    parser.add_argument("--leaves", action="store_true", help="one row per leaf instead of per block")
    parser.set_defaults(func=run)


def check_sizes(batch: int, seq_len: int) -> None:
    if batch < 1:
        raise InvalidArgumentError(f"`--batch` must be >= 1, got {batch}.")
    if seq_len < 1:
        raise InvalidArgumentError(f"`--seq-len` must be >= 1, got {seq_len}.")


def resolve_device(device: str):
    """The profile for ``--device`` (None for 'none'); says so on stderr before measuring this machine."""
    import autosurgeon.hardware.resolve as hardware
    if device == "none":
        return None
    if device == "local" and not hardware.profile_cache_path(hardware.local_fingerprint()).is_file():
        print("measuring this machine (quick, once; cached afterwards) ...", file=sys.stderr)
    return hardware.resolve_profile(device, quick=True)


@contextlib.contextmanager
def quiet_cache_deprecation():
    """Hides transformers' notice that ``past_key_values`` is being renamed ``cache``: it is about the
    input's keyword, not the user's model, and would otherwise precede every decode table."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*past_key_values.*deprecated", category=FutureWarning)
        yield


def run(args: argparse.Namespace) -> int:
    import torch

    from autosurgeon.analysis.model_analysis import analyze
    from autosurgeon.analysis.tables import format_analysis
    from autosurgeon.zoo import load_model

    check_sizes(args.batch, args.seq_len)
    # The model first: a bad MODEL fails at once, before this machine is measured on first use.
    loaded = load_model(args.model, device="meta", dtype=getattr(torch, args.dtype) if args.dtype else None)
    inputs = loaded.example_inputs(args.batch, args.seq_len, phase=args.phase)
    profile = resolve_device(args.device)
    with quiet_cache_deprecation():
        result = analyze(loaded.model, inputs, profile=profile, phase=args.phase)
    if args.json:
        print(result.to_json())
    else:
        print(f"{loaded.name}: ", end="")
        print(format_analysis(result, leaves=args.leaves))
    return 0
