"""``autosurgeon run`` for encoders and classifiers: one forward pass, timed, with memory and energy.

Causal LMs generate (``run.py``); a feature extractor reports its embeddings' shape and norm, an image
classifier its top class scores, each with the same speed / memory / energy report. Models with a block
list run on the runtime Session within the budgets; models without one (a small CNN) run as they are,
and the report says so.
"""
from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from autosurgeon.errors import InvalidArgumentError

if TYPE_CHECKING:  # annotations only
    from autosurgeon.zoo import LoadedModel

MIN_WINDOW_S = 1.0  # energy counters resolve windows of about a second: repeat the forward that long
MAX_REPEATS = 1000


def forward_inputs(loaded: LoadedModel, ids: Any | None) -> dict[str, Any]:
    """The forward's keyword arguments: token ids for encoders, a seeded example image for classifiers."""
    if loaded.task == "feature-extraction":
        if ids is None:
            raise InvalidArgumentError(f"{loaded.name!r} is an encoder: give --prompt text or --prompt-ids.")
        import torch

        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if loaded.task == "image-classification":
        return loaded.example_inputs(batch=1)
    raise InvalidArgumentError(f"`autosurgeon run` does not know {loaded.name!r}'s inputs (task {loaded.task!r}); have "
                               f"its factory return a LoadedModel with task='image-classification' and image_shape, "
                               f"or use a causal LM or an encoder directory.")


def run_forward(loaded: LoadedModel, inputs: dict[str, Any], *, session: Any | None, watts: float | None,
                device: str) -> dict[str, Any]:
    """Warm up once, then repeat the forward for at least ``MIN_WINDOW_S``; return the output summary and report."""
    import torch

    from runtime.streaming import move_to
    from runtime.telemetry import EnergyMeter, PeakTracker

    def once() -> Any:
        if session is not None:
            return session.forward(**inputs)
        with torch.no_grad():
            return loaded.model(**move_to(inputs, torch.device(device)))

    out = once()  # warm-up: first calls of a shape can include kernel selection
    repeats, times = 0, []
    meter, tracker = EnergyMeter(device=device, watts=watts), PeakTracker()
    with meter, tracker:
        started = time.perf_counter()
        while repeats < MAX_REPEATS and (repeats < 3 or time.perf_counter() - started < MIN_WINDOW_S):
            t0 = time.perf_counter()
            out = once()
            if device.startswith("cuda"):
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
            repeats += 1
    times.sort()
    energy = meter.joules / repeats if math.isfinite(meter.joules) else None
    report = {"latency_s": times[len(times) // 2], "latency_min_s": times[0], "latency_max_s": times[-1],
              "repeats": repeats, "energy_j_per_forward": energy, "energy_source": meter.source,
              "energy_window_s": meter.seconds, "peak_rss_bytes": getattr(tracker, "peak_rss_bytes", None)}
    return {**summarise(loaded, out), **report}


def summarise(loaded: LoadedModel, out: Any) -> dict[str, Any]:
    """Embeddings: shape and mean L2 norm per position; classifier: top-5 (class, probability)."""
    import torch

    if loaded.task == "image-classification":
        logits = out if isinstance(out, torch.Tensor) else out.logits
        probs = torch.softmax(logits.float(), dim=-1)[0]
        top = torch.topk(probs, k=min(5, probs.numel()))
        return {"output": "class_scores", "top_classes": [[int(i), float(p)] for p, i in zip(top.values, top.indices)]}
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    norms = hidden.float().norm(dim=-1)
    return {"output": "embeddings", "shape": list(hidden.shape), "mean_norm": float(norms.mean()),
            "min_norm": float(norms.min()), "max_norm": float(norms.max())}
