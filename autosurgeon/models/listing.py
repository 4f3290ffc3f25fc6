"""The zoo's table without building a model or importing torch: what ``autosurgeon zoo`` prints.

Parameter counts come from each architecture's dimensions by formula (tested equal to a meta-device
build of every entry), and metrics from the trained folder already there: the shipped one, else the cache.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from autosurgeon.models.cache import cache_root, is_complete
from autosurgeon.models.recipes import VOCAB_SIZE, DigitsRecipe, LMRecipe
from autosurgeon.models.registry import ZOO
from autosurgeon.models.shape_specs import SHAPES
from autosurgeon.models.shipped import SHIPPED_FILES, read_record, shipped_folder


@dataclass(frozen=True)
class ZooEntry:
    """One named model: what it is, how big, and (if trained: shipped or cached) how good."""

    name: str
    task: str
    description: str
    params: int
    trained: bool  # for trainable models: shipped or cached already; shapes are never trained
    metrics: dict[str, float] = field(default_factory=dict)
    kind: str = "trained"  # "trained" (small, trained on local data) or "shape" (random weights)
    path: str | None = None  # the folder of a trained model
    source: str | None = None  # "shipped" (in the package) or "cache"; None when not trained yet


def lm_params(*, hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int, vocab: int,
              experts: int = 0) -> int:
    """Parameters of an untied Llama / Mixtral causal LM (no biases; RMSNorm weights; MoE router without bias)."""
    head_dim = hidden // heads
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim  # q, o + k, v
    mlp = 3 * hidden * intermediate
    if experts:
        mlp = experts * mlp + hidden * experts  # experts + router
    return 2 * vocab * hidden + layers * (attention + mlp + 2 * hidden) + hidden


def digits_params(width: int, classes: int = 10) -> int:
    """Parameters of ``DigitsCNN(width)``: four 3x3 convs (stem, residual block, down), BN affine, the head."""
    convs = 1 * width * 9 + 2 * width * width * 9 + width * 2 * width * 9
    norms = 2 * width + 2 * 2 * width + 2 * 2 * width
    return convs + norms + 2 * width * classes + classes


def entry_params(name: str) -> int:
    """Parameter count of zoo entry ``name`` by formula."""
    recipe = ZOO[name].recipe
    if recipe is None:
        s = SHAPES[name]
        return lm_params(hidden=s.hidden_size, layers=s.num_layers, heads=s.num_heads, kv_heads=s.num_kv_heads,
                         intermediate=s.intermediate_size, vocab=s.vocab_size, experts=s.num_experts)
    if isinstance(recipe, LMRecipe):
        return lm_params(hidden=recipe.hidden_size, layers=recipe.num_layers, heads=recipe.num_heads,
                         kv_heads=recipe.num_kv_heads, intermediate=recipe.intermediate_size, vocab=VOCAB_SIZE,
                         experts=recipe.num_experts)
    assert isinstance(recipe, DigitsRecipe)  # internal invariant: two kinds of recipe
    return digits_params(recipe.width)


def cache_folder(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder of trained zoo model ``name`` (which may not exist yet)."""
    recipe = ZOO[name].recipe
    assert recipe is not None  # internal invariant: callers pass trained entries
    return cache_root(cache_dir) / "zoo" / f"{name}-{recipe.fingerprint()}"


def trained_folder(name: str, cache_dir: str | os.PathLike[str] | None = None, *,
                   verify: bool = True) -> tuple[Path, str] | None:
    """Where trained ``name`` already is, ``(folder, "shipped" | "cache")``, without training; None if nowhere."""
    recipe = ZOO[name].recipe
    assert recipe is not None  # internal invariant: callers pass trained entries
    packaged = shipped_folder(name, recipe.fingerprint(), verify=verify)
    if packaged is not None:
        return packaged, "shipped"
    folder = cache_folder(name, cache_dir)
    return (folder, "cache") if is_complete(folder, SHIPPED_FILES) else None


def read_metrics(folder: Path) -> dict[str, float]:
    """The numeric ``metrics`` of a trained folder's ``metrics.json`` (data, never code)."""
    metrics = read_record(folder).get("metrics", {})
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def list_entries(cache_dir: str | os.PathLike[str] | None = None) -> list[ZooEntry]:
    """Every zoo name with its task, description, parameter count and, if trained, metrics and folder."""
    entries = []
    for name, entry in ZOO.items():
        trained, metrics, path, source = False, {}, None, None
        if entry.recipe is not None:
            found = trained_folder(name, cache_dir, verify=False)
            if found is not None:
                trained, metrics, path, source = True, read_metrics(found[0]), str(found[0]), found[1]
        entries.append(ZooEntry(name=name, task=entry.task, description=entry.description,
                                params=entry_params(name), trained=trained, metrics=metrics,
                                kind="shape" if entry.recipe is None else "trained", path=path, source=source))
    return entries
