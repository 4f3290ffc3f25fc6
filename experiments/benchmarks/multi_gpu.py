"""Multi-GPU streaming decode (issue 19's Done-when): one model over two GPUs and the host, streaming on each link.

Setting: the Llama-70B shape (the zoo's ``llama-70b-shape``: hidden 8192, 80 layers, 64 heads, 8 KV heads,
intermediate 28672, vocab 32000), bf16 (~129 GiB), random seeded weights built here, batch 1 greedy decode
from a seeded prompt, a per-GPU cap (default 40 GiB) that forces streaming. All rows in one process, each
decoding with the same loop (``experiments.benchmarks.streaming.decode``: prefill, then one forward per token
with the KV cache, synchronised per token; tok/s = 1 / median per-token time after warm-up):

1. per-link copy bandwidth: pinned host->device on each GPU alone, then on all GPUs at once (CUDA events per
   link, and the aggregate over wall time) — the bound the placement's streaming sees;
2. reference: every weight on the GPUs (accelerate ``dispatch_model`` over the GPUs, no offload): Hugging Face
   eager, whose greedy tokens every bf16 row must equal;
3. ours on one GPU at the cap (``runtime.multi_device.MultiSession``, one device: resident blocks while the cap
   lasts, the rest streamed over that GPU's link);
4. ours on two GPUs at the same per-GPU cap, blocks interleaved over the GPUs (each GPU streams its own blocks over
   its own link on its own copy stream, prefetching while the other GPU computes; lookahead 6 = one block's seven
   linears in flight), with the copy bandwidth each link reached during decode; and the same with contiguous halves
   (accelerate's layout: the links take turns), which shows what the interleaving buys;
5. accelerate's multi-GPU offload at the same caps (``infer_auto_device_map(max_memory={0: cap, 1: cap, "cpu":
   ...})`` + ``dispatch_model``: offloaded blocks run on GPU 0, their weights copied per use from host memory);
6. int4 (group 128, ``runtime.kernels``, quantized on the GPU) on one and on two GPUs at the cap (last: the
   quantization replaces the bf16 linears); tokens compared with the reference and reported, not required equal.

They run in the order 1, 4, 5, 3 (rows 3-5 repeated ``--rounds`` times in rotated order: ratios per round, medians),
then 2 (tokens are compared once the reference exists), then 6. Results go to ``OUT/multi_gpu.json``
(rewritten after every row, so a run cut short keeps what finished) and ``OUT/multi_gpu.md``.

With fewer than two visible GPUs the script refuses in one line (exit status 2). ``--cpu`` runs the same rows
(reference, ours on one and two devices, int4) on a tiny model over two *logical* host devices streaming from
disk — the path the tests run; accelerate and the link bandwidth are GPU-only there.

Imports besides torch: transformers (the Llama), accelerate (rows 2 and 5), safetensors (the runtime's disk tier).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from experiments.benchmarks.streaming import build_llama, decode
from runtime.multi_device import MultiSession, MultiSpec
from runtime.session import module_bytes, own_bytes
from runtime.sizes import format_bytes, parse_bytes

# The zoo's llama-70b-shape (autosurgeon/models/shape_specs.py).
LLAMA_70B = {"hidden": 8192, "intermediate": 28672, "layers": 80, "heads": 64, "kv_heads": 8, "vocab": 32000}
TINY = {"hidden": 64, "intermediate": 160, "layers": 6, "heads": 4, "kv_heads": 2, "vocab": 256}
GIB = 2**30


# ------------------------------------------------------------------------------------------- model
def build(shape: dict[str, int], *, dtype: torch.dtype, seed: int, fill_device: str) -> nn.Module:
    """A Llama of ``shape`` with random weights on the host (``streaming.build_llama``, grouped-query attention)."""
    return build_llama(hidden=shape["hidden"], intermediate=shape["intermediate"], layers=shape["layers"],
                       heads=shape["heads"], kv_heads=shape["kv_heads"], vocab=shape["vocab"], dtype=dtype, seed=seed,
                       fill_device=fill_device)


def quantize_int4(model: nn.Module, device: str) -> int:
    """Every block linear to int4 (group 128) on ``device`` (fast on a GPU), kept on the host; returns the count."""
    from runtime.kernels import QuantizedLinear  # lazy: only the int4 rows need the kernels

    count = 0
    for layer in model.model.layers:
        for parent in list(layer.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    q = QuantizedLinear.from_linear(child.to(device), "int4", group_size=128)
                    setattr(parent, name, q.to("cpu"))
                    count += 1
    return count


# ------------------------------------------------------------------------------------------- links
def link_bandwidth(devices: Sequence[str], nbytes: int, repeats: int) -> dict[str, Any]:
    """Pinned host->device bytes/s per GPU alone and with all GPUs copying at once (medians of ``repeats``)."""
    hosts, devs, streams = [], [], []
    for d in devices:
        host = torch.empty(nbytes, dtype=torch.uint8).fill_(1)
        torch.cuda.cudart().cudaHostRegister(host.data_ptr(), nbytes, 1)  # portable, as the store pins
        hosts.append(host)
        devs.append(torch.empty(nbytes, dtype=torch.uint8, device=d))
        streams.append(torch.cuda.Stream(device=d))

    def once(which: Sequence[int]) -> tuple[list[float], float]:
        events = []
        for i in which:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            events.append((start, end))
        t0 = time.perf_counter()
        for (start, end), i in zip(events, which):
            with torch.cuda.stream(streams[i]):
                start.record(streams[i])
                devs[i].copy_(hosts[i], non_blocking=True)
                end.record(streams[i])
        for _, end in events:
            end.synchronize()
        return [s.elapsed_time(e) / 1e3 for s, e in events], time.perf_counter() - t0

    out: dict[str, Any] = {"bytes_per_copy": nbytes, "repeats": repeats, "alone": {}, "together": {}}
    for i, d in enumerate(devices):
        times = [once([i])[0][0] for _ in range(repeats + 2)][2:]
        out["alone"][d] = {"Bps": nbytes / statistics.median(times), "spread": _spread(times)}
    per: list[list[float]] = [[] for _ in devices]
    walls = []
    for _ in range(repeats + 2):
        secs, wall = once(range(len(devices)))
        for i, s in enumerate(secs):
            per[i].append(s)
        walls.append(wall)
    for i, d in enumerate(devices):
        out["together"][d] = {"Bps": nbytes / statistics.median(per[i][2:]), "spread": _spread(per[i][2:])}
    out["together"]["aggregate_Bps"] = len(devices) * nbytes / statistics.median(walls[2:])
    for host in hosts:
        torch.cuda.cudart().cudaHostUnregister(host.data_ptr())
    return out


def _spread(values: Sequence[float]) -> float:
    """(max - min) / median of the repeats."""
    med = statistics.median(values)
    return (max(values) - min(values)) / med if med else 0.0


# ------------------------------------------------------------------------------------------- rows
def spec_for(model: nn.Module, physical: Sequence[str], *, cap: int, headroom: int, lookahead: int,
             layout: str = "interleaved") -> MultiSpec:
    """``MultiSpec.split``: even shares per device (``layout``), resident blocks while the cap (less ``headroom``
    for activations, KV cache and workspaces) lasts, the rest streamed from the host (GPU) or disk (host)."""
    layers = model.model.layers
    block = module_bytes(layers[0])
    prepared = any(hasattr(m, "prepared_nbytes") for m in layers[0].modules())
    resident_block = 2 * block if prepared and physical[0].startswith("cuda") else block  # int4: tinygemm's packed copy
    unit = max(own_bytes(m) for m in layers[0].modules())
    rest = module_bytes(model) - len(layers) * block
    devices = {f"gpu:{i}" if d.startswith("cuda") else f"host:{i}": d for i, d in enumerate(physical)}
    budgets = {name: cap - headroom for name in devices}
    return MultiSpec.split(n_blocks=len(layers), block_bytes=resident_block, rest_bytes=rest, devices=devices,
                           budgets=budgets, stream_unit_bytes=unit, lookahead=lookahead, layout=layout)


def run_ours(model: nn.Module, prompt: torch.Tensor, physical: Sequence[str], args: argparse.Namespace,
             name: str, layout: str = "interleaved") -> dict[str, Any]:
    spec = spec_for(model, physical, cap=args.cap, headroom=args.headroom, lookahead=args.lookahead, layout=layout)
    cuda = physical[0].startswith("cuda")
    for d in sorted(set(physical)):
        if cuda:
            torch.cuda.reset_peak_memory_stats(d)
    t0 = time.perf_counter()
    with MultiSession(model, spec, time_transfers=cuda) as session:
        setup_s = time.perf_counter() - t0
        if cuda:
            session.link_stats()  # reset: count decode only
        r = decode(model, prompt, new_tokens=args.new_tokens, warmup=args.warmup, device=session.rest_device)
        links = session.link_stats()
        stats = session.stats()
        t1 = time.perf_counter()
    r.pop("last_logits", None)
    r.update(name=name, layout=layout, lookahead=spec.lookahead, setup_s=setup_s,
             teardown_s=time.perf_counter() - t1, cap=args.cap,
             devices={n: {k: d[k] for k in ("physical", "peak_bytes", "budget", "blocks", "streamed_blocks",
                                              "streamed_bytes_per_pass", "misses")}
                      for n, d in stats["devices"].items()},
             links={n: {"bytes_per_s": v["bytes_per_s"], "bytes": v["bytes"], "seconds": v["seconds"]}
                    for n, v in links.items()},
             streamed_bytes_per_token=sum(d["streamed_bytes_per_pass"] for d in stats["devices"].values()),
             cuda_max_allocated={d: torch.cuda.max_memory_allocated(d) for d in sorted(set(physical))}
             if cuda else None)
    for d in r["devices"].values():
        d["resident_blocks"] = len(d["blocks"]) - len(d["streamed_blocks"])
        d.pop("streamed_blocks")
    return r


def run_reference(model: nn.Module, prompt: torch.Tensor, physical: Sequence[str], args: argparse.Namespace) -> dict:
    """Every weight on the execution devices, Hugging Face eager: the token reference."""
    if not physical[0].startswith("cuda"):
        r = decode(model, prompt, new_tokens=args.new_tokens, warmup=args.warmup, device=torch.device("cpu"))
        r.pop("last_logits", None)
        return {**r, "name": "reference: Hugging Face eager, all weights on the host"}
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.hooks import remove_hook_from_submodules

    gpus = sorted({int(d.split(":")[1]) for d in physical})
    device_map = infer_auto_device_map(model, max_memory={i: torch.cuda.get_device_properties(i).total_memory - 4 * GIB
                                                          for i in gpus},
                                       no_split_module_classes=["LlamaDecoderLayer"], dtype=torch.bfloat16)
    if any(v not in gpus for v in device_map.values()):
        return {"name": "reference", "error": f"the model does not fit the GPUs whole: {device_map}"}
    model = dispatch_model(model, device_map=device_map)
    r = decode(model, prompt, new_tokens=args.new_tokens, warmup=args.warmup, device=torch.device(f"cuda:{gpus[0]}"))
    r.pop("last_logits", None)
    remove_hook_from_submodules(model)
    model.to("cpu")
    return {**r, "name": f"reference: Hugging Face eager, all weights on GPUs {gpus} (accelerate, no offload)"}


def run_accelerate(model: nn.Module, prompt: torch.Tensor, gpus: Sequence[int], args: argparse.Namespace
                   ) -> dict[str, Any]:
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.hooks import remove_hook_from_submodules

    for g in gpus:
        torch.cuda.reset_peak_memory_stats(g)
    t0 = time.perf_counter()
    max_memory = {g: args.cap for g in gpus} | {"cpu": "1000GiB"}
    device_map = infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=["LlamaDecoderLayer"],
                                       dtype=torch.bfloat16)
    model = dispatch_model(model, device_map=device_map)
    setup_s = time.perf_counter() - t0
    tokens = min(args.new_tokens, args.accelerate_tokens)
    r = decode(model, prompt, new_tokens=tokens, warmup=min(args.warmup, 1), device=torch.device(f"cuda:{gpus[0]}"))
    r.pop("last_logits", None)
    placed = {str(g): sum(1 for v in device_map.values() if v == g) for g in gpus}
    r.update(name=f"accelerate infer_auto_device_map + dispatch_model, GPUs {list(gpus)} (CPU offload)",
             setup_s=setup_s, device_map_entries={**placed, "cpu": sum(1 for v in device_map.values() if v == "cpu")},
             cuda_max_allocated={str(g): torch.cuda.max_memory_allocated(g) for g in gpus})
    remove_hook_from_submodules(model)  # offloaded weights come back from accelerate's weights map
    model.to("cpu")
    return r


# ------------------------------------------------------------------------------------------- driver
def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    cuda = not args.cpu
    physical = ["cuda:0", "cuda:1"] if cuda else ["cpu", "cpu"]
    shape = dict(LLAMA_70B) if cuda else dict(TINY)
    if args.layers:
        shape["layers"] = args.layers
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"setting": "cuda" if cuda else "cpu (two logical host devices, streaming from disk)",
                           "shape": shape, "dtype": "bfloat16" if cuda else "float32", "cap": args.cap,
                           "headroom": args.headroom, "torch": torch.__version__, "host_cores": os.cpu_count(),
                           "load_average_start": os.getloadavg(), "rows": [], "rounds": []}
    if cuda:
        res["devices"] = [torch.cuda.get_device_name(i) for i in range(2)]
    save = lambda: _save(res, out)
    t0 = time.perf_counter()
    model = build(shape, dtype=torch.bfloat16 if cuda else torch.float32, seed=args.seed,
                  fill_device="cuda:0" if cuda else "cpu")
    res["model_bytes"] = module_bytes(model)
    res["build_s"] = time.perf_counter() - t0
    _say(f"built {format_bytes(res['model_bytes'])} in {res['build_s']:.0f}s")
    prompt = torch.randint(0, shape["vocab"], (1, args.prompt_len), generator=torch.Generator().manual_seed(args.seed))
    if cuda:
        res["links"] = link_bandwidth(physical, args.link_bytes, args.link_repeats)
        together = res["links"]["together"]
        _say("links: " + ", ".join(f"{d} {v['Bps'] / 1e9:.1f} GB/s alone, {together[d]['Bps'] / 1e9:.1f} together"
                                   for d, v in res["links"]["alone"].items()))
        save()
    # The timed rows first (a run cut short keeps them), the reference after; tokens are compared at the end.
    rows = [("ours, 2 devices", lambda: run_ours(model, prompt, physical, args,
                                                 "ours, 2 devices at the cap each, interleaved")),
            ("ours, 1 device", lambda: run_ours(model, prompt, physical[:1], args, "ours, 1 device at the cap")),
            ("ours, 2 devices, contiguous", lambda: run_ours(model, prompt, physical, args,
                                                             "ours, 2 devices at the cap each, contiguous halves",
                                                             layout="contiguous"))]
    if cuda:
        rows.insert(1, ("accelerate, 2 GPUs", lambda: run_accelerate(model, prompt, [0, 1], args)))
    for k in range(args.rounds):
        order = rows[k % len(rows):] + rows[:k % len(rows)]
        got = {}
        for key, fn in order:
            row = fn()
            row.update(round=k, load_average=os.getloadavg())
            res["rows"].append(row)
            got[key] = row["tokens_per_s"]
            _say(f"round {k} {row['name']}: {row['tokens_per_s']:.3f} tok/s")
            save()
            _cleanup(cuda)
        ratios = {"2 vs 1 device": got["ours, 2 devices"] / got["ours, 1 device"],
                  "interleaved vs contiguous": got["ours, 2 devices"] / got["ours, 2 devices, contiguous"]}
        if "accelerate, 2 GPUs" in got:
            ratios["2 devices vs accelerate"] = got["ours, 2 devices"] / got["accelerate, 2 GPUs"]
        res["rounds"].append(ratios)
    res["ratios_median"] = {k: statistics.median(r[k] for r in res["rounds"]) for k in res["rounds"][0]}
    save()
    res["reference"] = run_reference(model, prompt, physical, args)
    _compare(res)
    save()
    _cleanup(cuda)
    if args.int4:
        t0 = time.perf_counter()
        res["int4_quantized_linears"] = quantize_int4(model, physical[0])
        res["int4_quantize_s"] = time.perf_counter() - t0
        for n in (1, 2):
            row = run_ours(model, prompt, physical[:n], args, f"ours int4 (g128), {n} device(s) at the cap")
            row.update(load_average=os.getloadavg())
            res.setdefault("int4_rows", []).append(row)
            _say(f"{row['name']}: {row['tokens_per_s']:.3f} tok/s")
            _compare(res)
            save()
            _cleanup(cuda)
    res["load_average_end"] = os.getloadavg()
    save()
    return res


def _compare(res: dict[str, Any]) -> None:
    """Each row's greedy tokens against the reference's (accelerate decodes fewer: its prefix)."""
    ref = res.get("reference", {}).get("tokens")
    if ref is None:
        return
    for row in res["rows"] + res.get("int4_rows", []):
        tokens = row["tokens"]
        row["tokens_match_reference"] = tokens == ref[:len(tokens)]
        row["tokens_agree_with_reference"] = sum(a == b for a, b in zip(tokens, ref)) / len(tokens)


def _cleanup(cuda: bool) -> None:
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()


def _say(line: str) -> None:
    print(f"multi_gpu: {line}", flush=True)


def _save(res: dict[str, Any], out: Path) -> None:
    (out / "multi_gpu.json").write_text(json.dumps(res, indent=2, default=str))
    (out / "multi_gpu.md").write_text(to_markdown(res))


def to_markdown(res: dict[str, Any]) -> str:
    lines = [f"# Multi-device streaming decode ({res['setting']})", "",
             (f"Model {res['shape']} {res['dtype']} ({format_bytes(res.get('model_bytes', 0))}), per-device cap "
             f"{format_bytes(res['cap'])} (store budget = cap - {format_bytes(res['headroom'])}), "
             f"torch {res['torch']}, "
             f"load average {res['load_average_start']} at start."), ""]
    links = res.get("links")
    if links:
        lines += ["| link | alone GB/s (spread) | all links at once GB/s (spread) |", "| --- | --- | --- |"]
        for d, v in links["alone"].items():
            t = links["together"][d]
            lines.append(f"| host->{d} pinned | {v['Bps'] / 1e9:.1f} ({v['spread']:.0%}) | {t['Bps'] / 1e9:.1f} "
                         f"({t['spread']:.0%}) |")
        lines += [f"| aggregate, all at once | | {links['together']['aggregate_Bps'] / 1e9:.1f} |", ""]
    ref = res.get("reference", {})
    lines += [("| row | round | tok/s | tokens = reference | streamed / token | per-device resident blocks | "
              "link GB/s during decode | load |"), "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    if "tokens_per_s" in ref:
        lines.append(f"| {ref['name']} | | {ref['tokens_per_s']:.3f} | (reference) | 0 | all | | |")
    for r in res["rows"] + res.get("int4_rows", []):
        resident = ", ".join(f"{n}: {d['resident_blocks']}" for n, d in r.get("devices", {}).items())
        link = ", ".join(f"{n}: {v['bytes_per_s'] / 1e9:.1f}" for n, v in r.get("links", {}).items())
        streamed = format_bytes(r["streamed_bytes_per_token"]) if "streamed_bytes_per_token" in r else "offload"
        lines.append(f"| {r['name']} | {r.get('round', '')} | {r['tokens_per_s']:.3f} | "
                     f"{r.get('tokens_match_reference')} "
                     f"| {streamed} | {resident} | {link} | {r['load_average'][0]:.1f} |")
    if res.get("ratios_median"):
        lines += ["", "Per-round ratios (same process): " + "; ".join(
            f"{k}: {[round(r[k], 2) for r in res['rounds']]} (median {v:.2f})"
            for k, v in res["ratios_median"].items())]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None, *, gpus: int | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for multi_gpu.json / multi_gpu.md")
    p.add_argument("--cpu", action="store_true", help="tiny model on two logical host devices (the tested path)")
    p.add_argument("--cap", default=None, help="per-device cap (default 40GiB on GPUs, 30%% of the model on --cpu)")
    p.add_argument("--headroom", default=None, help="left out of each store budget (default 1GiB; 0 on --cpu)")
    p.add_argument("--layers", type=int, default=0, help="fewer layers than the shape's (0: the shape's)")
    p.add_argument("--new-tokens", type=int, default=5)
    p.add_argument("--accelerate-tokens", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--lookahead", type=int, default=6, help="units in flight per device (6: a Llama block's 7 linears)")
    p.add_argument("--no-int4", dest="int4", action="store_false")
    p.add_argument("--link-bytes", default="1GiB")
    p.add_argument("--link-repeats", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not args.cpu:
        n = gpu_count() if gpus is None else gpus
        if n < 2:
            print(f"multi_gpu: needs 2 CUDA GPUs, {n} visible; run it on a 2-GPU machine (or --cpu for the "
                  "two-logical-device path).", file=sys.stderr)
            return 2
    if args.cpu:
        model_bytes = module_bytes_of(TINY if not args.layers else {**TINY, "layers": args.layers})
        args.cap = parse_bytes(args.cap, what="--cap") if args.cap else int(0.3 * model_bytes)
        args.headroom = parse_bytes(args.headroom or 0, what="--headroom")
    else:
        args.cap = parse_bytes(args.cap or "40GiB", what="--cap")
        args.headroom = parse_bytes(args.headroom or "1GiB", what="--headroom")
    args.link_bytes = parse_bytes(args.link_bytes, what="--link-bytes")
    run(args)
    return 0


def module_bytes_of(shape: dict[str, int]) -> int:
    """float32 bytes of a Llama of ``shape`` (for --cpu's default cap), from its config on the meta device."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=shape["hidden"], intermediate_size=shape["intermediate"],
                      num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                      num_key_value_heads=shape["kv_heads"], vocab_size=shape["vocab"], tie_word_embeddings=False)
    with torch.device("meta"):
        return 4 * sum(p.numel() for p in LlamaForCausalLM(cfg).parameters())


if __name__ == "__main__":
    sys.exit(main())
