"""CPU streaming decode at a RAM cap, every configuration in one process, in interleaved rounds.

Setting (issue 20): a Llama-architecture model with random seeded weights (default hidden 1024, intermediate 2816,
12 layers, 16 heads, vocab 8000, fp32: ~0.68 GB), batch-1 greedy decode after a 16-token prompt, a RAM cap of 30 %
of the fp32 weights, torch on 2 threads. The machine is shared, so configurations take turns: each round runs every
configuration once (order rotated by one per round), and each figure is reported per round, as the median of the
per-round ratios to the in-RAM model of the same round, with their min-max and the load average.

Rows: all weights in RAM (Hugging Face eager, over the cap: the token reference; and the same weights copied onto
huge pages, the page size our mapped units get); ours at the cap (blocks resident while the cap lasts, the rest on
the disk tier, ``SessionSpec.fit``) in the disk-I/O modes of :mod:`runtime.streaming`, on huge or 4 KiB pages, and
both streaming granularities; int8 (this CPU's own weight-only kernel) in RAM, at the cap and with every block on
disk; accelerate's disk offload (``infer_auto_device_map(max_memory={"cpu": cap})`` + ``dispatch_model``) at the
same cap. Cold rows drop the page cache of the offloaded files before every decode step, untimed: the Streamer is
quiesced first (no page of a mapped unit stays mapped, or the drop could not evict it), then ``fsync`` and
``posix_fadvise DONTNEED`` on exactly those files (nobody else's cache is touched), and ``mincore`` says what
fraction stayed cached (reported; a row above 2 % says it is not a cold figure). Their bound is streamed bytes /
the disk's cold read bandwidth, measured before and after the rounds three ways (:mod:`.page_cache`), the fastest.
Token-by-token interleaving of the warm rows, for ratios on a loaded machine: :mod:`.streaming_cpu_pairs`.

Per configuration and token: wall time, process CPU time, minor/major page faults and voluntary/involuntary context
switches (``getrusage``): what the host did besides the arithmetic, and how often the threads handed off.
"""
from __future__ import annotations

import copy
import gc
import math
import os
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from experiments.benchmarks.page_cache import (
    disk_read_bandwidth,
    drop_file_cache,
    folder_resident_fraction,
    on_huge_pages,
)
from runtime.spec import BlockSpec, SessionSpec

GIB = 2**30


@dataclass(frozen=True)
class Row:
    """One configuration: what runs and where its weights live."""

    name: str
    label: str
    kind: str  # "eager" | "ours" | "accelerate"
    weights: str = "fp32"  # "fp32" | "fp32-thp" (in RAM on huge pages) | "int8"
    disk_io: str = "mmap"
    granularity: str = "block"
    lookahead: int = 1
    all_disk: bool = False  # every block on disk (else: resident while the cap lasts)
    cold: bool = False
    huge_pages: bool = True  # SessionSpec.huge_pages (mapped files on 2 MiB pages where the kernel has them)
    keep_bound: bool = True  # SessionSpec.keep_bound (mapped units bound once, no tensor swap per use)


ROWS: dict[str, Row] = {r.name: r for r in [
    Row("eager", "all weights in RAM, HF eager (over the cap: token reference)", "eager"),
    Row("eager-thp", "all weights in RAM on huge pages (copied into MADV_HUGEPAGE memory), HF eager", "eager",
        weights="fp32-thp"),
    Row("ours", "ours (the Session's default): block units, persistent mapping on huge pages, cached units "
        "populated on the compute thread right before they run, others populated ahead on the worker "
        "(mmap-populate), lookahead 1, bound once (keep_bound)", "ours", disk_io="mmap-populate"),
    Row("ours-auto", "ours: the same, but cached units left to the GEMM's own faults (mmap-auto)", "ours",
        disk_io="mmap-auto"),
    Row("ours-rebind", "ours: mmap-auto with placeholders swapped in after every use (keep_bound=False): session 6's "
        "default", "ours", disk_io="mmap-auto", keep_bound=False),
    Row("ours-mmap", "ours: the same, every unit populated ahead on the worker (mmap)", "ours"),
    Row("ours-4k", "ours: mmap-auto on 4 KiB pages (huge_pages=False)", "ours", disk_io="mmap-auto",
        huge_pages=False),
    Row("ours-prev", "ours: mmap on 4 KiB pages (the previous default)", "ours", huge_pages=False),
    Row("ours-sync", "ours: block units, persistent mapping, populate at use (mmap-sync), lookahead 0", "ours",
        disk_io="mmap-sync", lookahead=0),
    Row("ours-willneed", "ours: block units, persistent mapping, WILLNEED ahead, GEMM faults (mmap-willneed)",
        "ours", disk_io="mmap-willneed"),
    Row("ours-module", "ours: module units, persistent mapping (mmap-auto), lookahead 2", "ours",
        disk_io="mmap-auto", granularity="module", lookahead=2),
    Row("ours-remap", "ours: module units, fresh mapping per use (remap), lookahead 2", "ours",
        disk_io="remap", granularity="module", lookahead=2),
    Row("ours-read", "ours: block units, preadv into staging slots (read), lookahead 1", "ours", disk_io="read"),
    Row("int8-ram", "int8 weight-only (cpu kernel), all blocks in RAM", "eager", weights="int8"),
    Row("ours-int8", "ours int8: blocks resident while the cap lasts, the rest on disk (mmap-populate)", "ours",
        weights="int8", disk_io="mmap-populate"),
    Row("ours-int8-mmap", "ours int8: the same, every unit populated ahead on the worker (mmap)", "ours",
        weights="int8"),
    Row("ours-int8-disk", "ours int8: every block on disk (mmap-populate)", "ours", weights="int8", all_disk=True,
        disk_io="mmap-populate"),
    Row("accelerate", "accelerate infer_auto_device_map + dispatch_model (disk offload) at the cap", "accelerate"),
    Row("ours-cold", "ours (mmap-populate, huge pages, block units), page cache of its files dropped before every "
        "step", "ours", disk_io="mmap-populate", cold=True),
    Row("ours-prev-cold", "ours (mmap, 4 KiB pages: the previous default), page cache of its files dropped before "
        "every step", "ours", cold=True, huge_pages=False),
    Row("ours-willneed-cold", "ours (mmap-willneed, block units), page cache of its files dropped before every step",
        "ours", disk_io="mmap-willneed", cold=True),
    Row("accelerate-cold", "accelerate disk offload, page cache of its files dropped before every step",
        "accelerate", cold=True),
]}
DEFAULT_ROWS = tuple(ROWS)


@dataclass(frozen=True)
class CpuBenchSettings:
    """Knobs (defaults: the issue's setting; a few minutes on a shared 2-core machine)."""

    hidden: int = 1024
    intermediate: int = 2816
    layers: int = 12
    heads: int = 16
    vocab: int = 8000
    ram_fraction: float = 0.30
    prompt_len: int = 16
    warmup: int = 2
    tokens: int = 6
    accelerate_tokens: int = 3
    rounds: int = 4
    threads: int = 2
    seed: int = 0
    rows: tuple[str, ...] = DEFAULT_ROWS
    profile: tuple[str, ...] = ("eager", "ours")  # op-by-op profile of these, after the rounds
    disk_probe_mib: int = 256  # the cold-read bandwidth probe's file, measured before and after the rounds


# ------------------------------------------------------------------------------------------- measuring
__all__ = ["ROWS", "CpuBenchSettings", "Row", "decode_steps", "disk_read_bandwidth", "drop_file_cache",
           "folder_resident_fraction", "on_huge_pages", "op_profile", "run", "session_spec", "to_markdown"]


def _worker_cpu_s() -> float:
    """CPU seconds used so far by the streamer's I/O worker threads (``jalapeno-io*``), from /proc."""
    import threading

    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for t in threading.enumerate():
        if t.name.startswith("jalapeno-io") and t.native_id is not None:
            try:
                with open(f"/proc/self/task/{t.native_id}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
            except (OSError, IndexError, ValueError):
                pass
    return total


def decode_steps(model: nn.Module, prompt: torch.Tensor, *, warmup: int, tokens: int,
                 before_step: Callable[[], None] | None = None) -> dict[str, Any]:
    """Greedy decode: prefill, ``warmup`` untimed steps, ``tokens`` timed steps (``before_step`` runs untimed
    before each step). Per step: wall and process CPU seconds; over the timed steps: getrusage deltas."""
    ids: list[int] = []
    wall: list[float] = []
    cpu: list[float] = []
    with torch.no_grad():
        out = model(input_ids=prompt, use_cache=True)
        past = out.past_key_values
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        ids.append(int(tok))
        ru0 = None
        for i in range(warmup + tokens):
            if before_step is not None:
                before_step()
            if i == warmup:
                ru0 = resource.getrusage(resource.RUSAGE_SELF)
                w0 = _worker_cpu_s()
            t0, c0 = time.perf_counter(), time.process_time()
            out = model(input_ids=tok, past_key_values=past, use_cache=True)
            past = out.past_key_values
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
            ids.append(int(tok))
            if i >= warmup:
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        w1 = _worker_cpu_s()
    n = max(1, tokens)
    assert ru0 is not None
    return {"tokens": ids, "step_s": wall, "cpu_s": cpu, "median_token_s": statistics.median(wall),
            "last_logits": out.logits[0, -1].float().clone(),
            "minflt_per_token": (ru1.ru_minflt - ru0.ru_minflt) / n, "majflt_per_token": (ru1.ru_majflt - ru0.ru_majflt) / n,
            "worker_cpu_s_per_token": (w1 - w0) / n,
            "vcsw_per_token": (ru1.ru_nvcsw - ru0.ru_nvcsw) / n, "ivcsw_per_token": (ru1.ru_nivcsw - ru0.ru_nivcsw) / n}


def op_profile(model: nn.Module, prompt: torch.Tensor, *, warmup: int, tokens: int, top: int = 8) -> dict[str, float]:
    """Self CPU milliseconds per decode token of the ``top`` most expensive ops (torch.profiler, after warm-up),
    plus the whole step's wall time under the profiler: where a configuration's time goes, op by op."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        out = model(input_ids=prompt, use_cache=True)
        past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(warmup):
            out = model(input_ids=tok, past_key_values=past, use_cache=True)
            past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(tokens):
                out = model(input_ids=tok, past_key_values=past, use_cache=True)
                past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                int(tok)
        wall = (time.perf_counter() - t0) / tokens
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    res = {e.key: e.self_cpu_time_total / 1e3 / tokens for e in events}
    res["(step wall, profiled)"] = wall * 1e3
    return res


# ------------------------------------------------------------------------------------------- the run
def session_spec(row: Row, folder: str, *, n_layers: int, block_bytes: int, rest_bytes: int, cap: int,
                 linear_max: int) -> SessionSpec:
    """The SessionSpec a row of kind ``ours`` runs under: ``SessionSpec.fit`` at the cap (blocks resident while it
    lasts, the rest on the disk tier in ``folder``), or every block on disk; the row's disk I/O, page size,
    granularity and lookahead."""
    unit = block_bytes if row.granularity == "block" else linear_max
    options: dict[str, Any] = {"offload_dir": folder, "disk_io": row.disk_io, "granularity": row.granularity,
                               "huge_pages": row.huge_pages, "keep_bound": row.keep_bound}
    if row.all_disk:  # as many units in flight as the cap holds next to the rest, up to the row's
        lookahead = max(0, min(row.lookahead, (cap - rest_bytes) // unit - 1))
        return SessionSpec(blocks=tuple(BlockSpec(device="cpu", home="disk") for _ in range(n_layers)),
                           rest=BlockSpec(device="cpu"), budgets={"cpu": cap}, lookahead=lookahead, **options)
    return SessionSpec.fit(n_blocks=n_layers, block_bytes=block_bytes, rest_bytes=rest_bytes, device="cpu",
                           budgets={"cpu": cap}, stream_unit_bytes=unit, lookahead=row.lookahead, **options)


def run(s: CpuBenchSettings, progress: Callable[[str], None] = print) -> dict[str, Any]:
    from accelerate import dispatch_model, infer_auto_device_map

    from experiments.benchmarks.streaming import build_llama, weight_bytes
    from runtime.session import Session, quantize_linears

    unknown = sorted(set(s.rows) - set(ROWS))
    if unknown:
        raise SystemExit(f"--rows: unknown {unknown}; choose from {', '.join(ROWS)}")
    torch.set_num_threads(s.threads)
    model = build_llama(hidden=s.hidden, intermediate=s.intermediate, layers=s.layers, heads=s.heads, vocab=s.vocab,
                        dtype=torch.float32, seed=s.seed)
    total = weight_bytes(model)
    cap = int(total * s.ram_fraction)
    layers = model.model.layers
    block = weight_bytes(layers[0])
    rest = total - len(layers) * block
    linear_max = max(m.weight.numel() * 4 for m in layers[0].modules() if isinstance(m, nn.Linear))
    prompt = torch.randint(0, s.vocab, (1, s.prompt_len), generator=torch.Generator().manual_seed(s.seed))
    rows = [ROWS[n] for n in s.rows]
    qmodel = None
    if any(r.weights == "int8" for r in rows):
        from runtime.kernels import default_kernel

        qmodel = copy.deepcopy(model)
        for layer in qmodel.model.layers:
            quantize_linears(layer, "int8")
        int8_kernel = default_kernel("int8", "cpu").name
    else:
        int8_kernel = None
    qblock = weight_bytes(qmodel.model.layers[0]) if qmodel is not None else None
    thp_model, thp_fraction = on_huge_pages(model) if any(r.weights == "fp32-thp" for r in rows) else (None, None)
    models = {"fp32": model, "fp32-thp": thp_model, "int8": qmodel}
    tmp = tempfile.mkdtemp(prefix="jalapeno-cpu-bench-")
    res: dict[str, Any] = {"settings": asdict(s), "model_bytes": total, "cap_bytes": cap, "block_bytes": block,
                           "int8_block_bytes": qblock, "rest_bytes": rest, "int8_kernel": int8_kernel,
                           "torch": torch.__version__, "threads": s.threads, "cpu": _cpu_name(),
                           "cores": os.cpu_count(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                           "rows": {}, "rounds": [], "eager_thp_huge_fraction": thp_fraction}
    try:
        res["disk_read"] = {"start": disk_read_bandwidth(tmp, s.disk_probe_mib * 2**20)}
        progress(f"model {total / 1e9:.2f} GB fp32, cap {cap / 2**20:.0f} MiB; disk read (cold) "
                 f"{_disk_str(res['disk_read']['start'])}; int8 kernel {int8_kernel}")
        acc_model = acc_dir = None
        if any(r.kind == "accelerate" for r in rows):
            acc_dir = os.path.join(tmp, "accelerate")
            acc_model = copy.deepcopy(model)
            device_map = infer_auto_device_map(acc_model, max_memory={"cpu": cap},
                                               no_split_module_classes=["LlamaDecoderLayer"])
            acc_model = dispatch_model(acc_model, device_map=device_map, main_device="cpu", offload_dir=acc_dir)
            res["accelerate_disk_entries"] = sum(1 for v in device_map.values() if v == "disk")
            res["accelerate_map_entries"] = len(device_map)

        def spec_for(row: Row, folder: str, weights_block: int) -> SessionSpec:
            return session_spec(row, folder, n_layers=len(layers), block_bytes=weights_block, rest_bytes=rest,
                                cap=cap, linear_max=linear_max)

        def segment(row: Row, k: int) -> dict[str, Any]:
            m = models[row.weights]
            n_tok = s.accelerate_tokens if row.kind == "accelerate" else s.tokens
            if row.kind == "eager":
                return decode_steps(m, prompt, warmup=s.warmup, tokens=n_tok)
            left: list[float] = []  # cold rows: fraction of the streamed files still cached after each drop

            def cold_drop(folder: str, session: Any = None) -> None:
                if session is not None:
                    session.streamer.quiesce()  # no page of a mapped unit stays mapped: the drop can evict it
                drop_file_cache(folder)
                left.append(folder_resident_fraction(folder))

            if row.kind == "accelerate":
                hook = (lambda: cold_drop(acc_dir)) if row.cold else None
                r = decode_steps(acc_model, prompt, warmup=1, tokens=n_tok, before_step=hook)
                r["streamed_bytes"] = _dir_bytes(acc_dir)  # its disk entries, read every step
                if left:
                    r["resident_after_drop"] = max(left)
                return r
            folder = os.path.join(tmp, f"{row.name}-{k}")
            spec = spec_for(row, folder, qblock if row.weights == "int8" else block)
            try:
                with Session(m, spec) as session:
                    hook = (lambda: cold_drop(folder, session)) if row.cold else None
                    r = decode_steps(m, prompt, warmup=s.warmup, tokens=n_tok, before_step=hook)
                    st = session.stats()
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            if left:
                r["resident_after_drop"] = max(left)
            r.update(resident_blocks=sum(1 for b in spec.blocks if not b.streamed), lookahead=spec.lookahead,
                     store_peak_cpu=st.peak_bytes["cpu"], streamed_bytes=st.extra["streamed_bytes_per_pass"],
                     misses=st.misses)
            return r

        segs: dict[str, list[dict[str, Any]]] = {r.name: [] for r in rows}
        for k in range(s.rounds):
            order = rows[k % len(rows):] + rows[:k % len(rows)]
            load0 = os.getloadavg()[0]
            for row in order:
                gc.collect()
                segs[row.name].append(segment(row, k))
            res["rounds"].append({"order": [r.name for r in order], "load_1min": [load0, os.getloadavg()[0]]})
            progress(f"round {k + 1}/{s.rounds} (load {load0:.1f}): " + ", ".join(
                f"{r.name} {1 / segs[r.name][-1]['median_token_s']:.2f}" for r in rows) + " tok/s")
        res["disk_read"]["end"] = disk_read_bandwidth(tmp, s.disk_probe_mib * 2**20)
        bws = [v for d in res["disk_read"].values() for v in d.values() if not math.isnan(v)]
        res["disk_read_Bps"] = max(bws) if bws else float("nan")  # the bound: the fastest cold read measured
        progress(f"disk read (cold) after the rounds: {_disk_str(res['disk_read']['end'])}")
        res["rows"] = _summarise(rows, segs, res)
        if s.profile:  # once, after the timed rounds: per-op self CPU time per token
            res["op_profile"] = {}
            for name in s.profile:
                row = ROWS[name]
                m = models[row.weights]
                if row.kind == "eager":
                    res["op_profile"][name] = op_profile(m, prompt, warmup=s.warmup, tokens=s.tokens)
                elif row.kind == "accelerate":
                    res["op_profile"][name] = op_profile(acc_model, prompt, warmup=1, tokens=s.accelerate_tokens)
                else:
                    folder = os.path.join(tmp, f"{name}-profile")
                    with Session(m, spec_for(row, folder, qblock if row.weights == "int8" else block)):
                        res["op_profile"][name] = op_profile(m, prompt, warmup=s.warmup, tokens=s.tokens)
                    shutil.rmtree(folder, ignore_errors=True)
                progress(f"profile {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in res["op_profile"][name].items())
                         + " ms/token")
        acc_model = None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def _summarise(rows: list[Row], segs: dict[str, list[dict[str, Any]]], res: dict[str, Any]) -> dict[str, Any]:
    ref = segs.get("eager")
    q_ref = segs.get("int8-ram")
    out: dict[str, Any] = {}
    for row in rows:
        ss = segs[row.name]
        steps = [t for seg in ss for t in seg["step_s"]]
        r: dict[str, Any] = {**asdict(row), "tokens_per_s": 1 / statistics.median(steps), "n_timed": len(steps),
                             "per_round_tokens_per_s": [1 / seg["median_token_s"] for seg in ss],
                             "per_round_step_ms": [[round(x * 1e3, 2) for x in seg["step_s"]] for seg in ss],
                             "per_round_cpu_ms": [[round(x * 1e3, 2) for x in seg["cpu_s"]] for seg in ss],
                             "cpu_s_per_token": statistics.median(t for seg in ss for t in seg["cpu_s"]),
                             "tokens": ss[0]["tokens"]}
        for key in ("minflt_per_token", "majflt_per_token", "vcsw_per_token", "ivcsw_per_token",
                    "worker_cpu_s_per_token"):
            r[key] = statistics.median(seg[key] for seg in ss)
        for key in ("resident_blocks", "lookahead", "streamed_bytes", "misses"):
            if key in ss[0]:
                r[key] = ss[0][key]
        if "store_peak_cpu" in ss[0]:
            r["store_peak_cpu"] = max(seg["store_peak_cpu"] for seg in ss)
        for base, key in (("eager", "vs_ram"), ("eager-thp", "vs_ram_thp"), ("accelerate", "vs_accelerate")):
            if base in segs and base != row.name:
                ratios = [b["median_token_s"] / a["median_token_s"] for a, b in zip(ss, segs[base])]
                r[key] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
                          "per_round": ratios}
        if ref is not None:
            n = min(len(ref[0]["tokens"]), len(ss[0]["tokens"]))
            agree = [a == b for a, b in zip(ss[0]["tokens"][:n], ref[0]["tokens"][:n])]
            r["tokens_match_ram_fp32"] = all(
                seg["tokens"][:n] == ref[0]["tokens"][:n] for seg in ss)
            r["token_agreement_ram_fp32"] = sum(agree) / n
            a, b = ss[0]["last_logits"], ref[0]["last_logits"]
            if len(ss[0]["tokens"]) == len(ref[0]["tokens"]):
                r["rel_logit_err_vs_ram_fp32"] = float((a - b).norm() / b.norm())
        if row.weights == "int8" and q_ref is not None:
            n = min(len(q_ref[0]["tokens"]), len(ss[0]["tokens"]))
            r["tokens_match_int8_ram"] = all(seg["tokens"][:n] == q_ref[0]["tokens"][:n] for seg in ss)
        if row.cold:
            r["resident_after_drop"] = max(seg.get("resident_after_drop", float("nan")) for seg in ss)
        if row.cold and r.get("streamed_bytes"):
            r["cold_bound_tok_s"] = res["disk_read_Bps"] / r["streamed_bytes"]
            if row.name != "accelerate-cold" and "accelerate-cold" in segs:
                ratios = [b["median_token_s"] / a["median_token_s"] for a, b in zip(ss, segs["accelerate-cold"])]
                r["vs_accelerate_cold"] = {"median": statistics.median(ratios), "min": min(ratios),
                                           "max": max(ratios), "per_round": ratios}
        out[row.name] = r
    return out


def _disk_str(d: dict[str, float]) -> str:
    return ", ".join(f"{k} {v / 1e9:.2f} GB/s" for k, v in d.items())


def _dir_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(folder) for f in files)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


# ------------------------------------------------------------------------------------------- report
def _range(d: dict[str, Any] | None) -> str:
    if not d:
        return "—"
    return f"{d['median']:.2f}× ({d['min']:.2f}–{d['max']:.2f})"


def to_markdown(res: dict[str, Any]) -> str:
    s = res["settings"]
    loads = [x for r in res["rounds"] for x in r["load_1min"]]
    lines = [f"Host: {res['cpu']}, {res['cores']} cores (shared), torch {res['torch']}, {res['threads']} threads"
             f"{', OMP_WAIT_POLICY=' + res['omp_wait_policy'] if res.get('omp_wait_policy') else ''}. "
             f"Llama hidden {s['hidden']}, intermediate {s['intermediate']}, {s['layers']} layers, vocab {s['vocab']}, "
             f"fp32 {res['model_bytes'] / 1e9:.2f} GB; RAM cap {res['cap_bytes'] / 2**20:.0f} MiB "
             f"({s['ram_fraction']:.0%}). {s['rounds']} interleaved rounds in one process, {s['tokens']} timed tokens "
             f"per configuration and round ({s['accelerate_tokens']} for accelerate); load average (1 min) "
             f"{min(loads):.1f}–{max(loads):.1f}. Disk read (cold, 256 MiB, measured before / after the rounds): "
             f"{_disk_str(res['disk_read']['start'])} / {_disk_str(res['disk_read']['end'])}; a cold row's bound is "
             f"its streamed bytes / the fastest, {res['disk_read_Bps'] / 1e9:.2f} GB/s. "
             f"int8 kernel: {res['int8_kernel']}."
             + (f" In-RAM on huge pages: {res['eager_thp_huge_fraction']:.0%} of its arena backed by 2 MiB pages."
                if res.get("eager_thp_huge_fraction") is not None else ""), "",
             "| configuration | tok/s (pooled median) | × in-RAM fp32, per-round median (min–max) | "
             "× in-RAM fp32 on huge pages | × accelerate | "
             "resident blocks | streamed / token | store RAM peak | CPU ms / token (I/O worker) | minor faults / token | "
             "ctx switches / token (vol+invol) | tokens = in-RAM fp32 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in res["rows"].values():
        streamed = f"{r['streamed_bytes'] / 2**20:.0f} MiB" if r.get("streamed_bytes") else "—"
        peak = f"{r['store_peak_cpu'] / 2**20:.0f} MiB" if r.get("store_peak_cpu") else "—"
        match = r.get("tokens_match_ram_fp32")
        if r["weights"] == "int8":
            match = (f"{r.get('token_agreement_ram_fp32', 0):.0%} agree; rel. logit err "
                     f"{r.get('rel_logit_err_vs_ram_fp32', float('nan')):.3f}"
                     + ("; = int8 in RAM" if r.get("tokens_match_int8_ram") else ""))
        name = r["label"] + (f" (bound {r['cold_bound_tok_s']:.2f} tok/s: {r['tokens_per_s'] / r['cold_bound_tok_s']:.0%})"
                             if r.get("cold_bound_tok_s") else "")
        if r.get("vs_accelerate_cold"):
            name += f"; × accelerate cold {_range(r['vs_accelerate_cold'])}"
        if r.get("cold"):
            frac = r.get("resident_after_drop", float("nan"))
            name += f"; cached after each drop (mincore): at most {frac:.1%}"
            if not frac <= 0.02:
                name += " — NOT A COLD FIGURE"
        lines.append(f"| {name} | {r['tokens_per_s']:.2f} | {_range(r.get('vs_ram'))} | {_range(r.get('vs_ram_thp'))} "
                     f"| {_range(r.get('vs_accelerate'))} "
                     f"| {r.get('resident_blocks', '—')} | {streamed} | {peak} | {r['cpu_s_per_token'] * 1e3:.0f} "
                     f"({r.get('worker_cpu_s_per_token', 0) * 1e3:.1f}) | "
                     f"{r['minflt_per_token']:.0f} | {r['vcsw_per_token']:.0f}+{r['ivcsw_per_token']:.0f} | {match} |")
    if res.get("op_profile"):
        lines += ["", "Self CPU ms per token by op (torch.profiler, one profiled run per configuration after the rounds; "
                  "the profiler's own overhead is included in the step time):", ""]
        for name, ops in res["op_profile"].items():
            lines.append(f"- {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in ops.items()))
    return "\n".join(lines) + "\n"
