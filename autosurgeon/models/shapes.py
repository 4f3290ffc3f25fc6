"""Large architectures by shape only: Llama-2-7B, a 16-layer 7B (the streaming benchmark), Llama-2-70B, Mixtral-8x7B.

They have random weights (or none, on ``device="meta"``), so they serve analysis, cost models and
latency/memory benchmarks, never quality. On a real device they allocate every byte: ``build_shape``
refuses up front when that does not fit, naming the size and suggesting ``device="meta"``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from autosurgeon.errors import InvalidArgumentError
from autosurgeon.models.shape_specs import SHAPES, ShapeSpec  # noqa: F401  (re-exported)


def _free_bytes(device: torch.device) -> int | None:
    """Bytes free for new tensors on ``device`` (None when unknown: the build then just tries)."""
    if device.type == "cpu":
        import psutil

        return int(psutil.virtual_memory().available)
    if device.type == "cuda":  # asked only when the caller chose a CUDA device
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    return None


def meta_build_kwargs(config: Any) -> dict[str, Any]:
    """Extra ``from_config`` arguments so a meta-device model can run forward (for shape analysis).

    Mixture-of-experts layers default to ``grouped_mm``, whose meta kernel accepts only bfloat16, or to
    ``eager``, which routes with data-dependent ``nonzero``; ``batched_mm`` runs on meta in any dtype.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text, "num_local_experts", 0) or getattr(text, "num_experts", 0):
        return {"experts_implementation": "batched_mm"}
    return {}


def build_config_model(
    config: Any, *, device: str | torch.device, dtype: torch.dtype | None, name: str, seed: int = 0
) -> nn.Module:
    """Build a causal LM from a Hugging Face config on ``device`` (random weights from ``seed``; none on meta).

    On a real device every weight is allocated and initialised: the 16-layer 7B shape is 14 GB in float32,
    the 70B shape 276 GB.

    Raises:
        InvalidArgumentError: the weights would not fit in the device's free memory.
    """
    from transformers import AutoModelForCausalLM

    device = torch.device(device)
    dtype = dtype or torch.float32
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, dtype=dtype, **meta_build_kwargs(config))
    if device.type == "meta":
        return skeleton.eval()
    need = sum(p.numel() * p.element_size() for p in skeleton.parameters())
    free = _free_bytes(device)
    if free is not None and need > free:
        raise InvalidArgumentError(
            f"{name} on device={str(device)!r} in {dtype} needs {need / 2**30:.1f} GiB of weights but only "
            f"{free / 2**30:.1f} GiB is free; use device=\"meta\" to analyse it without weights, or a smaller dtype."
        )
    del skeleton
    # Seeded, without disturbing the caller's CPU generator: the same shape gets the same random weights.
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def build_shape(name: str, *, device: str | torch.device = "meta", dtype: torch.dtype | None = None) -> nn.Module:
    """Build the shape model ``name`` (a key of ``SHAPES``); see ``build_config_model``."""
    return build_config_model(SHAPES[name].hf_config(), device=device, dtype=dtype, name=name)
