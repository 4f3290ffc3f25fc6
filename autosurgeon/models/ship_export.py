"""Turn a freshly trained zoo folder into a shippable one: smaller weights, re-measured, fingerprinted.

``export_folder`` stores the floating weights in ``dtype`` (bfloat16 halves the package), loads them back
as float32 and measures the recipe's metric again on the stored weights (held-out perplexity, or test
accuracy). It keeps the smaller dtype only if that metric stays within ``tolerance`` of float32's, and
records both figures, the decision and the weights' sha256 in ``metrics.json``.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch

from autosurgeon._logging import get_logger
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.models.digits import (
    DigitsRecipe,
    accuracy,
    load_digits_dir,
    load_split,
)
from autosurgeon.models.hf_dir import load_hf_dir
from autosurgeon.models.shipped import SHIPPED_FILES, file_sha256, read_record
from autosurgeon.models.text_corpus import build_corpus, heldout_windows
from autosurgeon.models.train_lm import LMRecipe, heldout_perplexity

logger = get_logger(__name__)

EXPORT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def measure_folder(folder: Path, recipe: LMRecipe | DigitsRecipe) -> tuple[str, float]:
    """The recipe's headline metric on the weights in ``folder``, loaded as float32: ``(name, value)``."""
    if isinstance(recipe, DigitsRecipe):
        _, _, x_test, y_test = load_split(recipe)
        return "accuracy", accuracy(load_digits_dir(folder, dtype=torch.float32), x_test, y_test)

    corpus = build_corpus(train_bytes=0, heldout_bytes=recipe.heldout_bytes, seed=recipe.seed)
    model, _ = load_hf_dir(folder, dtype=torch.float32)
    previous = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        return "perplexity", heldout_perplexity(model, heldout_windows(corpus.heldout, recipe.seq_len))
    finally:
        torch.set_num_threads(previous)


def _relative_loss(metric: str, reference: float, value: float) -> float:
    # Positive = worse. Perplexity: relative increase; accuracy: points lost.
    if metric == "perplexity":
        return value / reference - 1.0
    return reference - value


def export_folder(
    src: Path, dst: Path, recipe: LMRecipe | DigitsRecipe, *, dtype: str = "bfloat16", tolerance: float = 0.01
) -> dict[str, Any]:
    """Write ``src`` (a trained folder) to ``dst`` with weights in ``dtype`` if the metric holds; return the record.

    Args:
        src: a folder ``train_lm`` / ``train_digits`` wrote (float32).
        dst: the folder to write (created; its three files are replaced).
        recipe: the recipe that trained ``src`` (for the held-out data of the re-measurement).
        dtype: ``"bfloat16"``, ``"float16"`` or ``"float32"``.
        tolerance: largest accepted loss from storing in ``dtype`` (relative perplexity increase, or
            accuracy points); beyond it the weights stay float32 and the record says why.
    """
    if dtype not in EXPORT_DTYPES:
        raise InvalidArgumentError(f"`dtype` must be one of {', '.join(EXPORT_DTYPES)}, got {dtype!r}.")
    from safetensors.torch import load_file, save_file

    record = read_record(src)
    if not record:
        raise InvalidArgumentError(f"`src` {str(src)!r} has no metrics.json; pass a folder a zoo recipe trained.")
    dst.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED_FILES:
        shutil.copyfile(src / name, dst / name)
    metric, reference = measure_folder(src, recipe)
    chosen, value, small_value = "float32", reference, None
    if dtype != "float32":
        state = load_file(str(src / "model.safetensors"))
        small = {k: (v.to(EXPORT_DTYPES[dtype]) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
        save_file(small, str(dst / "model.safetensors"), metadata={"format": "pt"})
        _, small_value = measure_folder(dst, recipe)
        loss = _relative_loss(metric, reference, small_value)
        if loss <= tolerance and math.isfinite(small_value):
            chosen, value = dtype, small_value
        else:
            logger.warning("%s weights lose %.4f on %s (> %.4f): shipping float32", dtype, loss, metric, tolerance)
            shutil.copyfile(src / "model.safetensors", dst / "model.safetensors")
    record["metrics"][metric] = value
    record["shipped"] = {
        "weights_dtype": chosen,
        "sha256": file_sha256(dst / "model.safetensors"),
        "bytes": (dst / "model.safetensors").stat().st_size,
        f"{metric}_float32": reference,
        f"{metric}_{dtype}": small_value,
        "tolerance": tolerance,
        "method": f"{metric} re-measured on the stored weights loaded as float32 (same held-out data as training)",
    }
    (dst / "metrics.json").write_text(json.dumps(record, indent=2, sort_keys=True))
    logger.info("exported %s: %s weights, %s %.4f (float32 %.4f)", dst.name, chosen, metric, value, reference)
    return record
