"""Where the streamed fp32 decode loses to the in-RAM model: one process, configurations stepping token by token.

Per configuration and step: wall, user and system CPU (``getrusage``: the kernel's share is page faults,
``madvise`` and TLB shootdowns), minor faults, the time inside the decoder blocks' forwards with the weights
bound (the GEMMs, measured between the Streamer's hooks) and the time the hooks themselves take. Variants besides
the Session's default (``ours``; ``ours-auto`` and ``ours-rebind`` are :mod:`.streaming_cpu`'s rows) there is
one that is a diagnostic only, never a default:

* ``keep``: the same Session with the Streamer's per-use ``MADV_DONTNEED`` made a no-op on the instance, so every
  mapped page stays mapped after its first use (RSS grows to the whole model: over the cap). What the drop and
  the refaults cost.

Run: ``python -m experiments.benchmarks.streaming_cpu_diag [--steps 30]``; prints a table, ``--json`` saves it.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from experiments.benchmarks.streaming import build_llama, weight_bytes
from experiments.benchmarks.streaming_cpu import ROWS, session_spec
from runtime.session import Session

VARIANTS = ("eager", "ours", "ours-auto", "ours-rebind", "keep")


class _BlockClock:
    """Sums the time decoder blocks spend in forward with weights bound (inner) and including hooks (outer)."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        self.inner = self.outer = 0.0
        self._t: dict[int, float] = {}
        self.handles = []
        for layer in layers:
            self.handles.append(layer.register_forward_pre_hook(self._outer_start, prepend=True))
            self.handles.append(layer.register_forward_pre_hook(self._inner_start))
            self.handles.append(layer.register_forward_hook(self._inner_end, prepend=True))
            self.handles.append(layer.register_forward_hook(self._outer_end))

    def _outer_start(self, m: nn.Module, a: Any) -> None:
        self._t[id(m) * 2] = time.perf_counter()

    def _inner_start(self, m: nn.Module, a: Any) -> None:
        self._t[id(m) * 2 + 1] = time.perf_counter()

    def _inner_end(self, m: nn.Module, a: Any, o: Any) -> None:
        self.inner += time.perf_counter() - self._t[id(m) * 2 + 1]

    def _outer_end(self, m: nn.Module, a: Any, o: Any) -> None:
        self.outer += time.perf_counter() - self._t[id(m) * 2]

    def take(self) -> tuple[float, float]:
        out = (self.inner, self.outer)
        self.inner = self.outer = 0.0
        return out


def run(*, steps: int = 30, warmup: int = 3, threads: int = 2, variants: Sequence[str] = VARIANTS,
        ram_fraction: float = 0.30, seed: int = 0, hidden: int = 1024, intermediate: int = 2816, layers: int = 12,
        heads: int = 16, vocab: int = 8000, prompt_len: int = 16) -> dict[str, Any]:
    torch.set_num_threads(threads)
    model = build_llama(hidden=hidden, intermediate=intermediate, layers=layers, heads=heads, vocab=vocab,
                        dtype=torch.float32, seed=seed)
    total = weight_bytes(model)
    cap = int(total * ram_fraction)
    block = weight_bytes(model.model.layers[0])
    linear_max = max(m.weight.numel() * 4 for m in model.model.layers[0].modules() if isinstance(m, nn.Linear))
    prompt = torch.randint(0, vocab, (1, prompt_len), generator=torch.Generator().manual_seed(seed))
    models: dict[str, nn.Module] = {}
    res: dict[str, Any] = {"threads": threads, "steps": steps, "cap_bytes": cap, "model_bytes": total,
                           "load_1min": [os.getloadavg()[0]], "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                           "rows": {}}
    with tempfile.TemporaryDirectory(prefix="jalapeno-diag-") as tmp, contextlib.ExitStack() as stack:
        for name in variants:
            if name == "eager":
                models[name] = model
                continue
            m = copy.deepcopy(model)
            spec = session_spec(ROWS["ours" if name == "keep" else name], os.path.join(tmp, name), n_layers=layers, block_bytes=block,
                                rest_bytes=total - layers * block, cap=cap, linear_max=linear_max)
            session = stack.enter_context(Session(m, spec))
            if name == "keep":
                mapped = session.streamer._mapped
                assert mapped is not None
                mapped.drop = lambda rng: None  # diagnostic: pages stay mapped after use
            models[name] = m
        clocks = {n: _BlockClock(m.model.layers) for n, m in models.items()}
        names = list(models)
        rec: dict[str, dict[str, list[float]]] = {n: {k: [] for k in ("wall", "user", "sys", "minflt", "inner",
                                                                       "outer")} for n in names}
        tokens: dict[str, list[int]] = {n: [] for n in names}
        state: dict[str, Any] = {}
        with torch.no_grad():
            for n in names:
                out = models[n](input_ids=prompt, use_cache=True)
                state[n] = (out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True))
                clocks[n].take()
            for i in range(warmup + steps):
                k = i % len(names)
                for n in names[k:] + names[:k]:
                    past, tok = state[n]
                    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
                    out = models[n](input_ids=tok, past_key_values=past, use_cache=True)
                    tok = out.logits[:, -1].argmax(-1, keepdim=True)
                    t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
                    inner, outer = clocks[n].take()
                    tokens[n].append(int(tok))
                    state[n] = (out.past_key_values, tok)
                    if i < warmup:
                        continue
                    d = rec[n]
                    d["wall"].append((t1 - t0) * 1e3)
                    d["user"].append((r1.ru_utime - r0.ru_utime) * 1e3)
                    d["sys"].append((r1.ru_stime - r0.ru_stime) * 1e3)
                    d["minflt"].append(r1.ru_minflt - r0.ru_minflt)
                    d["inner"].append(inner * 1e3)
                    d["outer"].append(outer * 1e3)
        res["load_1min"].append(os.getloadavg()[0])
    for n in names:
        d = rec[n]
        ratios = [a / b for a, b in zip(rec[names[0]]["wall"], d["wall"])]
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        res["rows"][n] = {**{k: statistics.median(v) for k, v in d.items()},
                          "vs_first_median": statistics.median(ratios),
                          "vs_first_iqr_over_median": (q[2] - q[0]) / statistics.median(ratios),
                          "tokens_match_first": tokens[n] == tokens[names[0]]}
    return res


def to_markdown(res: dict[str, Any]) -> str:
    lines = [(f"{res['threads']} threads, {res['steps']} steps each, token by token in turns; load "
              f"{res['load_1min'][0]:.1f} -> {res['load_1min'][1]:.1f}; OMP_WAIT_POLICY "
              f"{res.get('omp_wait_policy') or 'unset'}; medians per step."), "",
             ("| variant | x first (median ratio) | IQR / median | wall ms | user ms | sys ms | minor faults | blocks bound ms | "
              "blocks incl. hooks ms | tokens = first |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for n, r in res["rows"].items():
        spread = r.get("vs_first_iqr_over_median")
        lines.append(f"| {n} | {r['vs_first_median']:.3f} | {'-' if spread is None else f'{spread:.0%}'} | {r['wall']:.1f} | {r['user']:.1f} | {r['sys']:.1f} | "
                     f"{r['minflt']:.0f} | {r['inner']:.1f} | {r['outer']:.1f} | {r['tokens_match_first']} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    res = run(steps=args.steps, threads=args.threads, variants=args.variants)
    print(to_markdown(res))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
