"""Where a captured decode step's time goes on a GPU (issue 16): per-kernel device time of graph replays.

The Llama shape of ``streaming gpu`` (hidden 4096, 16 layers, bf16 7.0 GB, batch 1), every weight resident. Steps on one
model in one process: the Session's default (``GraphDecoder(session)``: exact fused ops — RMSNorm in one kernel
summed in torch's order, the step's tail in one kernel —, q/k/v and gate/up on parallel streams), session 8's
default (RMSNorm as three kernels, the tail as torch ops), the plan with q/k/v and gate/up fused, the one-kernel
RMSNorm in its own order (``ops="triton-fast"``, not exact), and with ``--all`` the products one after the other,
flash attention, ``l2_prefetch`` and SDPA's memory-efficient kernel. For each:

- time per token: CUDA events around ``--replays`` back-to-back replays, interleaved rounds, median over rounds,
  against the device copy bound measured in the same run;
- tokens: the step's greedy tokens against Hugging Face eager's (same prompt, same count);
- where the time goes: ``torch.profiler`` over ``--profile-replays`` replays (CUPTI records the kernels a graph
  launches), each kernel's device time grouped by what it does (products, RMSNorm, RoPE + cache write,
  attention, SiLU·up, bookkeeping), per token; the sum of kernel times against the step's wall time shows
  the gaps between kernels (or, with branches, the overlap).

Run: ``python -m experiments.benchmarks.streaming_gpu_profile --json p.json --md p.md`` (on a CUDA GPU; ~1-2 min).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch

from experiments.benchmarks.decode_graphs import fused_copy, hbm_copy_bandwidth
from experiments.benchmarks.streaming import _resident_spec, build_llama, decode, session8_ops, weight_bytes
from runtime.decode_graph import GraphDecoder
from runtime.session import Session

# kernel name -> what it does (first match wins; names as cuBLAS, Triton and torch print them)
# (session 8's committed profiles ran with an earlier list that counted cuBLAS's splitKreduce_kernel as RMSNorm)
CATEGORIES = (
    ("products (GEMV)", r"gemv|gemm|nvjet|cutlass|sm90_|splitk|splitK|Kernel2|tinygemm|matmul"),
    ("rmsnorm", r"add_square|norm_apply|add_rms_norm|MeanOps"),
    ("step tail (logits, argmax, position, mask)", r"greedy_tail"),
    ("rope + cache write", r"rope_cache"),
    ("silu*up", r"silu_mul"),
    ("attention", r"fmha|attention|flash|efficient|cudnn|softmax"),
    ("bookkeeping (argmax, copies, mask)", r"ArgMax|argmax|arg_max|copy|where|fill|add|elementwise|index"),
)


def category(name: str) -> str:
    for label, pattern in CATEGORIES:
        if re.search(pattern, name):
            return label
    return "other"


def time_replays(dec: GraphDecoder, prompt: torch.Tensor, replays: int, cache: int) -> float:
    """Seconds per token of ``replays`` back-to-back replays (CUDA events), after a fresh prefill (``cache``: the
    new tokens the static cache is sized for, the same in every call so that one graph is captured)."""
    dec.start(prompt, cache)
    for _ in range(3):
        dec.step()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays - 3):
        dec.step()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / (replays - 3)


def profile_replays(dec: GraphDecoder, prompt: torch.Tensor, replays: int, cache: int) -> dict[str, Any]:
    """Device time per token by kernel category (and the top kernels) over ``replays`` graph replays."""
    from torch.profiler import ProfilerActivity, profile

    dec.start(prompt, cache)
    for _ in range(3):
        dec.step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            dec.step()
        torch.cuda.synchronize()
    kernels: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for evt in prof.events():
        if getattr(evt, "device_type", None) != torch.autograd.DeviceType.CUDA:
            continue
        if "memcpy" in evt.name.lower() or "memset" in evt.name.lower():
            continue
        kernels[evt.name][0] += evt.device_time_total if hasattr(evt, "device_time_total") else evt.cuda_time_total
        kernels[evt.name][1] += 1
    by_cat: dict[str, dict[str, float]] = defaultdict(lambda: {"us_per_token": 0.0, "kernels_per_token": 0.0})
    for name, (us, n) in kernels.items():
        c = by_cat[category(name)]
        c["us_per_token"] += us / replays
        c["kernels_per_token"] += n / replays
    top = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:12]
    return {"replays": replays, "categories": dict(by_cat),
            "kernel_us_per_token": sum(us for us, _ in kernels.values()) / replays,
            "kernels_per_token": sum(n for _, n in kernels.values()) / replays,
            "top": [{"name": n[:120], "us_per_token": us / replays, "per_token": c / replays,
                     "category": category(n)} for n, (us, c) in top]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    dev = torch.device("cuda:0")
    model = build_llama(hidden=4096, intermediate=11008, layers=16, heads=32, vocab=32000, dtype=torch.bfloat16,
                        seed=args.seed, fill_device="cuda").to(dev)
    total = weight_bytes(model)
    prompt = torch.randint(0, 32000, (1, 16), generator=torch.Generator().manual_seed(args.seed))
    hbm = hbm_copy_bandwidth()
    res: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                           "model_bytes": total, "hbm_copy_Bps": hbm, "bound_tok_s": hbm / total, "rows": []}
    print(f"device copy {hbm / 1e12:.2f} TB/s -> bound {hbm / total:.0f} tok/s", flush=True)
    ref = decode(model, prompt, new_tokens=args.tokens, warmup=0, device=dev)["tokens"]  # HF eager greedy
    fmodel = fused_copy(model)
    with Session(model, _resident_spec(model), graphs=False) as session, \
            Session(fmodel, _resident_spec(fmodel), graphs=False) as fsession:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        decs = {"the Session's default (one-kernel RMSNorm in torch's order, fused tail, parallel branches)":
                GraphDecoder(session),
                "session 8's default (three-kernel RMSNorm, torch's tail)": session8_ops(GraphDecoder(session)),
                "plan with q/k/v and gate/up fused": GraphDecoder(fsession),
                "one-kernel RMSNorm in its own order (ops='triton-fast', not exact)":
                GraphDecoder(session, ops="triton-fast")}
        if args.all:  # measured in session 8 (streaming_gpu_s8_profile*.md): none faster than that default
            decs.update({"products one after the other": GraphDecoder(session, branches=False),
                         "default + flash attention over the filled positions": GraphDecoder(session, attention="flash"),
                         "default + weights read into L2 ahead (l2_prefetch)": GraphDecoder(session, l2_prefetch=True),
                         "default, captured with SDPA's memory-efficient kernel": GraphDecoder(session)})
        backend = {"default, captured with SDPA's memory-efficient kernel": SDPBackend.EFFICIENT_ATTENTION}
        rows = {name: {"name": name, "rounds_s": []} for name in decs}
        cache = max(args.replays, args.profile_replays, args.tokens + 1) + 8
        for name, dec in decs.items():
            ctx = sdpa_kernel([backend[name]]) if name in backend else contextlib.nullcontext()
            with ctx:  # the step is captured here: the graph keeps the attention kernel chosen now
                out = dec.generate(prompt, max_new_tokens=cache)[:, :prompt.shape[1] + args.tokens + 1]
            rows[name]["tokens_match_hf_eager"] = out[0, prompt.shape[1]:].tolist() == ref
            rows[name]["ops"] = dec.ops.name
            rows[name]["ops_report"] = getattr(dec.ops, "report", None)
            rows[name]["attention"] = dec.attention_report
        names = list(decs)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                rows[name]["rounds_s"].append(time_replays(decs[name], prompt, args.replays, cache))
        for name, dec in decs.items():
            row = rows[name]
            row["s_per_token"] = statistics.median(row["rounds_s"])
            row["tok_s"] = 1 / row["s_per_token"]
            row["bound_fraction"] = row["tok_s"] / res["bound_tok_s"]
            try:
                row["profile"] = profile_replays(dec, prompt, args.profile_replays, cache)
            except Exception as exc:  # noqa: BLE001 - a diagnostic: keep the timings
                row["profile"] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"{name}: {row['tok_s']:.1f} tok/s ({100 * row['bound_fraction']:.1f}% of the copy bound), "
                  f"rounds {[round(1 / s, 1) for s in row['rounds_s']]}, tokens = HF eager: "
                  f"{row['tokens_match_hf_eager']}", flush=True)
            res["rows"].append(row)
            dec.close()
    return res


def to_markdown(res: dict[str, Any]) -> str:
    lines = [f"Device: {res['device']}, torch {res['torch']}. Model {res['model_bytes'] / 1e9:.2f} GB bf16, batch 1; "
             f"device copy (read+write) {res['hbm_copy_Bps'] / 1e12:.2f} TB/s -> bound {res['bound_tok_s']:.0f} tok/s.",
             "", "| step | tok/s | % of copy bound | rounds tok/s | tokens = HF eager | kernel time / token | "
             "kernels / token |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in res["rows"]:
        p = r.get("profile", {})
        lines.append(f"| {r['name']} | {r['tok_s']:.1f} | {100 * r['bound_fraction']:.1f}% | "
                     f"{', '.join(f'{1 / s:.1f}' for s in r['rounds_s'])} | {r['tokens_match_hf_eager']} | "
                     f"{p.get('kernel_us_per_token', float('nan')):.0f} us (step {r['s_per_token'] * 1e6:.0f} us) | "
                     f"{p.get('kernels_per_token', float('nan')):.0f} |")
    for r in res["rows"]:
        p = r.get("profile", {})
        if "categories" not in p:
            lines.append(f"\nProfile of '{r['name']}': {p.get('error')}")
            continue
        lines += ["", f"**{r['name']}**: device time per token by kernel kind", "",
                  f"Attention: {r.get('attention')}.", "",
                  "| kind | us / token | kernels / token |", "| --- | --- | --- |"]
        for cat, c in sorted(p["categories"].items(), key=lambda kv: -kv[1]["us_per_token"]):
            lines.append(f"| {cat} | {c['us_per_token']:.1f} | {c['kernels_per_token']:.1f} |")
        lines.append("\nTop kernels: " + "; ".join(f"{t['name'][:60]} {t['us_per_token']:.0f} us x{t['per_token']:.0f}"
                                                  for t in p["top"][:6]))
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=28, help="greedy tokens compared with Hugging Face eager")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--replays", type=int, default=100)
    parser.add_argument("--profile-replays", type=int, default=20)
    parser.add_argument("--all", action="store_true", help="also the L2-prefetch and memory-efficient-SDPA steps")
    parser.add_argument("--json")
    parser.add_argument("--md")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (none is visible)")
    res = run(args)
    table = to_markdown(res)
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1, default=str)
    if args.md:
        with open(args.md, "w") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
