"""The quality flags every command spells one way: ``--data``, ``--quality-samples``, ``--quality-method``."""
from __future__ import annotations

import argparse
from typing import Any

from autosurgeon.quality.methods import METHODS


def add_quality_arguments(parser: Any, *, default_samples: int | None = None, default_method: str | None = "auto") -> None:
    """Add the three quality flags to ``parser`` (an argparse parser or group); ``default_method=None`` leaves
    an unset ``--quality-method`` as None (a sweep then keeps its config's method, else "auto")."""
    group = parser.add_argument_group("quality") if hasattr(parser, "add_argument_group") else parser
    group.add_argument("--data", default=None, metavar="FILE",
                       help="score perplexity on this file (UTF-8 text, encoded with the model's tokenizer or as "
                            "bytes; or token ids as .json / .ids); default: fidelity to the unmodified model")
    group.add_argument("--quality-samples", type=int, default=default_samples, metavar="N",
                       help="sequences / windows / items / images scored for quality"
                            + (f" (default {default_samples})" if default_samples else " (default: per method)"))
    group.add_argument("--quality-method", choices=METHODS, default=default_method,
                       help="causal LMs: auto (perplexity with --data or for zoo LMs, else fidelity: KL + top-1 "
                            "agreement vs the unmodified model in its own vocabulary), fidelity, perplexity")


def quality_settings(args: argparse.Namespace) -> Any:
    """The :class:`QualitySettings` of parsed ``args`` (validated: one-line errors naming the flag)."""
    from autosurgeon.quality.settings import QualitySettings

    return QualitySettings(data=getattr(args, "data", None), samples=getattr(args, "quality_samples", None),
                           method=getattr(args, "quality_method", None) or "auto")
