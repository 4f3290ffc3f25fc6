"""Streaming decode benchmark: Jalapeño's Session vs Hugging Face accelerate offload, side by side.

Two settings (ANCHORS.md):

* ``gpu``: Llama architecture, hidden 4096, 16 layers, vocab 32000, bf16 (~7.0 GB), batch 1 decode. First every
  weight on the GPU: Hugging Face eager (the token reference) against our captured decode step
  (``runtime.decode_graph``: the Session's default ``GraphDecoder(session)`` with q/k/v and gate/up on parallel
  streams, the same products in a row, ``attention="flash"``, the fused plan, torch ops, one-kernel RMSNorm) in
  interleaved rounds, with the int4 rows paired like for like (default, fused, in a row), the device
  copy bound, NVML energy per token and the GEMV-only floor. Then a GPU budget of 3 GiB: our streaming eager
  and captured, int4 likewise (plus int4 all resident, eager vs captured), and accelerate
  ``infer_auto_device_map(max_memory={0: "3GiB", "cpu": ...})`` + ``dispatch_model``. Also measures pinned
  host->device bandwidth (the bound) and, with CUDA events on the copy stream, the copy time per token.
* ``cpu``: :mod:`experiments.benchmarks.streaming_cpu` (issue 20's setting by default: hidden 1024, 12 layers,
  vocab 8000, fp32, RAM cap 30 %; ``--hidden 2048 --intermediate 5632 --layers 8 --vocab 32000`` is the
  ANCHORS.md shape): every configuration in one process, interleaved rounds, warm and cold page cache, fp32
  and int8 on the disk tier, accelerate's disk offload at the same cap.

Every configuration decodes greedily from the same prompt with the same loop (prefill, then one token per
forward with the KV cache, synchronised per token); tokens/s is 1 / median per-token time after warm-up.
Weights are random (seeded) and built on the machine; nothing is downloaded.

Run: ``python -m experiments.benchmarks.streaming gpu --out results.md`` (or ``cpu``).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from experiments.benchmarks.decode_graphs import (
    energy_per_token,
    fused_copy,
    gemv_floor,
    graph_decode,
    hbm_copy_bandwidth,
    resident_rounds,
)
from runtime.decode_graph import GraphDecoder
from runtime.decode_ops import VerifiedOps
from runtime.session import Session
from runtime.sizes import format_bytes, parse_bytes
from runtime.spec import BlockSpec, SessionSpec

GIB = 2**30
DEFAULT_ROW = ("ours: the Session's default (captured step, exact fused ops: RMSNorm in one kernel summed in "
               "torch's order, the step's tail in one kernel; q/k/v and gate/up on parallel streams)")
S8_ROW = "ours: session 8's default (RMSNorm as three kernels with torch's mean, the step's tail as torch ops)"
SEQ_ROW = "ours: captured decode step, products one after the other (session 7's default)"
FLASH_ROW = "ours: the Session's default with attention='flash' (flash attention over the filled positions)"
FUSED_ROW = "ours: plan with q/k/v and gate/up fused, captured decode step, fused Triton ops (exact ops)"
INT4_HEAD_ROW = "ours int4 g128 head included (the uniform int4 plan), all blocks resident, captured decode step"
INT4_HEAD_FUSED_ROW = ("ours int4 g128 head included, q/k/v and gate/up fused, all blocks resident, captured "
                       "decode step")
INT4_HEAD_SEQ_ROW = ("ours int4 g128 head included, products one after the other, all blocks resident, captured "
                     "decode step")
# int4 against bf16, like for like: (int4 row, bf16 row, what they share)
INT4_PAIRS = ((INT4_HEAD_ROW, DEFAULT_ROW, "each the Session's default step"),
              (INT4_HEAD_FUSED_ROW, FUSED_ROW, "both plans fuse q/k/v and gate/up"),
              (INT4_HEAD_SEQ_ROW, SEQ_ROW, "both products one after the other"))


# ------------------------------------------------------------------------------------------- model
def build_llama(*, hidden: int, intermediate: int, layers: int, heads: int, vocab: int, dtype: torch.dtype,
                seed: int = 0, fill_device: str = "cpu", kv_heads: int | None = None) -> nn.Module:
    """A Llama with random weights on the host, built without a float32 detour (meta, then to_empty);
    ``kv_heads`` below ``heads`` gives grouped-query attention (default: one KV head per head)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads or heads, vocab_size=vocab,
                      max_position_embeddings=4096, tie_word_embeddings=False)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    model.to_empty(device="cpu")
    gen = torch.Generator(device=fill_device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0)  # norm weights
                continue
            rows = max(1, (1 << 24) // p.shape[1])  # fill in ~16M-element chunks: bounded temporaries
            for r in range(0, p.shape[0], rows):
                chunk = torch.randn(p[r:r + rows].shape, generator=gen, device=fill_device, dtype=torch.float32)
                p[r:r + rows].copy_(chunk.mul_(0.02).to(dtype))
    model.model.rotary_emb = LlamaRotaryEmbedding(config=cfg)  # to_empty left its buffer uninitialised
    return model.eval()


def weight_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


# ------------------------------------------------------------------------------------------- decode loop
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode(model: nn.Module, prompt: torch.Tensor, *, new_tokens: int, warmup: int,
           device: torch.device) -> dict[str, Any]:
    """Prefill, then ``new_tokens`` greedy decode steps; per-token wall times (synchronised)."""
    ids = prompt.to(device)
    times: list[float] = []
    tokens: list[int] = []
    with torch.no_grad():
        _sync(device)
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        _sync(device)
        prefill_s = time.perf_counter() - t0
        past = out.past_key_values
        tokens.append(int(tok))
        for _ in range(new_tokens):
            t0 = time.perf_counter()
            out = model(input_ids=tok.to(device), past_key_values=past, use_cache=True)
            past = out.past_key_values
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(int(tok))  # .item(): synchronises, as generate() does every step
            times.append(time.perf_counter() - t0)
    steady = times[warmup:] or times
    med = statistics.median(steady)
    return {"tokens": tokens, "last_logits": out.logits[0, -1].float().cpu(), "prefill_s": prefill_s, "median_token_s": med, "tokens_per_s": 1.0 / med,
            "mean_token_s": statistics.fmean(steady), "n_timed": len(steady)}


# ------------------------------------------------------------------------------------------- GPU
def h2d_bandwidth(nbytes: int = GIB, repeats: int = 10) -> float:
    """Pinned (cudaHostRegister'ed, as the store pins) host->device bytes/s, median of ``repeats``."""
    host = torch.empty(nbytes, dtype=torch.uint8)
    host.fill_(1)
    torch.cuda.cudart().cudaHostRegister(host.data_ptr(), nbytes, 0)
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    times = []
    for _ in range(repeats + 2):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dev.copy_(host, non_blocking=True)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    torch.cuda.cudart().cudaHostUnregister(host.data_ptr())
    del dev, host
    return nbytes / statistics.median(times[2:])


def _own_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module._parameters.values(), *module._buffers.values()]
               if t is not None)


def gpu_spec(model: nn.Module, *, gpu_budget: int, lookahead: int, embed_on_cpu: bool, interleave: bool,
             granularity: str = "module", headroom: int = 64 * 2**20, max_resident: int | None = None,
             resident_factor: float = 1.0) -> SessionSpec:
    """As many resident blocks as the GPU budget holds next to the staging slots; the rest streamed from
    pinned host memory. ``headroom`` is left out of the store's budget for activations, KV cache and
    cuBLAS workspace, so the allocator's peak stays under the cap too. ``resident_factor`` scales a
    resident block's bytes (2 for int4 on CUDA: tinygemm keeps a packed copy next to the buffers)."""
    layers = model.model.layers
    block = weight_bytes(layers[0])
    unit = max(_own_bytes(m) for m in layers[0].modules()) if granularity == "module" else block
    rest = weight_bytes(model) - len(layers) * block
    if embed_on_cpu:
        rest -= weight_bytes(model.model.embed_tokens)
    budget = gpu_budget - headroom
    room = budget - rest - (lookahead + 1) * unit
    resident = max(0, min(len(layers), int(room // (block * resident_factor))))
    if max_resident is not None:
        resident = min(resident, max_resident)
    if interleave and 0 < resident < len(layers):
        # Spread resident blocks evenly so the copy engine always has a streamed block coming up while
        # resident ones compute (their kernels are launch-bound and leave the link idle otherwise).
        step = len(layers) / resident
        resident_ids = {int(i * step + step / 2) for i in range(resident)}
    else:
        resident_ids = set(range(resident))
    blocks = tuple(BlockSpec(device="cuda:0", home=None if i in resident_ids else "cpu") for i in range(len(layers)))
    modules = {"model.embed_tokens": BlockSpec(device="cpu")} if embed_on_cpu else {}
    return SessionSpec(blocks=blocks, rest=BlockSpec(device="cuda:0"), budgets={"gpu": budget},
                       lookahead=lookahead, granularity=granularity, modules=modules)


def run_gpu(args: argparse.Namespace) -> dict[str, Any]:
    from accelerate import dispatch_model, infer_auto_device_map

    dev = torch.device("cuda:0")
    cap = parse_bytes(args.gpu_budget, what="--gpu-budget")
    t0 = time.perf_counter()
    model = build_llama(hidden=4096, intermediate=11008, layers=16, heads=32, vocab=32000, dtype=torch.bfloat16,
                        seed=args.seed, fill_device="cuda")
    total = weight_bytes(model)
    print(f"built model: {format_bytes(total)} in {time.perf_counter() - t0:.1f}s", flush=True)
    prompt = torch.randint(0, 32000, (1, args.prompt_len), generator=torch.Generator().manual_seed(args.seed))
    res: dict[str, Any] = {"setting": "gpu", "model_bytes": total, "gpu_cap": cap, "device": torch.cuda.get_device_name(0),
                           "torch": torch.__version__, "host_cores": os.cpu_count(), "configs": []}
    bw = h2d_bandwidth()
    res["h2d_pinned_Bps"] = bw
    print(f"pinned H2D: {bw / 1e9:.1f} GB/s", flush=True)

    # All on the GPU: Hugging Face eager (the token reference) against the captured step, interleaved rounds.
    model.to(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    res["hbm_copy_Bps"] = hbm = hbm_copy_bandwidth()
    print(f"device copy (read+write): {hbm / 1e12:.2f} TB/s -> bound {hbm / total:.0f} tok/s", flush=True)
    res["resident"] = _gpu_resident(model, prompt, args, dev, total, hbm)
    ref = res["resident"]["rows"][0]
    res["reference"] = ref
    model.to("cpu")
    gc.collect()
    torch.cuda.empty_cache()

    configs = [
        dict(name="ours: module units, lookahead 2", lookahead=2, embed_on_cpu=False, interleave=False),
        dict(name="ours: embed on host, lookahead 1", lookahead=1, embed_on_cpu=True, interleave=False),
        dict(name="ours: embed on host, lookahead 1, interleaved", lookahead=1, embed_on_cpu=True, interleave=True),
        dict(name="ours: embed on host, lookahead 3, interleaved", lookahead=3, embed_on_cpu=True, interleave=True),
        dict(name="ours graph: embed on host, lookahead 1, interleaved", lookahead=1, embed_on_cpu=True,
             interleave=True, graph=True),
        dict(name="ours graph: embed on host, lookahead 3, interleaved", lookahead=3, embed_on_cpu=True,
             interleave=True, graph=True),
        dict(name="ours graph: module units, lookahead 2", lookahead=2, embed_on_cpu=False, interleave=False,
             graph=True),
    ]
    for cfg in configs:
        name = cfg.pop("name")
        if cfg.pop("graph", False):
            spec = gpu_spec(model, gpu_budget=cap, **cfg)
            r = _graph_row(model, spec, prompt, args, dev, name, ref)
            if "error" not in r:
                r["bound_tok_s"] = bw / r["streamed_bytes"]
            res["configs"].append(r)
            gc.collect()
            torch.cuda.empty_cache()
            continue
        spec = gpu_spec(model, gpu_budget=cap, **cfg)
        torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        with Session(model, spec, time_transfers=True) as session:
            setup_s = time.perf_counter() - t0
            r = decode(model, prompt, new_tokens=args.new_tokens, warmup=args.warmup, device=dev)
            transfer = session.streamer.transfer_seconds()  # all tokens incl. prefill and warm-up
            st = session.stats()
            r.update(name=name, setup_s=setup_s, streamed_bytes=st.extra["streamed_bytes_per_pass"],
                     resident_blocks=sum(1 for b in spec.blocks if not b.streamed), lookahead=spec.lookahead,
                     gpu_peak_store=st.peak_bytes["gpu"], cpu_peak_store=st.peak_bytes["cpu"], cuda_max_allocated=torch.cuda.max_memory_allocated(dev),
                     transfer_s_per_token=transfer / (args.new_tokens + 1), misses=st.misses, fetches=st.fetches,
                     tokens_match_reference=r["tokens"] == ref["tokens"])
        r["bound_tok_s"] = bw / r["streamed_bytes"] if r["streamed_bytes"] else float("inf")
        r["anchor_bound_fraction"] = r["tokens_per_s"] / 14.5
        res["configs"].append(r)
        print(f"{name}: {r['tokens_per_s']:.2f} tok/s, resident {r['resident_blocks']}, streamed "
              f"{format_bytes(r['streamed_bytes'])}/token, copy {r['transfer_s_per_token'] * 1e3:.1f} ms/token, "
              f"store peak {format_bytes(r['gpu_peak_store'])}, allocator peak {format_bytes(r['cuda_max_allocated'])}, "
              f"match={r['tokens_match_reference']}", flush=True)
        gc.collect()
        torch.cuda.empty_cache()

    for r in res["configs"]:
        if "last_logits" in r:
            r["max_abs_logit_diff"] = float((r.pop("last_logits") - ref["last_logits"]).abs().max())
    if args.int4:
        try:
            res["int4"] = _gpu_int4(model, prompt, cap, args, dev, ref)
        except Exception as exc:  # noqa: BLE001 - report and keep the other results
            print(f"int4 run failed: {type(exc).__name__}: {exc}", flush=True)
            res["int4"] = {"error": f"{type(exc).__name__}: {exc}"}
        gc.collect()
        torch.cuda.empty_cache()

    # accelerate: same model, same loop, GPU capped at the same budget.
    torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    device_map = infer_auto_device_map(model, max_memory={0: args.gpu_budget, "cpu": "200GiB"},
                                       no_split_module_classes=["LlamaDecoderLayer"], dtype=torch.bfloat16)
    model = dispatch_model(model, device_map=device_map)
    setup_s = time.perf_counter() - t0
    acc_tokens = min(args.new_tokens, args.accelerate_tokens)
    r = decode(model, prompt, new_tokens=acc_tokens, warmup=min(args.warmup, 2), device=dev)
    on_gpu = sum(1 for v in device_map.values() if v == 0 or v == "cuda:0")
    r.update(name="accelerate infer_auto_device_map + dispatch_model (CPU offload)", setup_s=setup_s,
             cuda_max_allocated=torch.cuda.max_memory_allocated(dev), device_map_gpu_entries=on_gpu,
             device_map=str(device_map), tokens_match_reference=r["tokens"] == ref["tokens"][:len(r["tokens"])])
    r["max_abs_logit_diff"] = float((r.pop("last_logits") - ref.pop("last_logits")).abs().max()) \
        if len(r["tokens"]) == len(ref["tokens"]) else None
    res["accelerate"] = r
    print(f"accelerate: {r['tokens_per_s']:.2f} tok/s, allocator peak {format_bytes(r['cuda_max_allocated'])}, "
          f"match={r['tokens_match_reference']}", flush=True)
    return res


def _graph_row(model: nn.Module, spec: SessionSpec, prompt: torch.Tensor, args: argparse.Namespace,
               dev: torch.device, name: str, ref: dict[str, Any] | None) -> dict[str, Any]:
    """One streamed configuration decoded through the captured step (copies in the graph)."""
    torch.cuda.reset_peak_memory_stats(dev)
    try:
        with Session(model, spec, graphs=False) as session:
            dec = GraphDecoder(session)
            r = graph_decode(dec, prompt, new_tokens=args.new_tokens, warmup=args.warmup)
            st = session.stats()
            r.update(name=name, streamed_bytes=st.extra["streamed_bytes_per_pass"],
                     resident_blocks=sum(1 for b in spec.blocks if not b.streamed), lookahead=spec.lookahead,
                     gpu_peak_store=st.peak_bytes["gpu"], cuda_max_allocated=torch.cuda.max_memory_allocated(dev),
                     transfer_s_per_token=float("nan"))
            dec.close()
    except Exception as exc:  # noqa: BLE001 - report and keep the other rows
        print(f"{name}: failed: {type(exc).__name__}: {exc}", flush=True)
        return {"name": name, "error": f"{type(exc).__name__}: {exc}"}
    if ref is not None:
        r["tokens_match_reference"] = r["tokens"] == ref["tokens"]
        r["max_abs_logit_diff"] = float((r.pop("last_logits") - ref["last_logits"]).abs().max())
    print(f"{name}: {r['tokens_per_s']:.2f} tok/s (back to back {r['back_to_back_tok_s']:.2f}), resident "
          f"{r['resident_blocks']}, streamed {format_bytes(r['streamed_bytes'])}/token, store peak "
          f"{format_bytes(r['gpu_peak_store'])}, allocator peak {format_bytes(r['cuda_max_allocated'])}, "
          f"match={r.get('tokens_match_reference')}", flush=True)
    return r


def _resident_spec(model: nn.Module) -> SessionSpec:
    blocks = tuple(BlockSpec(device="cuda:0") for _ in model.model.layers)
    return SessionSpec(blocks=blocks, rest=BlockSpec(device="cuda:0"))


def _eager_stepper(model: nn.Module, prompt: torch.Tensor, dev: torch.device) -> Any:
    state: dict[str, Any] = {}
    with torch.no_grad():
        out = model(input_ids=prompt.to(dev), use_cache=True)
    state.update(past=out.past_key_values, tok=out.logits[:, -1].argmax(-1, keepdim=True))

    def step() -> None:
        with torch.no_grad():
            o = model(input_ids=state["tok"], past_key_values=state["past"], use_cache=True)
        state.update(past=o.past_key_values, tok=o.logits[:, -1].argmax(-1, keepdim=True))
        int(state["tok"])

    return step


def _graph_stepper(dec: GraphDecoder, prompt: torch.Tensor, tokens: int) -> Any:
    dec.start(prompt, tokens)

    def step() -> None:
        if dec.position + 1 >= dec.key[1]:
            dec.start(prompt, tokens)  # ran out of cache (faster than planned): restart, counted in the window
        dec.step()

    return step


def session8_ops(dec: GraphDecoder) -> GraphDecoder:
    """``dec`` with session 8's exact ops: RMSNorm as three kernels (torch's own ``mean``), the step's tail as
    torch ops (set before its first generate, so its graph is captured with them)."""
    dec.ops = VerifiedOps(dec.device, dec.dtype, hidden=dec.hidden, intermediate=dec.cfg.intermediate_size,
                          heads=dec.heads, kv_heads=dec.kv_heads, head_dim=dec.head_dim, eps=dec.eps,
                          vocab=dec.cfg.vocab_size, one_kernel_norm=False, fused_tail=False)
    return dec


def _gpu_resident(model: nn.Module, prompt: torch.Tensor, args: argparse.Namespace, dev: torch.device,
                  total: int, hbm: float) -> dict[str, Any]:
    """Every weight on the GPU: HF eager vs the captured step (fused Triton ops, and torch ops), interleaved."""
    fmodel = fused_copy(model)  # the plan with fusion=fuse on every q/k/v and gate/up group
    fused_name = FUSED_ROW
    default_name = DEFAULT_ROW
    with Session(model, _resident_spec(model), graphs=False) as session, \
            Session(fmodel, _resident_spec(fmodel), graphs=False) as fsession:
        # GraphDecoder(session) with no arguments is exactly what Session.generate builds on CUDA
        runs = {"Hugging Face eager (dynamic cache), all weights on the GPU": None,
                default_name: GraphDecoder(session),
                SEQ_ROW: GraphDecoder(session, branches=False),
                S8_ROW: session8_ops(GraphDecoder(session)),
                fused_name: GraphDecoder(fsession),
                "ours: captured decode step, fused Triton ops with one-kernel RMSNorm (not bit-exact)":
                    GraphDecoder(session, ops="triton-fast"),
                "ours: captured decode step, torch ops (Hugging Face's op sequence)": GraphDecoder(session, ops="torch")}
        out = resident_rounds(model, session, runs, prompt, new_tokens=args.new_tokens, warmup=args.warmup,
                              rounds=args.rounds, eager=decode)
        # the fused plan's own eager forward (Hugging Face's code over the fused modules): its token reference
        own = decode(fmodel, prompt, new_tokens=args.new_tokens, warmup=args.warmup, device=dev)
        out[fused_name]["tokens_match_own_eager"] = out[fused_name]["tokens"] == own["tokens"]
        out[fused_name]["own_eager_tok_s"] = own["tokens_per_s"]
        rows = []
        ref = out[next(iter(runs))]
        for name, r in out.items():
            r["name"] = name
            if runs[name] is not None:
                r["attention"] = runs[name].attention_report
            if r is not ref:
                r["tokens_match_reference"] = r["tokens"] == ref["tokens"]
                r["max_abs_logit_diff"] = float((r["last_logits"] - ref["last_logits"]).abs().max())
            r["bound_fraction"] = r["tokens_per_s"] * total / hbm
            rows.append(r)
            print(f"{name}: {r['tokens_per_s']:.1f} tok/s (rounds {[round(x, 1) for x in r['rounds_tok_s']]}), "
                  f"{100 * r['bound_fraction']:.0f}% of the copy bound, match={r.get('tokens_match_reference')}",
                  flush=True)
        for r in rows[1:]:
            r.pop("last_logits")
        energy = {}
        for name in ("Hugging Face eager (dynamic cache), all weights on the GPU", default_name, fused_name):
            dec = runs[name]
            if dec is None:
                step = _eager_stepper(model, prompt, dev)
            else:
                big = GraphDecoder(dec.session, bucket=1024)
                step = _graph_stepper(big, prompt, 1000)
            energy[name] = energy_per_token(step, device=str(dev))
            if dec is not None:
                big.close()
            print(f"energy {name}: {energy[name]}", flush=True)
        for dec in runs.values():
            if dec is not None:
                dec.close()
        ref["cuda_max_allocated"] = torch.cuda.max_memory_allocated(dev)
        floors = []
        for fused in (False, True):
            try:
                floors.append(gemv_floor(model, fused=fused))
            except Exception as exc:  # noqa: BLE001 - a diagnostic; keep the rows
                floors.append({"fused": fused, "error": f"{type(exc).__name__}: {exc}"})
            print(f"GEMV floor: {floors[-1]}", flush=True)
    del fmodel, runs, dec  # nothing of the fused copy may stay on the GPU into the capped rows' allocator peaks
    return {"rows": rows, "energy": energy, "rounds": args.rounds, "gemv_floor": floors}


def _gpu_int4(model: nn.Module, prompt: torch.Tensor, cap: int, args: argparse.Namespace,
              dev: torch.device, reference: dict[str, Any]) -> dict[str, Any]:
    """int4 (group 128) weight-only blocks via runtime.kernels (its default CUDA kernel)."""
    import copy

    from runtime.kernels import QuantizedLinear

    def quantized(m: nn.Module) -> nn.Module:
        for layer in m.model.layers:  # quantize on the GPU (fast), keep the result on the host
            for parent in list(layer.modules()):
                for cname, child in list(parent.named_children()):
                    if isinstance(child, nn.Linear):
                        q = QuantizedLinear.from_linear(child.to(dev), "int4", group_size=128)
                        setattr(parent, cname, q.to("cpu"))
        return m

    def with_head(m: nn.Module) -> nn.Module:
        # autosurgeon's uniform int4 plan quantizes an untied head too (autosurgeon/space/search_space.py)
        m.lm_head = QuantizedLinear.from_linear(m.lm_head.to(dev), "int4", group_size=128).to("cpu")
        return m

    qmodel = quantized(copy.deepcopy(model))
    fqmodel = quantized(fused_copy(model))  # fusion first, then int4 (the transforms' order)
    hmodel = with_head(copy.deepcopy(qmodel)) if args.int4_head else None
    fhmodel = with_head(copy.deepcopy(fqmodel)) if args.int4_head else None
    out = []
    # Kernel sanity on the real shapes: the CUDA int4 linear against float64 on its own dequantized
    # weight (kernel error) and against the bf16 linear it replaced (quantization error).
    from runtime.kernels.formats import dequantize

    check = {}
    for lname in ("self_attn.q_proj", "mlp.up_proj", "mlp.down_proj"):
        ql = qmodel.model.layers[0].get_submodule(lname).to(dev)
        fl = model.model.layers[0].get_submodule(lname)
        x = torch.randn(1, ql.in_features, device=dev, dtype=torch.bfloat16)
        with torch.no_grad():
            y = ql(x).double()
        w64 = dequantize(ql.quantized_weight(), torch.float64)
        ref64 = x.double() @ w64.t()
        yb = x.double() @ fl.weight.to(dev).double().t()
        check[lname] = {"kernel": ql.resolve_kernel(dev).name,
                        "rel_err_vs_own_dequant_f64": float(torch.linalg.norm(y - ref64) / torch.linalg.norm(ref64)),
                        "rel_err_vs_bf16_weight": float(torch.linalg.norm(y - yb) / torch.linalg.norm(yb))}
        ql.to("cpu")
        ql.release_prepared()
        del x, y, w64, ref64, yb  # float64 temporaries must not inflate the runs' allocator peaks
    gc.collect()
    torch.cuda.empty_cache()
    print(f"int4 kernel check: {check}", flush=True)
    # All int4 blocks resident (no cap): int4 eager vs the captured step, interleaved rounds.
    resident = []
    fused_name = "ours int4 g128, plan with q/k/v and gate/up fused, all blocks resident, captured decode step"
    head_name, fhead_name, seq_head_name = INT4_HEAD_ROW, INT4_HEAD_FUSED_ROW, INT4_HEAD_SEQ_ROW
    with contextlib.ExitStack() as stack:
        def open_session(m: nn.Module) -> Session:
            return stack.enter_context(Session(m, _resident_spec(m), graphs=False))

        session, fsession = open_session(qmodel), open_session(fqmodel)
        runs = {"ours int4 g128, all blocks resident, eager": None,
                "ours int4 g128, all blocks resident, captured decode step": GraphDecoder(session),
                fused_name: GraphDecoder(fsession)}
        own_model = {fused_name: fqmodel}
        if hmodel is not None and fhmodel is not None:
            hsession = open_session(hmodel)
            runs[head_name] = GraphDecoder(hsession)
            runs[seq_head_name] = GraphDecoder(hsession, branches=False)
            runs[fhead_name] = GraphDecoder(open_session(fhmodel))
            own_model.update({head_name: hmodel, seq_head_name: hmodel, fhead_name: fhmodel})
        rr = resident_rounds(qmodel, session, runs, prompt, new_tokens=args.new_tokens, warmup=args.warmup,
                             rounds=args.rounds, eager=decode)
        eager_r = rr[next(iter(runs))]
        own = {name: decode(m, prompt, new_tokens=args.new_tokens, warmup=args.warmup, device=dev)
               for name, m in own_model.items()}  # each variant's own int4 eager tokens
        for name, r in rr.items():
            r["name"] = name
            r.pop("last_logits")
            r["tokens_match_int4_eager"] = r["tokens"] == own.get(name, eager_r)["tokens"]
            resident.append(r)
            print(f"{name}: {r['tokens_per_s']:.1f} tok/s (rounds {[round(x, 1) for x in r['rounds_tok_s']]}), "
                  f"match int4 eager={r['tokens_match_int4_eager']}", flush=True)
        for dec in runs.values():
            if dec is not None:
                dec.close()
        resident[0]["cuda_max_allocated"] = torch.cuda.max_memory_allocated(dev)
    del fqmodel, hmodel, fhmodel, own_model, runs, dec  # nothing of these may stay on the GPU into the capped rows
    gc.collect()
    torch.cuda.empty_cache()
    # Same placement rule as bf16 (int4 blocks are small enough that they may all be resident), then
    # every block streamed, which shows the compressed weights travelling; each eager, then captured.
    graphs: list[dict[str, Any]] = []
    for name, max_resident in [("ours int4 g128, placed by the 3 GiB rule (packed copy counted)", None),
                               ("ours int4 g128, every block streamed from host", 0)]:
        spec = gpu_spec(qmodel, gpu_budget=cap, lookahead=1, embed_on_cpu=True, interleave=True,
                        max_resident=max_resident, resident_factor=2.0)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)  # what earlier rows left on the GPU (part of the peak below)
        with Session(qmodel, spec, time_transfers=True) as session:
            r = decode(qmodel, prompt, new_tokens=args.new_tokens, warmup=args.warmup, device=dev)
            st = session.stats()
            r.update(name=name, streamed_bytes=st.extra["streamed_bytes_per_pass"],
                     resident_blocks=sum(1 for b in spec.blocks if not b.streamed), gpu_peak_store=st.peak_bytes["gpu"],
                     cuda_max_allocated=torch.cuda.max_memory_allocated(dev), cuda_allocated_before=before,
                     transfer_s_per_token=session.streamer.transfer_seconds() / (args.new_tokens + 1))
        logits = r.pop("last_logits")
        ref_logits = reference["last_logits"]
        r["rel_logit_err_vs_bf16"] = float(torch.linalg.norm(logits - ref_logits) / torch.linalg.norm(ref_logits))
        r["token_agreement_vs_bf16"] = sum(a == b for a, b in zip(r["tokens"], reference["tokens"])) / len(r["tokens"])
        out.append(r)
        print(f"{name}: {r['tokens_per_s']:.2f} tok/s, resident {r['resident_blocks']}, streamed "
              f"{format_bytes(r['streamed_bytes'])}/token, copy {r['transfer_s_per_token'] * 1e3:.1f} ms/token, "
              f"allocator peak {format_bytes(r['cuda_max_allocated'])} (allocated before the row "
              f"{format_bytes(before)})", flush=True)
        g = _graph_row(qmodel, spec, prompt, args, dev, name.replace("ours int4", "ours graph int4"), None)
        if "error" not in g:
            g.pop("last_logits")
            g["tokens_match_int4_eager_same_placement"] = g["tokens"] == r["tokens"]
            g["tokens_match_reference"] = "— (int4)"
        graphs.append(g)
    del qmodel
    out[1]["tokens_match_int4_resident"] = out[1]["tokens"] == out[0]["tokens"]
    return {"runs": out, "graph_runs": graphs, "resident": resident, "kernel_check": check}


# ------------------------------------------------------------------------------------------- report
def _f(x: Any, fmt: str = ".2f") -> str:
    return "—" if x is None or x != x else format(x, fmt)


def _gpu_markdown(res: dict[str, Any]) -> list[str]:
    bw = res["h2d_pinned_Bps"]
    hbm = res.get("hbm_copy_Bps")
    ref = res["reference"]
    lines = [f"Device: {res['device']}, {res['host_cores']} host cores, torch {res['torch']}. Model "
             f"{res['model_bytes'] / 1e9:.2f} GB bf16; batch 1, {ref['n_timed']} timed decode tokens after warm-up, "
             f"median; pinned H2D {bw / 1e9:.1f} GB/s"
             + (f"; device copy (read+write) {hbm / 1e12:.2f} TB/s -> bound {hbm / res['model_bytes']:.0f} tok/s"
                if hbm else "") + ".", ""]
    resident = res.get("resident", {}).get("rows", [])
    int4_res = res.get("int4", {}).get("resident", [])
    if resident:
        eager = resident[0]["tokens_per_s"]
        lines += ["**All weights on the GPU** (interleaved rounds in one process; tok/s = median over rounds of "
                  "each round's 1 / median per-token time; back to back = replays queued without a host read).", "",
                  "| configuration | tok/s | rounds | back to back tok/s | % of copy bound | × HF eager | tokens |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in [*resident, *int4_res]:
            match = r.get("tokens_match_reference", r.get("tokens_match_int4_eager", "(reference)"))
            if r in int4_res:
                own = "its own " if ("fused" in r["name"] or "head included" in r["name"]) else ""
                match = f"= {own}int4 eager: {r['tokens_match_int4_eager']}"
            elif "tokens_match_own_eager" in r:
                match = f"{match}; = its own eager: {r['tokens_match_own_eager']}"
            frac = r["tokens_per_s"] * res["model_bytes"] / hbm if hbm and r in resident else None
            lines.append(f"| {r['name']} | {r['tokens_per_s']:.1f} | {', '.join(f'{x:.1f}' for x in r['rounds_tok_s'])} | "
                         f"{_f(r.get('back_to_back_tok_s'), '.1f')} | {_f(100 * frac if frac else None, '.1f')}"
                         f"{'%' if frac else ''} | {r['tokens_per_s'] / eager:.1f}× | {match} |")
        by_name = {r["name"]: r["tokens_per_s"] for r in [*resident, *int4_res]}
        for int4_row, bf16_row, alike in INT4_PAIRS:
            if int4_row in by_name and bf16_row in by_name:
                lines.append(f"\nint4 g128 uniform plan / bf16, {alike}: {by_name[int4_row]:.1f} / "
                             f"{by_name[bf16_row]:.1f} = {by_name[int4_row] / by_name[bf16_row]:.2f}x.")
        for r in resident:
            if r["name"] == FLASH_ROW:
                lines.append(f"\nAttention of '{r['name']}': {r.get('attention')}.")
            if r.get("ops_report"):
                lines.append(f"\nOps of '{r['name']}' (each fused op checked bit for bit against torch's on random "
                             f"inputs, first exact variant kept): {r['ops_report']}.")
        for f in res.get("resident", {}).get("gemv_floor", []):
            if "error" not in f:
                lines.append(f"\nMatrix-vector products alone ({f['products']} per token"
                             f"{', q/k/v and gate/up fused' if f['fused'] else ''}), one captured graph: "
                             f"{f['median_s'] * 1e3:.3f} ms/token ({f['read_Bps'] / 1e12:.2f} TB/s of weights read"
                             + (f"; fused bits = separate: {f['fused_bits_equal_separate']}" if f["fused"] else "") + ").")
        for name, e in res.get("resident", {}).get("energy", {}).items():
            lines.append(f"\nEnergy, {name}: {_f(e.get('j_per_token'), '.3f')} J/token ({e['tokens']} tokens over "
                         f"{_f(e['seconds'])} s, {_f(e['watts_avg'], '.0f')} W avg, {e['source']}).")
        lines.append("")
    lines += [f"**GPU cap {_gb(res['gpu_cap'])}** (streamed from pinned host memory).", "",
              "| configuration | tok/s | back to back tok/s | vs accelerate | resident blocks | streamed / token | "
              "bound (streamed B / H2D) | % of bound | copy ms / token | ms / token | store GPU peak | allocator peak | "
              "tokens = ref |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    acc = res.get("accelerate", {})
    acc_tps = acc.get("tokens_per_s")
    int4 = res.get("int4", {})
    rows = [*res["configs"], *int4.get("runs", []), *int4.get("graph_runs", [])]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | failed: {r['error']} |" + " |" * 11)
            continue
        bound = bw / r["streamed_bytes"] if r.get("streamed_bytes") else None
        match = r.get("tokens_match_reference", "—")
        if "tokens_match_int4_eager_same_placement" in r:
            match = f"= int4 eager: {r['tokens_match_int4_eager_same_placement']}"
        lines.append(
            f"| {r['name']} | {r['tokens_per_s']:.2f} | {_f(r.get('back_to_back_tok_s'))} | "
            f"{_f(r['tokens_per_s'] / acc_tps if acc_tps else None, '.1f')}× | {r['resident_blocks']} | "
            f"{r['streamed_bytes'] / 1e9:.2f} GB | {_f(bound)} | {_f(100 * r['tokens_per_s'] / bound if bound else None, '.0f')}% | "
            f"{_f(r.get('transfer_s_per_token', float('nan')) * 1e3, '.1f')} | {r['median_token_s'] * 1e3:.1f} | "
            f"{_gb(r['gpu_peak_store'])} | {_gb(r['cuda_max_allocated'])} | {match} |")
    if acc:
        lines.append(f"| {acc['name']} | {acc_tps:.2f} | — | 1.0× | {acc['device_map_gpu_entries'] - 1} (+ embeddings) | "
                     f"— | — | — | — | {acc['median_token_s'] * 1e3:.1f} | — | {_gb(acc['cuda_max_allocated'])} | "
                     f"{acc['tokens_match_reference']} |")
    return lines


def _gb(n: Any) -> str:
    return "—" if n is None else f"{n / 2**30:.2f} GiB"


def to_markdown(res: dict[str, Any]) -> str:
    """The results as markdown tables (the committed result files are made from this)."""
    lines: list[str] = []
    if res["setting"] == "gpu":
        lines += _gpu_markdown(res)
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="setting", required=True)
    for name in ("gpu", "cpu"):
        p = sub.add_parser(name)
        p.add_argument("--prompt-len", type=int, default=16)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--json", help="write the full results here")
        p.add_argument("--md", help="write the markdown tables here")
    g = sub.choices["gpu"]
    g.add_argument("--new-tokens", type=int, default=32)
    g.add_argument("--warmup", type=int, default=4)
    g.add_argument("--gpu-budget", default="3GiB")
    g.add_argument("--accelerate-tokens", type=int, default=12)
    g.add_argument("--int4", action="store_true")
    g.add_argument("--int4-head", action="store_true",
                   help="with --int4: also the resident rows with the untied head in int4 (the uniform int4 plan)")
    g.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the resident rows")
    c = sub.choices["cpu"]
    from experiments.benchmarks.streaming_cpu import ROWS, CpuBenchSettings

    d = CpuBenchSettings()
    for field in ("hidden", "intermediate", "layers", "heads", "vocab", "warmup", "tokens", "accelerate_tokens",
                  "rounds", "threads"):
        c.add_argument(f"--{field.replace('_', '-')}", type=int, default=getattr(d, field))
    c.add_argument("--ram-fraction", type=float, default=d.ram_fraction)
    c.add_argument("--rows", nargs="+", default=list(d.rows), choices=list(ROWS))
    c.add_argument("--profile", nargs="*", default=list(d.profile), choices=list(ROWS),
                   help="rows to profile op by op after the rounds (none: skip)")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    if args.setting == "cpu":
        from experiments.benchmarks import streaming_cpu

        settings = streaming_cpu.CpuBenchSettings(
            hidden=args.hidden, intermediate=args.intermediate, layers=args.layers, heads=args.heads, vocab=args.vocab,
            ram_fraction=args.ram_fraction, prompt_len=args.prompt_len, warmup=args.warmup, tokens=args.tokens,
            accelerate_tokens=args.accelerate_tokens, rounds=args.rounds, threads=args.threads, seed=args.seed,
            rows=tuple(args.rows), profile=tuple(args.profile))
        res = streaming_cpu.run(settings, progress=lambda msg: print(msg, flush=True))
        table = streaming_cpu.to_markdown(res)
    else:
        res = run_gpu(args)
        table = to_markdown(res)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1, default=str)
    print(table)
    if args.md:
        with open(args.md, "w") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
