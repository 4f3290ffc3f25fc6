"""Images for a classifier outside the zoo: seeded inputs at its own shape, labelled by the unmodified model.

A Hugging Face image classifier (``*ForImageClassification``) comes without data the project owns, so its
quality (and its sensitivity calibration) is measured as agreement with the unmodified model: uniform
[0, 1) pixels at the model's ``(C, H, W)`` from a seeded generator, each labelled with the unmodified
model's top-1 class. "Accuracy" on them is top-1 agreement; the unmodified model scores 1 by construction,
so the figure says how often a plan changes the decision, not how good the decision is.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from autosurgeon.errors import InvalidArgumentError

if TYPE_CHECKING:  # annotations only
    from autosurgeon.zoo import LoadedModel

SOURCE = "seeded random images at the model's shape, labelled by the unmodified model (top-1 agreement)"


def is_foreign_classifier(loaded: LoadedModel) -> bool:
    """A classifier whose inputs are not the zoo digits' (another shape or input name, e.g. ``pixel_values``)."""
    return (getattr(loaded, "task", None) == "image-classification" and getattr(loaded, "source", None) != "zoo"
            and getattr(loaded, "input_name", "x") != "x" and getattr(loaded, "image_shape", None) is not None)


def model_images(loaded: LoadedModel, *, n_samples: int, seed: int, batch_size: int = 16) -> tuple[torch.Tensor,
                 torch.Tensor]:
    """``(x (N, C, H, W), y (N,))``: seeded images at the model's shape and the unmodified model's top-1 labels."""
    if n_samples < 1:
        raise InvalidArgumentError(f"`--quality-samples` must be >= 1, got {n_samples}.")
    shape = tuple(loaded.image_shape)
    model = loaded.model
    first = next(model.parameters())
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((n_samples, *shape), generator=generator).to(first.dtype)
    labels = []
    with torch.no_grad():
        for start in range(0, n_samples, batch_size):
            out = model(x[start:start + batch_size].to(first.device))
            logits = getattr(out, "logits", out)
            labels.append(logits.argmax(dim=-1).cpu())
    return x, torch.cat(labels)


__all__ = ["SOURCE", "is_foreign_classifier", "model_images"]
