"""The decode loop every claim times: greedy batch-1 decode, per-token wall time and energy over the timed steps.

Prefill, ``warmup`` untimed decode steps, then timed steps inside one :class:`runtime.telemetry.EnergyMeter`
window until at least ``tokens`` steps ran and the window lasted ``min_seconds`` (NVML's counter updates
every ~100 ms, so short windows are coarse), or ``max_tokens`` steps ran. Each step is synchronised
(``int(argmax)`` as ``generate()`` does), so its wall time includes the device's work. Tokens/s is
1 / median step time; joules per token is the window's energy over its steps.
"""
from __future__ import annotations

import math
import statistics
import time
import warnings
from typing import Any

import torch
from torch import nn

from runtime.telemetry import EnergyMeter


def decode_measured(model: nn.Module, prompt: torch.Tensor, *, device: torch.device | str, warmup: int, tokens: int,
                    min_seconds: float = 0.0, max_tokens: int | None = None, watts: float | None = None,
                    energy_device: torch.device | str | None = None) -> dict[str, Any]:
    """Greedy decode with timing and energy (module docstring).

    Args:
        model: a causal LM taking ``input_ids``/``past_key_values``/``use_cache``.
        prompt: ``(1, T)`` token ids.
        device: where the inputs go (the model's first execution device).
        warmup: untimed decode steps after the prefill.
        tokens: at least this many timed steps.
        min_seconds: keep stepping until the timed window lasted this long (up to ``max_tokens``).
        max_tokens: at most this many timed steps (default ``tokens``, i.e. no time extension).
        watts: power figure for the meter's estimate where no counter is readable (labelled "estimate").
        energy_device: the device whose energy is read (default ``device``: NVML on CUDA, else RAPL).

    Returns:
        ``tokens`` (every generated id, prefill's first), ``step_s`` (timed steps), ``median_token_s``,
        ``tokens_per_s``, ``n_timed``, ``joules``, ``j_per_token``, ``energy_source``, ``energy_seconds``,
        ``watts_avg``, ``prefill_s``, ``short_window``.
    """
    dev = torch.device(device)
    cap = max(tokens, max_tokens or tokens)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    ids: list[int] = []
    times: list[float] = []
    with torch.no_grad(), warnings.catch_warnings():
        # transformers >= 5.2x renames `past_key_values`; the GPU image's 5.17 knows only the old name.
        warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)
        sync()
        t0 = time.perf_counter()
        out = model(input_ids=prompt.to(dev), use_cache=True)
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        ids.append(int(tok))
        prefill_s = time.perf_counter() - t0
        past = out.past_key_values

        def step() -> None:
            nonlocal out, past, tok
            out = model(input_ids=tok.to(dev), past_key_values=past, use_cache=True)
            past = out.past_key_values
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            ids.append(int(tok))

        for _ in range(warmup):
            step()
        meter = _timed_window(step, times, energy_device=energy_device if energy_device is not None else dev,
                              watts=watts, tokens=tokens, cap=cap, min_seconds=min_seconds)
    med = statistics.median(times)
    joules = meter.joules if meter.joules is not None else math.nan
    return {"tokens": ids, "step_s": times, "median_token_s": med, "tokens_per_s": 1.0 / med, "n_timed": len(times),
            "mean_token_s": statistics.fmean(times), "prefill_s": prefill_s, "warmup": warmup, "joules": joules,
            "j_per_token": joules / len(times), "energy_source": meter.source, "energy_seconds": meter.seconds,
            "watts_avg": meter.watts_avg, "short_window": meter.short_window,
            "last_logits": out.logits[0, -1].float().cpu()}


def _timed_window(step: Any, times: list[float], *, energy_device: torch.device | str, watts: float | None,
                  tokens: int, cap: int, min_seconds: float) -> EnergyMeter:
    """Timed ``step()`` calls inside one energy window (module docstring), each appended to ``times``."""
    meter = EnergyMeter(device=energy_device, watts=watts, min_window_s=min(1.0, max(min_seconds, 1e-3)))
    with meter:
        start = time.perf_counter()
        while len(times) < cap and (len(times) < tokens or time.perf_counter() - start < min_seconds):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    return meter


def graph_decode_measured(decoder: Any, prompt: torch.Tensor, *, warmup: int, tokens: int, min_seconds: float = 0.0,
                          max_tokens: int | None = None, watts: float | None = None) -> dict[str, Any]:
    """:func:`decode_measured` through a captured decode step (``runtime.decode_graph.GraphDecoder``): the same
    window, synchronisation per token (``int(token)``) and keys; ``last_logits`` from the decoder's buffer.

    The static cache is sized for every step the window may take, so the graph is captured once, before timing
    (by a first, untimed start)."""
    dev = decoder.device
    cap = max(tokens, max_tokens or tokens)
    length = warmup + cap + 1
    decoder.start(prompt, length)  # captures the step for this length bucket
    torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    ids = [int(decoder.start(prompt, length)[0, 0])]
    prefill_s = time.perf_counter() - t0
    times: list[float] = []

    def step() -> None:
        ids.append(int(decoder.step()[0, 0]))

    for _ in range(warmup):
        step()
    meter = _timed_window(step, times, energy_device=dev, watts=watts, tokens=tokens, cap=cap, min_seconds=min_seconds)
    med = statistics.median(times)
    joules = meter.joules if meter.joules is not None else math.nan
    return {"tokens": ids, "step_s": times, "median_token_s": med, "tokens_per_s": 1.0 / med, "n_timed": len(times),
            "mean_token_s": statistics.fmean(times), "prefill_s": prefill_s, "warmup": warmup, "joules": joules,
            "j_per_token": joules / len(times), "energy_source": meter.source, "energy_seconds": meter.seconds,
            "watts_avg": meter.watts_avg, "short_window": meter.short_window,
            "last_logits": decoder.logits[0].float().cpu(), "decode_path": "graph"}


def same_prefix(a: list[int], b: list[int]) -> bool:
    """Whether two greedy token lists agree on their common length (runs may time different step counts)."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]
