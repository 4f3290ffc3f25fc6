"""``autosurgeon zoo``: list the model zoo, or train and cache one of its models.

    autosurgeon zoo                 # table: name, task, params, fp32 bytes, trained?, metrics
    autosurgeon zoo --json          # the same as JSON
    autosurgeon zoo train NAME      # train and cache NAME now by its recipe (also: autosurgeon zoo --train NAME)
    autosurgeon zoo train NAME --out autosurgeon/models/weights/NAME   # remake the shipped weights
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from typing import Any

from autosurgeon.errors import InvalidArgumentError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "zoo",
        help="list the model zoo, or train and cache a zoo model",
        description="List the model zoo (parameters, fp32 bytes, metrics of cached trained models), or train "
        "and cache one model. Trained models live under $AUTOSURGEON_CACHE or ~/.cache/autosurgeon.",
    )
    parser.add_argument("action", nargs="?", choices=("list", "train"), default="list",
                        help="list (default) or train")
    parser.add_argument("name", nargs="?", help="the zoo model to train (with `train`)")
    parser.add_argument("--train", dest="train_name", metavar="NAME",
                        help="train and cache NAME (same as `train NAME`)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="with `train`: write shippable weights to DIR (re-measured; how the weights under "
                        "autosurgeon/models/weights/ are made) instead of the cache")
    parser.add_argument("--weights-dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"),
                        help="with `train --out`: storage dtype, kept only if the metric stays within 1%% "
                        "(default bfloat16)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--cache-dir", default=None,
                        help="cache folder (default $AUTOSURGEON_CACHE or ~/.cache/autosurgeon)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Listing imports neither torch nor transformers and builds nothing (autosurgeon.models.listing);
    # only `train` loads the zoo proper.
    from autosurgeon.models import listing
    from autosurgeon.models.registry import ZOO

    name = args.train_name or (args.name if args.action == "train" else None)
    if args.action == "train" and not name:
        trainable = [n for n, e in ZOO.items() if e.recipe is not None]
        raise InvalidArgumentError(f"`zoo train` needs a NAME; trainable names: {', '.join(trainable)}.")
    if args.action == "list" and args.name:
        raise InvalidArgumentError(
            f"unexpected argument {args.name!r}; did you mean `autosurgeon zoo train {args.name}`?"
        )
    if args.out and not name:
        raise InvalidArgumentError("`--out` goes with `zoo train NAME`; to list the zoo, leave it out.")
    if name:
        from autosurgeon import zoo

        return _train(zoo, name, args)
    entries = listing.list_entries(args.cache_dir)
    if args.json:
        rows = [dict(asdict(e), bytes_fp32=4 * e.params) for e in entries]
        print(json.dumps(rows, indent=2))
        return 0
    print(_table(entries))
    return 0


def _trainable(zoo: Any) -> list[str]:
    return zoo.trainable_names()


def _train(zoo: Any, name: str, args: argparse.Namespace) -> int:
    if name not in zoo.model_names():
        raise InvalidArgumentError(f"unknown zoo name {name!r}; trainable names: {', '.join(_trainable(zoo))}.")
    if name not in _trainable(zoo):
        raise InvalidArgumentError(f"{name!r} is an architecture shape with random weights: nothing to train; "
                                   "trainable names: "
                                   f"{', '.join(_trainable(zoo))}.")
    if args.out is not None:  # before minutes of training: one line for '', a file, an unwritable parent
        from autosurgeon.files.runfolder import check_out_path

        check_out_path(args.out, argument="--out")
    _show_progress()
    started = time.perf_counter()
    if args.out:
        folder = zoo.train_to(name, args.out, dtype=args.weights_dtype)
    else:
        cached = (zoo.cache_folder(name, cache_dir=args.cache_dir) / "metrics.json").is_file()
        if cached and not args.json:
            print(f"{name}: already cached (delete the folder below to train it again)")
        folder = zoo.ensure_trained(name, cache_dir=args.cache_dir, shipped=False)
    wall = time.perf_counter() - started
    metrics = json.loads((folder / "metrics.json").read_text())["metrics"]
    if args.json:
        print(json.dumps({"name": name, "path": str(folder), "wall_seconds": wall, "metrics": metrics}, indent=2))
    else:
        print(f"{name}: {folder} ({wall:.1f} s wall)")
        print(f"  {_metrics_text(metrics)}")
    return 0


def _show_progress() -> None:
    # Training takes minutes; its step log (every 50 steps) is the progress the user sees on stderr.
    import logging

    from autosurgeon._logging import LIBRARY_LOGGER

    logger = logging.getLogger(LIBRARY_LOGGER)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # unreachable; keeps type checkers content


def _human_count(n: int) -> str:
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{suffix}"
    return str(n)


def _metrics_text(metrics: dict[str, float]) -> str:
    parts = []
    if "perplexity" in metrics:
        parts.append(f"ppl {metrics['perplexity']:.2f} (unigram {metrics.get('unigram_perplexity', float('nan')):.2f})")
    if "accuracy" in metrics:
        parts.append(f"acc {metrics['accuracy']:.4f}")
    if "train_seconds" in metrics:
        parts.append(f"train {metrics['train_seconds']:.0f} s")
    return ", ".join(parts)


def _table(entries: list[Any]) -> str:
    header = ("NAME", "TASK", "PARAMS", "FP32", "STATUS", "METRICS")
    rows = []
    for e in entries:
        status = "shape" if e.kind == "shape" else (e.source if e.trained else "not trained")
        rows.append((e.name, e.task, _human_count(e.params), _human_bytes(4 * e.params), status,
                     _metrics_text(e.metrics)))
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in (header, *rows)]
    return "\n".join(lines)
