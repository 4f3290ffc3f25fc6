"""GPU decode through the captured step (runtime.decode_graph), measured the way ``streaming.decode`` measures eager.

Used by ``experiments.benchmarks.streaming gpu``: the resident rows (bf16 and int4, captured step vs Hugging Face
eager, interleaved rounds in one process) and the captured variants of the 3 GiB streaming rows.

Per-token time: one replay, then the token read on the host (``int(tok)`` synchronises, as the eager loop's
``.item()`` does); tok/s = 1 / median over the timed tokens after warm-up. Also the back-to-back rate: all
replays queued, CUDA events around them, no host read between tokens (what ``Session.generate`` does).
"""
from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn

from runtime.decode_graph import GraphDecoder


def hbm_copy_bandwidth(nbytes: int = 4 * 2**30, repeats: int = 10) -> float:
    """Device-to-device copy, bytes read + written per second (the anchor's 4.3 TB/s figure), median."""
    src = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    times = []
    for _ in range(repeats + 2):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    return nbytes / statistics.median(times[2:])


def graph_decode(dec: GraphDecoder, prompt: torch.Tensor, *, new_tokens: int, warmup: int) -> dict[str, Any]:
    """Like ``streaming.decode`` through ``dec``: prefill + first token, then ``new_tokens`` timed steps."""
    dev = dec.device
    t0 = time.perf_counter()
    dec.start(prompt, new_tokens + 1)  # captures on the first call for this length bucket
    torch.cuda.synchronize(dev)
    first_start_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tok = dec.start(prompt, new_tokens + 1)
    tokens = [int(tok[0, 0])]
    prefill_s = time.perf_counter() - t0
    times = []
    for _ in range(new_tokens):
        t0 = time.perf_counter()
        tok = dec.step()
        tokens.append(int(tok[0, 0]))
        times.append(time.perf_counter() - t0)
    last_logits = dec.logits[0].float().cpu()
    # back to back: every replay queued, events around them, no host read in between
    dec.start(prompt, new_tokens + 1)
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(new_tokens):
        dec.step()
    b.record()
    b.synchronize()
    steady = times[warmup:] or times
    med = statistics.median(steady)
    return {"tokens": tokens, "last_logits": last_logits, "prefill_s": prefill_s, "median_token_s": med,
            "tokens_per_s": 1.0 / med, "mean_token_s": statistics.fmean(steady), "n_timed": len(steady),
            "back_to_back_tok_s": new_tokens / (a.elapsed_time(b) / 1e3), "first_start_with_capture_s": first_start_s,
            "ops": dec.ops.name, "ops_report": getattr(dec.ops, "report", None),
            "ops_mismatch": getattr(dec.ops, "mismatch", None), "captured": dec.graph is not None,
            "streamed_bytes_per_step": dec.schedule.bytes_per_step if dec.schedule else 0}


def resident_rounds(model: nn.Module, session: Any, runs: dict[str, Any], prompt: torch.Tensor, *, new_tokens: int,
                    warmup: int, rounds: int, eager: Any) -> dict[str, dict[str, Any]]:
    """Interleaved rounds (A B C, B C A, …) of eager and captured decoders on one resident session.

    ``runs``: name -> GraphDecoder, or None for eager (``eager(model, prompt, ...)``). Returns per name the
    last round's result plus every round's tok/s.
    """
    names = list(runs)
    out: dict[str, dict[str, Any]] = {}
    per_round: dict[str, list[float]] = {n: [] for n in names}
    b2b: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            dec = runs[name]
            if dec is None:
                res = eager(model, prompt, new_tokens=new_tokens, warmup=warmup, device=session.rest_device)
            else:
                res = graph_decode(dec, prompt, new_tokens=new_tokens, warmup=warmup)
                b2b[name].append(res["back_to_back_tok_s"])
            per_round[name].append(res["tokens_per_s"])
            out[name] = res
    for name in names:
        out[name]["rounds_tok_s"] = per_round[name]
        out[name]["tokens_per_s"] = statistics.median(per_round[name])
        if b2b[name]:
            out[name]["rounds_back_to_back_tok_s"] = b2b[name]
            out[name]["back_to_back_tok_s"] = statistics.median(b2b[name])
    return out


def gemv_floor(model: nn.Module, *, fused: bool, repeats: int = 20) -> dict[str, Any]:
    """Time only the step's matrix-vector products (every linear of every layer and the head, batch 1) as one
    captured graph: the floor the rest of the step sits on. ``fused``: q/k/v and gate/up as one product each
    (concatenated copies of the weights, made here for the measurement and freed after)."""
    import torch.nn.functional as F

    dev = next(model.lm_head.parameters()).device
    h = model.config.hidden_size
    x = torch.randn(1, 1, h, dtype=torch.bfloat16, device=dev)
    xi = torch.randn(1, 1, model.config.intermediate_size, dtype=torch.bfloat16, device=dev)
    plan: list[tuple[torch.Tensor, torch.Tensor]] = []
    equal = True
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        if fused:
            qkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
            gu = torch.cat([m.gate_proj.weight, m.up_proj.weight])
            plan += [(qkv, x), (a.o_proj.weight, x), (gu, x), (m.down_proj.weight, xi)]
            if layer is model.model.layers[0]:  # are the fused products' bits the separate ones'?
                sep = torch.cat([F.linear(x, w) for w in (a.q_proj.weight, a.k_proj.weight, a.v_proj.weight)], -1)
                equal = bool(torch.equal(F.linear(x, qkv), sep))
        else:
            plan += [(a.q_proj.weight, x), (a.k_proj.weight, x), (a.v_proj.weight, x), (a.o_proj.weight, x),
                     (m.gate_proj.weight, x), (m.up_proj.weight, x), (m.down_proj.weight, xi)]
    plan.append((model.lm_head.weight, x))
    nbytes = sum(w.numel() * w.element_size() for w, _ in plan)

    def run() -> None:
        for w, inp in plan:
            F.linear(inp, w)

    side = torch.cuda.Stream(dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(side):
        run()
        run()
    torch.cuda.current_stream(dev).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    graph.replay()
    times = []
    for _ in range(repeats):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        graph.replay()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    med = statistics.median(times)
    del graph
    plan.clear()
    torch.cuda.empty_cache()
    return {"fused": fused, "products": 4 * len(model.model.layers) + 1 if fused else 7 * len(model.model.layers) + 1,
            "bytes": nbytes, "median_s": med, "min_s": min(times), "max_s": max(times), "read_Bps": nbytes / med,
            "fused_bits_equal_separate": equal if fused else None}


def fused_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with q/k/v and gate/up fused by the plan's fusion transform (``fusion=fuse`` on each
    block's groups): one product per group, the members' outputs as slices of it."""
    import copy

    from autosurgeon.transforms.configs import FuseConfig
    from autosurgeon.transforms.registry import TransformContext, transform

    fused = copy.deepcopy(model)
    ctx = TransformContext()
    for i, _ in enumerate(fused.model.layers):
        transform(fused, FuseConfig("qkv"), fqn=f"model.layers.{i}.self_attn", context=ctx)
        transform(fused, FuseConfig("gate-up"), fqn=f"model.layers.{i}.mlp", context=ctx)
    return fused


def energy_per_token(step: Any, *, device: str, min_s: float = 1.5) -> dict[str, Any]:
    """NVML energy over a window of at least ``min_s`` seconds of ``step()`` calls (each one token)."""
    from runtime.telemetry import EnergyMeter

    n = 0
    torch.cuda.synchronize(device)
    with EnergyMeter(device=device, min_window_s=1.0) as meter:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < min_s:
            step()
            n += 1
        torch.cuda.synchronize(device)
    return {"tokens": n, "seconds": meter.seconds, "joules": meter.joules, "source": meter.source,
            "j_per_token": meter.joules / n if n else None, "watts_avg": meter.watts_avg}


__all__ = ["energy_per_token", "fused_copy", "gemv_floor", "graph_decode", "hbm_copy_bandwidth", "resident_rounds"]
