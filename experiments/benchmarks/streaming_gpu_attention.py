"""Decode attention and the step's argmax on a GPU: which kernels a captured step could use, and how fast (issue 16).

Shapes of ``streaming gpu`` (batch 1, 32 heads, head_dim 128, a static cache of 128 positions, 61 filled). Each
candidate is captured 16 times in one CUDA graph (a step's worth) and the replay timed with CUDA events (median
of 20 replays); its output is compared bit for bit with Hugging Face's decode call, ``F.scaled_dot_product_attention``
on the filled positions with no mask (what the model's eager forward runs at batch 1 without padding):

- ``sdpa + mask``: the step's call today (the whole static cache, a -inf mask on the empty positions);
- ``flash, seqused_k``: ``aten._flash_attention_forward`` (varlen) over the static cache with the filled length
  read on the device (capturable; no mask);
- ``sdpa, sliced``: Hugging Face's call itself (its length is a host value, so it cannot be captured for a
  moving position: the time only).

And the step's greedy token: ``argmax`` over 32000 bf16 logits.

Run: ``python -m experiments.benchmarks.streaming_gpu_attention`` (on a CUDA GPU; seconds).
"""
from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F


def graph_time(fn: Callable[[], Any], calls: int = 16, replays: int = 20) -> float:
    """Median seconds per call of ``calls`` calls of ``fn`` captured in one graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3 / calls)
    return statistics.median(times)


def main() -> int:
    dev = torch.device("cuda:0")
    heads, dim, length, filled = 32, 128, 128, 61
    gen = torch.Generator(device=dev).manual_seed(0)
    res: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "rows": {}}
    q = torch.randn(1, heads, 1, dim, generator=gen, device=dev).bfloat16()
    kc = torch.randn(1, heads, length, dim, generator=gen, device=dev).bfloat16()
    vc = torch.randn(1, heads, length, dim, generator=gen, device=dev).bfloat16()
    kc[:, :, filled:] = 0
    vc[:, :, filled:] = 0
    scale = dim ** -0.5
    mask = torch.zeros(1, 1, 1, length, dtype=torch.bfloat16, device=dev)
    mask[..., filled:] = float("-inf")
    ref = F.scaled_dot_product_attention(q, kc[:, :, :filled], vc[:, :, :filled], scale=scale)
    used = torch.tensor([filled], dtype=torch.int32, device=dev)
    cu_q = torch.tensor([0, 1], dtype=torch.int32, device=dev)
    cu_k = torch.tensor([0, length], dtype=torch.int32, device=dev)
    k_rows, v_rows = kc[0].transpose(0, 1), vc[0].transpose(0, 1)  # (L, H, D) views of the (H, L, D) cache

    def masked() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, kc, vc, attn_mask=mask, scale=scale)

    def flash_used() -> torch.Tensor:
        out = torch.ops.aten._flash_attention_forward(
            q[0].transpose(0, 1), k_rows, v_rows, cu_q, cu_k, 1, length, 0.0, False, False, scale=scale,
            seqused_k=used)[0]
        return out.transpose(0, 1)[None]  # (1, H, 1, D)

    def sliced() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, kc[:, :, :filled], vc[:, :, :filled], scale=scale)

    for name, fn in (("sdpa + mask (the step today)", masked), ("flash, seqused_k", flash_used),
                     ("sdpa, sliced (Hugging Face's call)", sliced)):
        try:
            out = fn()
            row = {"bits_equal_hf": bool(torch.equal(out, ref)),
                   "max_abs_vs_hf": float((out.float() - ref.float()).abs().max()), "s_per_call": graph_time(fn)}
        except Exception as exc:  # noqa: BLE001 - a candidate this build lacks is reported, not fatal
            row = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        if "error" not in row:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                fn()
                torch.cuda.synchronize()
            row["kernels"] = sorted({e.name[:80] for e in prof.events()
                                     if e.device_type == torch.autograd.DeviceType.CUDA})
        res["rows"][name] = row
        print(name, row, flush=True)
    logits = torch.randn(1, 32000, generator=gen, device=dev).bfloat16()
    res["argmax_s"] = graph_time(lambda: logits.argmax(-1, keepdim=True))
    print("argmax", res["argmax_s"], flush=True)
    json.dump(res, sys.stdout if len(sys.argv) < 2 else open(sys.argv[1], "w"), indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
