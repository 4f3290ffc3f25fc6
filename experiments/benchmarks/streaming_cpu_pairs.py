"""Streamed vs in-RAM decode interleaved token by token: ratios that survive a loaded machine.

The round-based benchmark (:mod:`experiments.benchmarks.streaming_cpu`) runs each configuration for a few seconds
at a time; on a shared 2-core machine the load changes between those windows and the per-round ratios spread
(0.5-2.5x seen at load 3-5). Here every configuration is open at once (the in-RAM model, and one copy of it per
streamed configuration, each in its own Session at the same RAM cap) and they take turns one decode step each, in a
rotated order: each cycle compares steps taken within ~0.5 s of one another. Reported per configuration: the
median over cycles of (in-RAM step time / its step time), the IQR/median of those ratios, the median per-step wall
and process CPU milliseconds, and whether its greedy tokens equal the in-RAM model's. The load average is recorded.

Run: ``python -m experiments.benchmarks.streaming_cpu_pairs [--rows ours ours-prev eager-thp] [--steps 40]``.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import torch

from experiments.benchmarks.streaming import build_llama, weight_bytes
from experiments.benchmarks.streaming_cpu import ROWS, on_huge_pages, session_spec
from runtime.session import Session, quantize_linears


def run(*, rows: Sequence[str], steps: int, warmup: int, threads: int, ram_fraction: float = 0.30,
        seed: int = 0, hidden: int = 1024, intermediate: int = 2816, layers: int = 12, heads: int = 16,
        vocab: int = 8000, prompt_len: int = 16) -> dict[str, Any]:
    """Open every row (warm rows of ours and the in-RAM ones, fp32 or int8), then step them in turns."""
    bad = [r for r in rows if r not in ROWS or ROWS[r].cold or ROWS[r].kind == "accelerate"]
    if bad:
        raise SystemExit(f"--rows: {bad} are not warm rows of streaming_cpu.ROWS (no cold or accelerate rows)")
    torch.set_num_threads(threads)
    model = build_llama(hidden=hidden, intermediate=intermediate, layers=layers, heads=heads, vocab=vocab,
                        dtype=torch.float32, seed=seed)
    total = weight_bytes(model)
    cap = int(total * ram_fraction)
    block = weight_bytes(model.model.layers[0])
    linear_max = max(m.weight.numel() * 4 for m in model.model.layers[0].modules() if isinstance(m, torch.nn.Linear))
    prompt = torch.randint(0, vocab, (1, prompt_len), generator=torch.Generator().manual_seed(seed))
    models: dict[str, Any] = {"eager": model}
    qmodel = None
    if any(ROWS[r].weights == "int8" for r in rows):
        qmodel = copy.deepcopy(model)
        for layer in qmodel.model.layers:
            quantize_linears(layer, "int8")
    res: dict[str, Any] = {"rows": {}, "threads": threads, "steps": steps, "warmup": warmup, "cap_bytes": cap,
                           "model_bytes": total, "torch": torch.__version__, "load_1min": [os.getloadavg()[0]]}
    with tempfile.TemporaryDirectory(prefix="jalapeno-pairs-") as tmp, contextlib.ExitStack() as stack:
        for name in rows:
            row = ROWS[name]
            if name == "eager":
                continue
            if row.weights == "fp32-thp":
                models[name], res["eager_thp_huge_fraction"] = on_huge_pages(model)
                continue
            if name == "int8-ram":
                models[name] = qmodel
                continue
            base = qmodel if row.weights == "int8" else model
            m = copy.deepcopy(base)
            spec = session_spec(row, os.path.join(tmp, name), n_layers=len(model.model.layers),
                                block_bytes=weight_bytes(base.model.layers[0]),
                                rest_bytes=total - len(model.model.layers) * block, cap=cap, linear_max=linear_max)
            stack.enter_context(Session(m, spec))
            models[name] = m
        names = ["eager", *[r for r in rows if r != "eager"]]
        state: dict[str, Any] = {}
        wall: dict[str, list[float]] = {n: [] for n in names}
        cpu: dict[str, list[float]] = {n: [] for n in names}
        tokens: dict[str, list[int]] = {n: [] for n in names}
        with torch.no_grad():
            for n in names:
                out = models[n](input_ids=prompt, use_cache=True)
                state[n] = (out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True))
                tokens[n].append(int(state[n][1]))
            for i in range(warmup + steps):
                k = i % len(names)
                for n in names[k:] + names[:k]:
                    past, tok = state[n]
                    t0, c0 = time.perf_counter(), time.process_time()
                    out = models[n](input_ids=tok, past_key_values=past, use_cache=True)
                    tok = out.logits[:, -1].argmax(-1, keepdim=True)
                    tokens[n].append(int(tok))
                    if i >= warmup:
                        wall[n].append(time.perf_counter() - t0)
                        cpu[n].append(time.process_time() - c0)
                    state[n] = (out.past_key_values, tok)
        res["load_1min"].append(os.getloadavg()[0])
    for n in names:
        ratios = [a / b for a, b in zip(wall["eager"], wall[n])]
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        res["rows"][n] = {"label": ROWS[n].label, "vs_ram_median": statistics.median(ratios),
                          "vs_ram_iqr_over_median": (q[2] - q[0]) / statistics.median(ratios),
                          "step_ms": statistics.median(wall[n]) * 1e3, "cpu_ms": statistics.median(cpu[n]) * 1e3,
                          "tokens_match_ram": tokens[n] == tokens["eager"],
                          "token_agreement_ram": sum(a == b for a, b in zip(tokens[n], tokens["eager"]))
                          / len(tokens["eager"]),
                          "tokens_match_int8_ram": (tokens[n] == tokens["int8-ram"]
                                                    if ROWS[n].weights == "int8" and "int8-ram" in tokens else None),
                          "step_ms_each": [round(x * 1e3, 2) for x in wall[n]],
                          "cpu_ms_each": [round(x * 1e3, 2) for x in cpu[n]]}
    return res


def to_markdown(res: dict[str, Any]) -> str:
    lines = [(f"{res['threads']} threads, torch {res['torch']}, {res['steps']} timed steps per configuration after "
             f"{res['warmup']} warm-up, configurations stepping in turns (rotated each cycle); RAM cap "
             f"{res['cap_bytes'] / 2**20:.0f} MiB of {res['model_bytes'] / 1e9:.2f} GB fp32; load average (1 min) "
             f"{res['load_1min'][0]:.1f} → {res['load_1min'][1]:.1f}"
             + (f"; in-RAM on huge pages: {res['eager_thp_huge_fraction']:.0%} backed by 2 MiB pages"
                if "eager_thp_huge_fraction" in res else "") + "."), "",
             ("| configuration | × in-RAM fp32, median of per-cycle ratios | IQR / median | step ms (median) | "
              "CPU ms / step | tokens = in-RAM fp32 |"), "| --- | --- | --- | --- | --- | --- |"]
    for r in res["rows"].values():
        match = str(r["tokens_match_ram"])
        if r.get("tokens_match_int8_ram") is not None:
            match = f"{r['token_agreement_ram']:.0%} agree; = int8 in RAM: {r['tokens_match_int8_ram']}"
        lines.append(f"| {r['label']} | {r['vs_ram_median']:.3f}× | {r['vs_ram_iqr_over_median']:.0%} | "
                     f"{r['step_ms']:.1f} | {r['cpu_ms']:.1f} | {match} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=["eager", "eager-thp", "ours", "ours-mmap", "ours-prev"])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    parser.add_argument("--md")
    args = parser.parse_args(argv)
    res = run(rows=args.rows, steps=args.steps, warmup=args.warmup, threads=args.threads)
    table = to_markdown(res)
    print(table)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
    if args.md:
        with open(args.md, "w") as fh:
            fh.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
