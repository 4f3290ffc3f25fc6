"""Expert streaming benchmark: Markov / hybrid prefetch vs LRU-only vs gate-speculative, expert cache of 25% of the experts.

Two models, one run:

* ``tiny-moe`` (the zoo's trained Mixtral: 4 layers x 8 experts, top-2, hidden 256) with its **real
  routing**: greedy generation from a prompt of Python source; the experts live on the slower tier (``disk``
  on CPU, pinned ``cpu`` next to a GPU) and a cache of 8 of the 32 experts sits on the execution device.
* ``replay`` — a random-weight Mixtral of a larger shape (hidden 1024, intermediate 3584, 8 experts, 4
  layers, vocab 256: 44 MB per expert in float32) whose routers are overridden, call by call, with the routing
  tiny-moe produced in the run above (same prompt length, same number of tokens): real routing traces, with
  transfers big enough to matter. The gate-speculative baseline and the hybrid (Markov prior x gate) there
  replay the predictions they made on tiny-moe's own hidden states (a random router would predict nothing
  real); Markov and LRU see only the routing.

Per configuration: hit rate (routed experts already resident or arriving), prefetch hit rate (prefetched
experts used before eviction), bytes moved per token, and tokens/s = new tokens / wall time of the whole
``generate`` (prefill included), median of ``--repeats`` runs interleaved across policies (each run starts
with an empty cache and an untrained prefetcher). Ratios are against LRU-only and against Markov at the same
lookahead, from the same run. The unstreamed model (all experts resident) is timed alongside as the ceiling.
``host ms/token`` is the time spent inside the prefetcher's ``observe_routing`` + ``predict`` (every policy
runs behind the same timing wrapper).

Disk tier on CPU: the store's safetensors files were just written, so reads come from the page cache
(memory copies through ``preadv``), not from the device: a lower bound on what a cold disk would cost.

Run: ``python -m experiments.benchmarks.experts --device cpu --out experiments/benchmarks/results/experts_cpu.md``
(``--policies lru,gate,markov,markov-la3,hybrid,hybrid-la3`` picks rows; the hybrid results were made with
``--policies all --out experiments/benchmarks/results/experts_hybrid_cpu.md``).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Any

import torch
from torch import nn

from runtime.experts import ExpertConfig, ExpertStreamer, find_expert_modules
from runtime.prefetch import ExpertPrefetcher
from runtime.tensors import TensorStore

PROMPT = b"def parse_args(argv=None):\n    parser = argparse.ArgumentParser("
# (row name, prefetch policy, lookahead): fetches started ahead per MoE layer
ALL_POLICIES = (("lru", "lru", 0), ("gate", "gate", 2), ("markov", "markov", 2), ("markov-la3", "markov", 3),
                ("hybrid", "hybrid", 2), ("hybrid-la3", "hybrid", 3))
POLICIES = ALL_POLICIES[:4]  # the committed experts_cpu/gpu results; --policies all adds the hybrid rows
NEEDS_HIDDEN = ("gate", "hybrid")  # policies replayed from tiny-moe's predictions on the large shape


class RecordingPrefetcher(ExpertPrefetcher):
    """Wraps a prefetcher and records what it predicted at each routing call (for the replay)."""

    def __init__(self, inner: ExpertPrefetcher, *, record: bool = True) -> None:
        super().__init__(inner.num_layers, inner.num_experts, depth=inner.depth)
        self.inner, self.log, self.record = inner, [], record
        self.host_s = 0.0  # time inside the wrapped prefetcher's observe_routing + predict

    def observe_routing(self, layer: int, rows: Any, *, hidden: Any = None) -> None:
        start = time.perf_counter()
        self.inner.observe_routing(layer, rows, hidden=hidden)
        self.host_s += time.perf_counter() - start

    def next_layer(self, layer: int) -> int:
        return self.inner.next_layer(layer)

    def _observe_rows(self, *a: Any, **k: Any) -> None:  # observe_routing is forwarded whole
        raise AssertionError

    def predict(self, k: int) -> list[int]:
        start = time.perf_counter()
        out = self.inner.predict(k)
        self.host_s += time.perf_counter() - start
        if self.record:
            self.log.append(out)
        return out

    def _predict(self, k: int) -> list[int]:
        raise AssertionError


class ReplayPrefetcher(ExpertPrefetcher):
    """Returns recorded predictions, call by call."""

    def __init__(self, num_layers: int, num_experts: int, log: list[list[int]]) -> None:
        # depth as in the recorded run (ExpertConfig's default: every layer): the streamer sizes predict(k) on it
        super().__init__(num_layers, num_experts, depth=num_layers)
        self.log, self.calls = log, 0

    def _observe_rows(self, *a: Any, **k: Any) -> None:
        return None

    def _predict(self, k: int) -> list[int]:
        out = self.log[self.calls][:k] if self.calls < len(self.log) else []
        self.calls += 1
        return out

    def predict(self, k: int) -> list[int]:  # called even when k is 0 in the log's run: keep calls aligned
        return self._predict(k)


def routers(model: nn.Module) -> list[nn.Module]:
    return [m for _, _, m in find_expert_modules(model)]


def record_routing(model: nn.Module) -> tuple[list[list[tuple]], list[Any]]:
    """Install hooks that record every router output per layer; returns (records, handles)."""
    records: list[list[tuple]] = [[] for _ in routers(model)]
    handles = []
    for layer, gate in enumerate(routers(model)):
        handles.append(gate.register_forward_hook(
            lambda m, a, out, layer=layer: records[layer].append(tuple(t.detach().cpu() for t in out))))
    return records, handles


def replay_routing(model: nn.Module, records: list[list[tuple]], device: torch.device) -> list[Any]:
    """Override each router's output with the recorded one, call by call."""
    calls = [0] * len(records)
    handles = []

    def hook(m: nn.Module, a: Any, out: Any, layer: int) -> Any:
        rec = records[layer][calls[layer] % len(records[layer])]
        calls[layer] += 1
        return tuple(t.to(device) for t in rec)

    for layer, gate in enumerate(routers(model)):
        handles.append(gate.register_forward_hook(lambda m, a, out, layer=layer: hook(m, a, out, layer)))
    return handles


def big_mixtral(device: torch.device, seed: int = 0) -> nn.Module:
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = MixtralConfig(hidden_size=1024, intermediate_size=3584, num_hidden_layers=4, num_attention_heads=8,
                        num_key_value_heads=8, vocab_size=256, num_local_experts=8, num_experts_per_tok=2,
                        max_position_embeddings=1024, tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MixtralForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():  # keep activations O(1) through 4 random layers
            if p.dim() >= 2:
                p.mul_(0.5)
    return model.to(device)


def generate(model: nn.Module, ids: torch.Tensor, n: int) -> tuple[list[int], float]:
    """Greedy generation of ``n`` tokens after ``ids``; (new tokens, seconds)."""
    _sync(ids.device)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             attention_mask=torch.ones_like(ids), pad_token_id=0)
    _sync(ids.device)
    return out[0, ids.shape[1]:].tolist(), time.perf_counter() - start


def forced_decode(model: nn.Module, ids: torch.Tensor, n: int) -> tuple[list[int], float]:
    """Teacher-forced decoding: prefill ``ids[:, :-n]``, then feed the true next byte one step at a time with
    the KV cache (the decode workload on real text); (greedy argmax per step, seconds)."""
    from transformers import DynamicCache

    _sync(ids.device)
    start = time.perf_counter()
    picks = []
    with torch.no_grad():
        cache = DynamicCache()
        out = model(input_ids=ids[:, :-n], past_key_values=cache, use_cache=True)
        for t in range(ids.shape[1] - n, ids.shape[1]):
            picks.append(int(out.logits[0, -1].argmax()))
            out = model(input_ids=ids[:, t:t + 1], past_key_values=cache, use_cache=True)
    _sync(ids.device)
    return picks, time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


WORKLOADS = {"generate": generate, "forced": forced_decode}


def run_streamed(model: nn.Module, ids: torch.Tensor, n: int, *, workload: str, device: torch.device, home: str,
                 policy: str, lookahead: int, order: int, prefetcher: ExpertPrefetcher | None = None,
                 record: bool = False) -> dict[str, Any]:
    store = TensorStore()
    config = ExpertConfig(home=home, capacity=0.25, prefetch=policy, lookahead=lookahead, order=order)
    streamer = ExpertStreamer(model, store, config, device=device, prefetcher=prefetcher).attach()
    rec = RecordingPrefetcher(streamer.prefetcher, record=record)  # always: times the prefetcher's host work
    streamer.set_prefetcher(rec)
    try:
        tokens, seconds = WORKLOADS[workload](model, ids, n)
        stats = streamer.stats.as_dict()
        capacity = streamer.cache.capacity
    finally:
        streamer.detach()
        store.close()
    return {"policy": policy, "lookahead": lookahead, "tokens": tokens, "seconds": seconds,
            "tokens_per_s": n / seconds, "capacity": capacity, **stats, "host_s": rec.host_s,
            "log": rec.log if record else None}


def median_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    best = dict(runs[0])
    best["tokens_per_s"] = statistics.median(r["tokens_per_s"] for r in runs)
    best["tokens_per_s_all"] = [round(r["tokens_per_s"], 2) for r in runs]
    best["wait_s"] = statistics.median(r["wait_s"] for r in runs)
    best["host_s"] = statistics.median(r["host_s"] for r in runs)
    best.pop("log", None)
    best.pop("tokens", None)
    return best


def compare(model: nn.Module, ids: torch.Tensor, n: int, *, workload: str, device: torch.device, home: str,
            args: argparse.Namespace, replay: tuple | None = None) -> dict[str, Any]:
    """All policies on one model and workload, interleaved ``args.repeats`` times, plus the unstreamed model.
    ``replay`` = (records, {row name: prediction log}): override the routers with recorded routing, replay the
    recorded predictions of the policies that read hidden states."""
    ref = None
    runs: dict[str, list] = {name: [] for name, _, _ in args.policies}
    resident = []
    handles: list[Any] = []

    def rearm() -> None:  # restart the replay's call counters
        nonlocal handles
        for h in handles:
            h.remove()
        handles = replay_routing(model, replay[0], device) if replay else []

    for _ in range(args.repeats):
        rearm()
        tokens, seconds = WORKLOADS[workload](model, ids, n)
        ref = ref or tokens
        resident.append(n / seconds)
        for name, policy, la in args.policies:
            rearm()
            pf = None
            if replay and policy in NEEDS_HIDDEN:
                pf = ReplayPrefetcher(4, 8, replay[1][name])
            r = run_streamed(model, ids, n, workload=workload, device=device, home=home, policy=policy, lookahead=la,
                             order=args.order, prefetcher=pf)
            if not replay:
                assert r["tokens"] == ref, f"{name}: streamed tokens differ from the unmodified model's"
            runs[name].append(r)
    rearm()
    for h in handles:
        h.remove()
    return {"resident_tokens_per_s": statistics.median(resident), "resident_all": [round(x, 2) for x in resident],
            "expert_bytes": _expert_bytes(model), **{name: median_runs(v) for name, v in runs.items()}}


def bench(args: argparse.Namespace) -> dict[str, Any]:
    from autosurgeon.models.text_corpus import build_corpus
    from autosurgeon.zoo import load_model

    device = torch.device(args.device)
    home = "disk" if device.type == "cpu" else "cpu"
    torch.manual_seed(0)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    tiny = load_model("tiny-moe").model.to(device)
    n = args.tokens
    prompt = torch.tensor([list(PROMPT)], device=device)
    if args.text_file:  # the same held-out bytes on another machine (its stdlib may differ)
        with open(args.text_file, "rb") as f:
            heldout = torch.tensor(list(f.read()), dtype=torch.uint8)
    else:
        heldout = build_corpus(train_bytes=0, heldout_bytes=8192).heldout
    text = heldout[:args.prompt + n].long()[None].to(device)  # held-out stdlib source: never trained on
    results: dict[str, Any] = {"device": str(device), "home": home, "tokens": n, "prompt_tokens": prompt.shape[1],
                               "forced_prompt_tokens": args.prompt, "repeats": args.repeats,
                               "threads": torch.get_num_threads(), "order": args.order,
                               "policies": [list(p) for p in args.policies], "platform": platform.platform(),
                               "torch": torch.__version__}
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(device)
    results["tiny_moe_generate"] = compare(tiny, prompt, n, workload="generate", device=device, home=home, args=args)
    results["tiny_moe_forced"] = compare(tiny, text, n, workload="forced", device=device, home=home, args=args)
    if args.replay:
        # record tiny-moe's routing (and the predictions of the policies that read its hidden states) on the
        # forced-decoding workload; the routing is the same in every recorded run (token-identical)
        records, handles = record_routing(tiny)
        logs = {}
        for name, policy, la in args.policies:
            if policy in NEEDS_HIDDEN or not logs:  # the first run records the routing, even when no policy
                log = run_streamed(tiny, text, n, workload="forced", device=device, home=home, policy=policy,
                                   lookahead=la, order=args.order, record=True)["log"]
                if policy in NEEDS_HIDDEN:
                    logs[name] = log
                logs.setdefault("", [])
                for h in handles:  # once: one run's routing
                    h.remove()
                handles = []
        logs.pop("", None)
        del tiny
        big = big_mixtral(device)
        results["replay_forced"] = compare(big, text, n, workload="forced", device=device, home=home, args=args,
                                           replay=(records, logs))
    return results


def _expert_bytes(model: nn.Module) -> int:
    m = find_expert_modules(model)[0][1]
    return (m.gate_up_proj[0].numel() + m.down_proj[0].numel()) * m.gate_up_proj.element_size()


TITLES = {
    "tiny_moe_generate": "tiny-moe (trained), greedy generation from a code prompt — real routing",
    "tiny_moe_forced": "tiny-moe (trained), teacher-forced decoding of held-out stdlib source — real routing",
    "replay_forced": "random-weight Mixtral, hidden 1024 / intermediate 3584 (4 layers x 8 experts, top-2), routers "
                     "overridden with tiny-moe's routing of the forced-decoding workload (real routing, replayed)",
}


def report(r: dict[str, Any]) -> str:
    policies = [tuple(p) for p in r["policies"]]
    names = ", ".join(dict.fromkeys(policy for _, policy, _ in policies))
    lines = [f"# Expert streaming: prefetchers {names} ({r['device']})", "",
             f"Device {r.get('gpu', r['device'])}; experts homed on the `{r['home']}` tier; expert cache = 25% of the "
             f"experts (8 of 32 slots); {r['tokens']} decoded tokens per run; tokens/s = decoded tokens / wall time "
             f"of the whole workload (prefill included), median of {r['repeats']} runs interleaved across policies, "
             f"each from an empty cache and an untrained prefetcher; {r['threads']} compute thread(s). Markov order "
             f"{r['order']}. A hit is a routed expert already resident or arriving when its layer runs; prefetch hit "
             f"rate = prefetched experts routed to before eviction / prefetches; host ms/token = time inside the "
             f"prefetcher's observe + predict per decoded token (median run). × Markov: against the Markov row of "
             f"the same lookahead. torch {r['torch']}, {r['platform']}.", ""]
    markov_at = {la: name for name, policy, la in policies if policy == "markov"}
    for key, title in TITLES.items():
        if key not in r:
            continue
        d = r[key]
        lru = d["lru"]["tokens_per_s"] if "lru" in d else float("nan")
        lines += [f"## {title}", "",
                  f"Expert size {d['expert_bytes'] / 2**20:.2f} MiB; unstreamed model (all experts resident) "
                  f"{d['resident_tokens_per_s']:.2f} tokens/s (runs {d['resident_all']}).", "",
                  "| policy | lookahead | hit rate | prefetch hit rate | misses | prefetches | MiB moved / token | "
                  "wait s | host ms/token | tokens/s (runs) | × LRU-only | × Markov |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, _, la in policies:
            s = d[name]
            ref = d[markov_at[la]]["tokens_per_s"] if la in markov_at else None
            vs_markov = f"{s['tokens_per_s'] / ref:.2f}" if ref else "–"
            host = f"{s['host_s'] / r['tokens'] * 1e3:.3f}" if "host_s" in s else "–"
            lines.append(f"| {name} | {la} | {s['hit_rate']:.1%} | {s['prefetch_hit_rate']:.1%} | {s['misses']} | "
                         f"{s['prefetches']} | {s['bytes_moved'] / r['tokens'] / 2**20:.1f} | {s['wait_s']:.3f} | "
                         f"{host} | {s['tokens_per_s']:.2f} ({', '.join(map(str, s['tokens_per_s_all']))}) | "
                         f"{s['tokens_per_s'] / lru:.2f} | {vs_markov} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=32, help="forced decoding: prefill bytes before the decoded ones")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--text-file", default=None, help="held-out text bytes to decode (default: the stdlib split)")
    ap.add_argument("--order", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-replay", dest="replay", action="store_false")
    ap.add_argument("--policies", default=",".join(name for name, _, _ in POLICIES),
                    help=f"rows to run, comma-separated, or 'all' ({', '.join(n for n, _, _ in ALL_POLICIES)})")
    ap.add_argument("--out", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    by_name = {p[0]: p for p in ALL_POLICIES}
    wanted = list(by_name) if args.policies == "all" else args.policies.split(",")
    unknown = [w for w in wanted if w not in by_name]
    if unknown or "lru" not in wanted:
        ap.error(f"`--policies` must name rows among {', '.join(by_name)} (or 'all'), lru included; got "
                 f"{args.policies!r}")
    args.policies = tuple(by_name[w] for w in wanted)
    results = bench(args)
    text = report(results)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
