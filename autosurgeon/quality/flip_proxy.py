"""A classifier's quality proxy in the measured metric's own units: expected top-1 flips from margin noise.

A classifier's quality is measured as top-1 accuracy (or, without labels, agreement with the unmodified model),
but the per-unit sensitivity is a KL of class distributions. The two are not on one scale: a model near chance
(a randomly initialised ViT; session 6's unseen-vit) has almost flat class distributions, so quantization moves
its KL by 1e-4 nats while it flips half of its top-1 decisions, whose margins are tiny. So the proxy keeps, per
calibration image, the reference's top-1 margins against the other classes (log-probability gaps, the K
smallest), and per (unit, precision) the mean square change those margins take with only that unit changed
(``margin_mse``). A plan's margin noise is the sum over its units (independent rounding noise: variances add,
HAWQ-style additivity), and a reference-correct image loses its decision with probability
``1 - prod_c Phi(m_c / sigma)`` (each competitor's margin against Gaussian noise of that variance, taken as
independent). The expected accuracy loss is the mean of that over the images (images the reference gets wrong
count 0: a flip rarely lands on the true class), in accuracy points, as the runtime's quality loss is.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

MARGINS_KEPT = 8  # competitor margins kept per image: the farther ones flip with negligible probability


def reference_margins(ref_logp: torch.Tensor, k: int = MARGINS_KEPT) -> tuple[torch.Tensor, torch.Tensor]:
    """``(top-1 index (N,), the k smallest margins to the other classes (N, k))`` of reference log-probs (N, C)."""
    top = ref_logp.argmax(dim=-1)
    margins = ref_logp.gather(-1, top[:, None]) - ref_logp  # (N, C), 0 at the top class
    margins = margins.scatter(-1, top[:, None], float("inf"))
    k = min(k, ref_logp.shape[-1] - 1)
    return top, margins.topk(k, dim=-1, largest=False).values


def margin_change_sq(ref_logp: torch.Tensor, logp: torch.Tensor) -> tuple[float, int]:
    """``(sum of squared changes of every top-1-vs-other margin, count)``: the candidate ``logp`` against the
    reference's, both (N, C), margins taken against the REFERENCE's top class."""
    top = ref_logp.argmax(dim=-1)
    ref_m = ref_logp.gather(-1, top[:, None]) - ref_logp
    new_m = logp.gather(-1, top[:, None]) - logp
    d = (new_m - ref_m).double()
    d = d.scatter(-1, top[:, None], 0.0)
    return float((d * d).sum()), int(d.numel() - d.shape[0])


def expected_flip_loss(margins: Sequence[Sequence[float]], correct: Sequence[bool], noise_var: float) -> float:
    """Expected accuracy loss (a fraction of the images) under margin noise of variance ``noise_var``."""
    if noise_var <= 0 or not margins:
        return 0.0
    sigma = math.sqrt(noise_var)
    lost = 0.0
    for row, ok in zip(margins, correct):
        if not ok:
            continue
        keep = 1.0
        for m in row:
            keep *= 0.5 * (1.0 + math.erf(m / (sigma * math.sqrt(2.0))))
        lost += 1.0 - keep
    return lost / len(margins)


__all__ = ["MARGINS_KEPT", "expected_flip_loss", "margin_change_sq", "reference_margins"]
