"""KV-cache benchmarks on the trained tiny-llama (byte-level, 4 layers, 2 KV heads of 64; trained on 256-byte windows).

Three measurements, each with the cache *in the loop* (teacher-forced, token-by-token decode: every position is
one ``model(input_ids=x[:, t:t+1], cache=cache)`` call, so every prediction attends to what the cache kept, in the
precision it kept it):

1. ``precision``: tokens per KV byte (read from ``kv_stats()['bytes_used']`` after decoding, not computed) and
   perplexity for float vs int8 vs fp8 storage, with the model in float32 and in bfloat16 (the 16-bit baseline).
2. ``waste``: paged waste. (a) sequences of random lengths stored without eviction: allocated-but-empty bytes
   over allocated bytes, beside a contiguous reservation of the longest length (what a static cache reserves);
   (b) a budget-bound long generation: bytes of the budget holding no token, every step once the budget is full.
3. ``streaming``: perplexity per 256-position bin over sequences 8x the trained length, for dense attention
   (no eviction), plain truncation, sinks + window (StreamingLLM, sinks re-rotated) and sinks + window with
   original positions, the last three under the same byte budget; beside them, on the same text, a fresh
   recompute at the trained length (192..256 bytes of context per scored byte), the reference "flat" is read against.

Run: ``python -m experiments.benchmarks.kvcache [precision|waste|streaming|all] --out results/kvcache.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import time
from typing import Any

import torch

from runtime.kvcache import KVCacheConfig, make_kv_cache


def load() -> tuple[torch.nn.Module, torch.Tensor]:
    from autosurgeon.models.text_corpus import build_corpus
    from autosurgeon.zoo import load_model

    model = load_model("tiny-llama").model.eval()
    heldout = build_corpus(train_bytes=0, heldout_bytes=131072, seed=0).heldout.long()
    return model, heldout


def windows(heldout: torch.Tensor, batch: int, length: int, seed: int) -> torch.Tensor:
    """``batch`` held-out sequences of ``length + 1`` bytes (inputs and next-byte targets), non-overlapping."""
    width = length + 1
    n = heldout.numel() // width
    idx = random.Random(seed).sample(range(n), batch)
    return torch.stack([heldout[i * width:(i + 1) * width] for i in idx])


@torch.inference_mode()
def decode_nll(model: torch.nn.Module, seqs: torch.Tensor, cache: Any, *, stats_every: int = 0
               ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Per-position next-token NLL ``(B, T)`` of teacher-forced token-by-token decode through ``cache``."""
    x, y = seqs[:, :-1], seqs[:, 1:]
    nll = torch.empty(x.shape, dtype=torch.float64)
    trace = []
    for t in range(x.shape[1]):
        logits = model(input_ids=x[:, t:t + 1], cache=cache, use_cache=True).logits[:, -1].float()
        nll[:, t] = torch.nn.functional.cross_entropy(logits, y[:, t], reduction="none").double()
        if stats_every and (t + 1) % stats_every == 0:
            trace.append({"t": t + 1, **cache.kv_stats()})
    return nll, trace


def ppl(nll: torch.Tensor) -> float:
    return math.exp(nll.mean().item())


def bench_precision(model: torch.nn.Module, heldout: torch.Tensor, *, batch: int, length: int) -> dict[str, Any]:
    seqs = windows(heldout, batch, length, seed=1)
    out: dict[str, Any] = {"batch": batch, "length": length, "runs": []}
    with torch.inference_mode():  # sanity: the float cache reproduces a plain full-sequence forward
        logits = model(input_ids=seqs[:, :-1]).logits.float()
        full = torch.nn.functional.cross_entropy(logits.transpose(1, 2), seqs[:, 1:], reduction="none")
    out["full_forward_ppl_fp32"] = math.exp(full.double().mean().item())
    for model_dtype in (torch.float32, torch.bfloat16):
        m = model.to(model_dtype)
        base = None
        for precision in ("float", "int8", "fp8"):
            cache = make_kv_cache(KVCacheConfig(precision=precision), m.config, device="cpu", dtype=model_dtype)
            t0 = time.perf_counter()
            nll, _ = decode_nll(m, seqs, cache)
            st = cache.kv_stats()
            row = {"model_dtype": str(model_dtype).replace("torch.", ""), "precision": precision, "ppl": ppl(nll),
                   "bytes_used": st["bytes_used"], "tokens": st["tokens_kept"],
                   "bytes_per_token": st["bytes_used"] / st["tokens_kept"], "seconds": time.perf_counter() - t0}
            if precision == "float":
                base = row
            row["tokens_per_byte_vs_float"] = base["bytes_per_token"] / row["bytes_per_token"]
            row["ppl_increase"] = row["ppl"] / base["ppl"] - 1.0
            out["runs"].append(row)
            print(json.dumps(row), flush=True)
    model.to(torch.float32)
    # Same byte budget, how many tokens does each precision keep? One budget, 512 bfloat16 tokens per layer
    # (plus one byte), over sequences long enough to fill any; "truncate" so no sink block takes a share.
    long_seqs = windows(heldout, 2, 1100, seed=4)
    out["same_budget"] = {}
    probe = make_kv_cache(KVCacheConfig(), model.config, device="cpu", dtype=torch.bfloat16)
    probe.kv_layers[0].shape = (2, model.config.num_key_value_heads, 64)
    budget = 512 * probe.kv_layers[0]._token_bytes() * model.config.num_hidden_layers + 1
    for model_dtype in (torch.float32, torch.bfloat16):
        m = model.to(model_dtype)
        kept = {}
        for precision in ("float", "int8"):
            cache = make_kv_cache(KVCacheConfig(precision=precision, budget_bytes=budget, policy="truncate"),
                                  m.config, device="cpu", dtype=model_dtype)
            _, trace = decode_nll(m, long_seqs, cache, stats_every=1)
            kept[precision] = max(s["tokens_kept"] for s in trace)
            assert all(s["bytes_used"] <= budget for s in trace)
        name = str(model_dtype).replace("torch.", "")
        out["same_budget"][name] = {"budget_bytes": budget, "max_tokens_kept": kept, "ratio": kept["int8"] / kept["float"]}
        print(json.dumps(out["same_budget"][name]), flush=True)
    model.to(torch.float32)
    return out


def bench_waste(model: torch.nn.Module, heldout: torch.Tensor, *, page_tokens: int) -> dict[str, Any]:
    cfg = model.config
    rng = random.Random(0)
    lengths = [rng.randint(64, 1024) for _ in range(200)]
    # (a) no eviction: store random-length sequences through append() directly (same code path as update()).
    rows = []
    for n in lengths:
        cache = make_kv_cache(KVCacheConfig(page_tokens=page_tokens), cfg, device="cpu", dtype=torch.float32)
        k = torch.zeros(1, cfg.num_key_value_heads, n, 64)
        for kv in cache.kv_layers:
            kv.append(k, k)
        rows.append(cache.kv_stats()["waste_fraction"])
    contiguous = [1 - n / max(lengths) for n in lengths]
    out = {"page_tokens": page_tokens, "sequences": len(lengths), "length_range": [64, 1024],
           "paged_waste_mean": sum(rows) / len(rows), "paged_waste_max": max(rows),
           "contiguous_waste_mean": sum(contiguous) / len(contiguous)}
    # (b) budget-bound generation through the model: unused budget bytes at every step once full.
    seqs = windows(heldout, 1, 768, seed=2)
    budget = 2**20  # 256 KiB a layer: 256 float32 tokens at batch 1, not a page multiple with the 4 sinks
    cache = make_kv_cache(KVCacheConfig(budget_bytes=budget, page_tokens=page_tokens), cfg, device="cpu",
                          dtype=torch.float32)
    _, trace = decode_nll(model, seqs, cache, stats_every=1)
    per_token = cache.kv_layers[0]._token_bytes()
    full = [s for s in trace if s["evictions"] > 0]
    unused = [(budget - s["tokens_kept"] * per_token * cfg.num_hidden_layers) / budget for s in full]
    internal = [s["waste_fraction"] for s in full]
    assert all(s["bytes_used"] <= budget for s in trace)
    out["budgeted"] = {"budget_bytes": budget, "steps_full": len(full), "unused_of_budget_mean": sum(unused) / len(unused),
                       "unused_of_budget_max": max(unused), "allocated_empty_mean": sum(internal) / len(internal),
                       "max_bytes_used": max(s["bytes_used"] for s in trace)}
    print(json.dumps(out), flush=True)
    return out


def bench_streaming(model: torch.nn.Module, heldout: torch.Tensor, *, batch: int, length: int, kept_tokens: int,
                    page_tokens: int = 16) -> dict[str, Any]:
    cfg = model.config
    seqs = windows(heldout, batch, length, seed=3)
    per_layer = 2 * batch * cfg.num_key_value_heads * 64 * 4 * (kept_tokens + 4)  # fp32: sinks + kept_tokens
    budget = per_layer * cfg.num_hidden_layers
    configs = {
        "dense": KVCacheConfig(),
        "truncate": KVCacheConfig(budget_bytes=budget, policy="truncate", page_tokens=page_tokens),
        "sinks-window": KVCacheConfig(budget_bytes=budget, policy="sinks-window", page_tokens=page_tokens),
        "sinks-window-keep-positions": KVCacheConfig(budget_bytes=budget, policy="sinks-window-keep-positions",
                                                     page_tokens=page_tokens),
    }
    out: dict[str, Any] = {"batch": batch, "length": length, "budget_bytes": budget, "kept_tokens_target": kept_tokens,
                           "runs": {}}
    bins = 256
    # Reference on the same text: fresh recompute at the trained length (StreamingLLM's "sliding window with
    # re-computation"), scored in strides of 64 so every scored byte sees 192..256 bytes of context.
    trained, stride = 256, 64
    nll_ref = torch.empty(seqs.shape[0], length, dtype=torch.float64)
    with torch.inference_mode():
        for s in range(0, length, stride):
            lo = max(0, s + stride - trained)
            logits = model(input_ids=seqs[:, lo:s + stride]).logits[:, -stride:].float()
            nll_ref[:, s:s + stride] = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), seqs[:, s + 1:s + stride + 1], reduction="none").double()
    ref_bins = [math.exp(nll_ref[:, i:i + bins].mean().item()) for i in range(0, length, bins)]
    out["recompute_reference"] = {"ppl_per_bin": ref_bins, "ppl": ppl(nll_ref), "context": [trained - stride, trained]}
    print("recompute", json.dumps(out["recompute_reference"]), flush=True)
    for name, kc in configs.items():
        cache = make_kv_cache(kc, cfg, device="cpu", dtype=torch.float32)
        t0 = time.perf_counter()
        nll, trace = decode_nll(model, seqs, cache, stats_every=64)
        per_bin = [math.exp(nll[:, i:i + bins].mean().item()) for i in range(0, length, bins)]
        st = cache.kv_stats()
        out["runs"][name] = {"ppl_per_bin": per_bin, "ppl": ppl(nll),
                             "ratio_to_recompute_per_bin": [a / b for a, b in zip(per_bin, ref_bins)], "max_bytes_used": max(s["bytes_used"] for s in trace),
                             "tokens_kept_end": st["tokens_kept"], "evictions": st["evictions"],
                             "seconds": time.perf_counter() - t0}
        print(name, json.dumps(out["runs"][name]), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=["precision", "waste", "streaming", "all"], default="all", nargs="?")
    parser.add_argument("--out", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--stream-batch", type=int, default=4)
    parser.add_argument("--stream-length", type=int, default=2048)
    parser.add_argument("--kept", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, heldout = load()
    result: dict[str, Any] = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                                          "torch": torch.__version__, "threads": args.threads}}
    if args.which in ("precision", "all"):
        result["precision"] = bench_precision(model, heldout, batch=args.batch, length=args.length)
    if args.which in ("waste", "all"):
        result["waste"] = bench_waste(model, heldout, page_tokens=16)
    if args.which in ("streaming", "all"):
        result["streaming"] = bench_streaming(model, heldout, batch=args.stream_batch, length=args.stream_length,
                                              kept_tokens=args.kept)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
