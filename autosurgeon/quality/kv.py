"""Quality loss of a session's KV cache: teacher-forced decoding through the paged cache vs Hugging Face's.

``QualityEvaluator`` scores a model by full forward passes, which never touch a KV cache, so int8/fp8 KV
and eviction (window, budget) would score as lossless. Here held-out windows (the corpus split the zoo LMs
are scored on) are decoded the way generation runs: a prefill of ``prefix`` tokens, then one token per
step against the cache, scoring each next token. The same model is decoded twice — through the session's
paged cache (``Session.open_kv_cache``) and through Hugging Face's own float cache — so the ratio isolates
what the KV decisions cost::

    kv_loss = exp(mean NLL through the paged cache - mean NLL through HF's cache) - 1

(0.01 = 1 % higher perplexity). Weight surgery affects both runs alike and is scored apart
(``QualityEvaluator``); the two combine as ``(1 + weights) (1 + kv) - 1``.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from autosurgeon.cost.profiled import _cache_kw
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.quality.measure import lm_heldout_windows


@torch.no_grad()
def _decode_nll(forward: Any, cache_kw: str, windows: torch.Tensor, prefix: int, cache: Any) -> float:
    """Mean next-token NLL of positions ``prefix .. T`` of ``windows`` (N, T + 1), decoding step by step."""
    ids, targets = windows[:, :-1], windows[:, 1:]
    kwargs = {"use_cache": True}
    if cache is not None:
        kwargs[cache_kw] = cache
    out = forward(input_ids=ids[:, :prefix], **kwargs)
    past = cache if cache is not None else (getattr(out, "cache", None) or getattr(out, "past_key_values", None))
    logits = [out.logits[:, -1:].float()]
    for t in range(prefix, ids.shape[1]):
        out = forward(input_ids=ids[:, t:t + 1], use_cache=True, **{cache_kw: past})
        logits.append(out.logits[:, -1:].float())
    scored = torch.cat(logits, dim=1)  # (N, T - prefix + 1, vocab): predictions of tokens prefix .. T
    nll = F.cross_entropy(scored.reshape(-1, scored.shape[-1]), targets[:, prefix - 1:].reshape(-1))
    return float(nll)


def kv_quality_loss(session: Any, *, samples: int = 4, seq_len: int = 64, prefix: int = 16,
                    windows: torch.Tensor | None = None, kv_batch: int = 1,
                    reference_nll: float | None = None) -> dict[str, float]:
    """``{"kv_quality_loss", "nll_paged", "nll_reference", "tokens"}`` of ``session``'s KV cache (module
    docstring); ``session`` is a ``runtime.Session`` built with ``kv=`` (``apply_plan`` of a plan with KV
    decisions). ``windows``: (N, seq_len + 1) token ids (default: ``samples`` held-out byte windows),
    decoded as one batch; the cache's byte budget, made for ``kv_batch`` sequences, is scaled to N so each
    sequence keeps what it would alone. ``reference_nll``: the ``nll_reference`` of an earlier call on the
    same model, windows and prefix (the HF-cache decode does not depend on the session's KV decisions, so a
    caller scoring several of them — ``sensitivity_kv`` — decodes it once)."""
    import dataclasses


    if session.kv_config is None:
        raise InvalidArgumentError("kv_quality_loss needs a Session with a paged KV cache (`kv=`); this one uses "
                                   "Hugging Face's own.")
    if not 1 <= prefix < seq_len:
        raise InvalidArgumentError(f"`prefix` must be in [1, seq_len), got prefix={prefix}, seq_len={seq_len}.")
    if windows is None:

        windows = lm_heldout_windows(seq_len=seq_len, max_windows=samples)
    kw = _cache_kw(session.model)
    config = session.kv_config
    if config.budget_bytes is not None:  # the same budget per sequence
        session.kv_config = dataclasses.replace(config, budget_bytes=config.budget_bytes * windows.shape[0] // kv_batch)
    try:
        paged = _decode_nll(session.forward, kw, windows, prefix, session.open_kv_cache())
    finally:
        session.close_kv_cache()  # give the cache's pages back now
        session.kv_config = config
    reference = (_decode_nll(session.forward, kw, windows, prefix, None) if reference_nll is None
                 else float(reference_nll))
    return {"kv_quality_loss": math.expm1(paged - reference), "nll_paged": paged, "nll_reference": reference,
            "tokens": int(windows[:, prefix:].numel())}


__all__ = ["kv_quality_loss"]
