"""The claims measured on a CUDA GPU: speed through placement, energy per token (NVML), and quality of the kernels.

All in one process, same model, same prompt, same decode window (``claims_decode``), GPU memory cap 3 GiB. Our
rows decode the way the Session does on CUDA: through the captured decode step (``runtime.decode_graph``) where it
can run, else eagerly with the reason recorded (``decode_path``); the baselines decode eagerly (their own way):

* the ANCHORS.md model: Llama architecture, hidden 4096, 16 layers, vocab 32000, bf16 (7.0 GB), random seeded
  weights built on the machine;
* **ours, latency-optimal** (no precision change): bf16 blocks resident while the cap lasts (embedding on the
  host, resident blocks interleaved with streamed ones), the rest streamed per linear from pinned host
  memory, 3 units ahead (``streaming.gpu_spec``, the configuration that reached 100% of its bound);
* **ours, energy plan**: the same placement rule over int4 g128 weight-only blocks (``runtime.kernels``'
  default CUDA kernel; its packed copy counted), chosen because it streams the fewest bytes;
* **baselines**: accelerate ``infer_auto_device_map(max_memory={0: cap})`` + ``dispatch_model`` (CPU
  offload); *everything on one device*: the whole model on the host CPU (the one device that holds it);
  *everything on one tier*: every block streamed from host memory (no resident blocks); and, over the cap,
  all weights on the GPU (token reference).

Energy: NVML's total-energy counter of the board (``runtime.telemetry.EnergyMeter``) over each timed window
(at least ``min_seconds``), joules per decode token; the board's idle power is read the same way first. The
GPU's clocks and power limit are left as found (read, never set).

Quality: the zoo's trained ``tiny-llama`` on the GPU, held-out perplexity of the energy plan's precision
(int4 g128 blocks, the same CUDA kernel) and of bf16 against float32 on the same windows. Random weights
cannot say anything about quality, so the 7B-shape runs report only token agreement.

Run on the GPU: ``python -m experiments.benchmarks.claims --gpu --out claims_gpu.json``.
"""
from __future__ import annotations

import copy
import gc
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

import torch
from torch import nn

from autosurgeon._logging import get_logger
from experiments.benchmarks.claims_decode import decode_measured, graph_decode_measured, same_prefix
from experiments.benchmarks.claims_record import (
    ENERGY,
    MEMORY,
    QUALITY,
    SPEED,
    ClaimRecord,
    not_measured,
    ratio_record,
    reduction_record,
)
from runtime.decode_graph import GraphDecoder, static_kv_nbytes, unsupported_reason

logger = get_logger(__name__)
Progress = Callable[[str], None]


@dataclass(frozen=True)
class GpuSettings:
    """Knobs of the GPU claims (defaults: the ANCHORS.md setting, a few minutes on one H100/H200)."""

    hidden: int = 4096
    intermediate: int = 11008
    layers: int = 16
    heads: int = 32
    vocab: int = 32000
    gpu_budget: str = "3GiB"
    headroom_mib: int = 64
    prompt_len: int = 16
    warmup: int = 4
    tokens: int = 24
    min_seconds: float = 4.0
    max_tokens: int = 400
    accelerate_tokens: int = 6
    cpu_tokens: int = 4
    lookahead: int = 3
    seed: int = 0
    quality_model: str = "tiny-llama"
    heldout_file: str | None = None
    eval_windows: int = 0
    chunk: int = 16
    eval_batch: int = 16


GPU_QUICK = GpuSettings(hidden=256, intermediate=704, layers=4, heads=4, vocab=1000, gpu_budget="70MiB",
                        headroom_mib=64, warmup=1, tokens=4, min_seconds=0.2, max_tokens=50, accelerate_tokens=3,
                        cpu_tokens=2, quality_model="tiny-llama-test", eval_windows=8, chunk=4)


def _gpu_info() -> dict[str, Any]:
    info: dict[str, Any] = {"card": torch.cuda.get_device_name(0), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "host_cores": os.cpu_count(),
                            "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        info["driver"] = pynvml.nvmlSystemGetDriverVersion()
        info["power_limit_w"] = pynvml.nvmlDeviceGetEnforcedPowerLimit(h) / 1e3  # read only, never set
        info["memory_total"] = pynvml.nvmlDeviceGetMemoryInfo(h).total
    except Exception as exc:  # noqa: BLE001 - informational only
        info["nvml_error"] = f"{type(exc).__name__}: {exc}"
    return info


def _idle_watts(dev: torch.device, seconds: float) -> dict[str, Any]:
    from runtime.telemetry import EnergyMeter

    torch.cuda.synchronize(dev)
    with EnergyMeter(device=dev, min_window_s=min(1.0, seconds)) as m:
        time.sleep(seconds)
    return {"watts": m.watts_avg, "source": m.source, "seconds": m.seconds}


def quantize_blocks(model: nn.Module, fmt: str, dev: torch.device, *, group_size: int = 128) -> nn.Module:
    """A copy of ``model`` whose blocks' linears are ``fmt`` weight-only (quantized on ``dev``, kept on the host)."""
    from runtime.kernels import QuantizedLinear

    qmodel = copy.deepcopy(model)
    for layer in qmodel.model.layers:
        for parent in list(layer.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    q = QuantizedLinear.from_linear(child.to(dev), fmt, group_size=group_size)
                    setattr(parent, name, q.to("cpu"))
    return qmodel


def run_gpu(s: GpuSettings, progress: Progress) -> dict[str, Any]:
    """Measure every GPU configuration (module docstring); returns the JSON-able results."""
    from experiments.benchmarks.streaming import build_llama, gpu_spec, h2d_bandwidth, weight_bytes
    from runtime.session import Session
    from runtime.sizes import parse_bytes

    started = time.perf_counter()
    dev = torch.device("cuda:0")
    cap = parse_bytes(s.gpu_budget, what="gpu_budget")
    headroom = s.headroom_mib * 2**20
    # our rows decode through the captured step: its static KV cache (sized for the longest window) needs room
    # on the GPU beside the placed weights, as `autosurgeon run` reserves it
    kv_tokens = s.prompt_len + s.warmup + max(s.tokens, s.max_tokens) + 1
    res: dict[str, Any] = {**_gpu_info(), "settings": asdict(s), "cap_bytes": cap, "rows": {}, "errors": []}
    progress(f"GPU: {res['card']}, torch {res['torch']}, {res['host_cores']} host cores")
    res["idle"] = _idle_watts(dev, 2.0 if s.min_seconds >= 1 else 0.2)
    res["h2d_pinned_Bps"] = h2d_bandwidth(nbytes=min(2**30, max(2**20, cap // 4)))
    model = build_llama(hidden=s.hidden, intermediate=s.intermediate, layers=s.layers, heads=s.heads, vocab=s.vocab,
                        dtype=torch.bfloat16, seed=s.seed, fill_device="cuda")
    headroom += static_kv_nbytes(model, batch=1, tokens=kv_tokens)
    res["static_kv_reserved_bytes"] = static_kv_nbytes(model, batch=1, tokens=kv_tokens)
    res["model_bytes"] = weight_bytes(model)
    prompt = torch.randint(0, s.vocab, (1, s.prompt_len), generator=torch.Generator().manual_seed(s.seed))
    progress(f"  model {res['model_bytes'] / 1e9:.2f} GB bf16, cap {s.gpu_budget}, pinned H2D "
             f"{res['h2d_pinned_Bps'] / 1e9:.1f} GB/s, idle board {res['idle']['watts']:.0f} W")

    def record(name: str, label: str, fn: Callable[[], dict[str, Any]]) -> None:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        try:
            r = fn()
        except Exception as exc:  # noqa: BLE001 - one failed configuration must not lose the others
            res["errors"].append(f"{name}: {type(exc).__name__}: {exc}")
            progress(f"  {label}: FAILED {type(exc).__name__}: {exc}")
            return
        r.pop("last_logits", None)
        r.update(label=label, cuda_max_allocated=torch.cuda.max_memory_allocated(dev))
        res["rows"][name] = r
        progress(f"  {label}: {r['tokens_per_s']:.2f} tok/s, {r['j_per_token']:.2f} J/token ({r['energy_source']}, "
                 f"{r['watts_avg']:.0f} W), allocator peak {r['cuda_max_allocated'] / 2**30:.2f} GiB")

    def timed(m: nn.Module, *, tokens: int, device: torch.device = dev, **kw: Any) -> dict[str, Any]:
        return decode_measured(m, prompt, device=device, warmup=s.warmup, tokens=tokens, min_seconds=s.min_seconds,
                               max_tokens=s.max_tokens, **kw)

    def reference() -> dict[str, Any]:
        model.to(dev)
        try:
            return timed(model, tokens=s.tokens)
        finally:
            model.to("cpu")

    record("reference", "all weights on the GPU, no cap (token reference)", reference)

    def session_run(m: nn.Module, spec: Any) -> dict[str, Any]:
        # the Session's own choice on CUDA: the captured decode step where it can run, else eager (reason kept)
        with Session(m, spec, graphs=False) as session:
            why = unsupported_reason(session)
            if why is None:
                decoder = GraphDecoder(session)
                try:
                    r = graph_decode_measured(decoder, prompt, warmup=s.warmup, tokens=s.tokens,
                                              min_seconds=s.min_seconds, max_tokens=s.max_tokens)
                finally:
                    decoder.close()
            else:
                r = timed(m, tokens=s.tokens)
                r["decode_path"] = f"eager ({why})"
            st = session.stats()
        r.update(resident_blocks=sum(1 for b in spec.blocks if not b.streamed), lookahead=spec.lookahead,
                 store_peak_gpu=st.peak_bytes.get("gpu"), streamed_bytes=st.extra.get("streamed_bytes_per_pass"))
        return r

    record("latency", "ours, latency-optimal: bf16 placed at the cap, rest streamed from pinned host",
           lambda: session_run(model, gpu_spec(model, gpu_budget=cap, lookahead=s.lookahead, embed_on_cpu=True,
                                               interleave=True, headroom=headroom)))
    record("one_tier", "everything on one tier: every block streamed from pinned host (bf16)",
           lambda: session_run(model, gpu_spec(model, gpu_budget=cap, lookahead=s.lookahead, embed_on_cpu=True,
                                               interleave=True, headroom=headroom, max_resident=0)))

    def energy_plan() -> dict[str, Any]:
        qmodel = quantize_blocks(model, "int4", dev)
        try:
            r = session_run(qmodel, gpu_spec(qmodel, gpu_budget=cap, lookahead=s.lookahead, embed_on_cpu=True,
                                             interleave=True, headroom=headroom, resident_factor=2.0))
            r["model_bytes"] = weight_bytes(qmodel)
            return r
        finally:
            del qmodel

    record("energy", "ours, energy plan: int4 g128 blocks placed at the cap (packed copy counted)", energy_plan)

    def cpu_only() -> dict[str, Any]:
        threads = torch.get_num_threads()
        torch.set_num_threads(os.cpu_count() or threads)
        try:
            return decode_measured(model, prompt, device="cpu", warmup=1, tokens=s.cpu_tokens,
                                   energy_device="cpu")
        finally:
            torch.set_num_threads(threads)

    record("cpu_only", f"everything on one device: the host CPU ({os.cpu_count()} cores, bf16)", cpu_only)

    def accelerate() -> dict[str, Any]:
        from accelerate import dispatch_model, infer_auto_device_map

        device_map = infer_auto_device_map(model, max_memory={0: cap, "cpu": "200GiB"},
                                           no_split_module_classes=["LlamaDecoderLayer"], dtype=torch.bfloat16)
        dispatched = dispatch_model(model, device_map=device_map)
        r = timed(dispatched, tokens=s.accelerate_tokens)
        r["gpu_map_entries"] = sum(1 for v in device_map.values() if v in (0, "cuda:0"))
        r["map_entries"] = len(device_map)
        return r

    record("accelerate", "accelerate infer_auto_device_map + dispatch_model (CPU offload) at the cap", accelerate)
    ref = res["rows"].get("reference", {}).get("tokens")
    for name, r in res["rows"].items():
        r["tokens_match_reference"] = None if ref is None or name == "energy" else same_prefix(r["tokens"], ref)
    model = None  # drop the weights before the next part (the closures above are done with it)
    gc.collect()
    torch.cuda.empty_cache()
    try:
        res["quality"] = gpu_quality(s, dev, progress)
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        res["errors"].append(f"quality: {type(exc).__name__}: {exc}")
        progress(f"  quality: FAILED {type(exc).__name__}: {exc}")
    res["wall_s"] = time.perf_counter() - started
    return res


def gpu_quality(s: GpuSettings, dev: torch.device, progress: Progress) -> dict[str, Any]:
    """Held-out perplexity of the trained LM on the GPU: float32, bf16, and int4 g128 blocks (CUDA kernel)."""
    from autosurgeon.quality.measure import lm_heldout_windows
    from autosurgeon.zoo import cache_folder, load_model
    from experiments.benchmarks.compression import _chunk_nll

    if s.heldout_file:
        windows = torch.load(s.heldout_file)
        data = f"windows saved on the CPU machine ({os.path.basename(s.heldout_file)})"
    else:
        windows = lm_heldout_windows(max_windows=None)
        data = "windows built here from this Python's stdlib"
    if s.eval_windows:
        windows = windows[:s.eval_windows]
    usable = windows.shape[0] // s.chunk * s.chunk
    chunks = list(windows[:usable].split(s.chunk))
    loaded = load_model(s.quality_model, device="cpu")
    out: dict[str, Any] = {"model": s.quality_model, "model_folder": cache_folder(s.quality_model).name,
                           "windows": usable, "tokens": usable * (windows.shape[1] - 1), "data": data, "plans": {}}
    ref_model = copy.deepcopy(loaded.model).to(dev)
    ref_nll = _chunk_nll(ref_model, chunks, s.eval_batch)
    out["reference_perplexity"] = math.exp(ref_nll.mean())
    del ref_model
    variants: dict[str, Callable[[], nn.Module]] = {
        "bfloat16": lambda: copy.deepcopy(loaded.model).to(dev, torch.bfloat16),
        "int4": lambda: _int4_blocks(loaded.model, dev),
    }
    for name, make in variants.items():
        m = make()
        nll = _chunk_nll(m, chunks, s.eval_batch)
        diff = nll - ref_nll
        kernel = None
        if name == "int4":
            from runtime.kernels import QuantizedLinear

            kernel = next(q.resolve_kernel().name for q in m.modules() if isinstance(q, QuantizedLinear))
        out["plans"][name] = {"perplexity": math.exp(nll.mean()), "loss": math.expm1(diff.mean()),
                              "se": float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else float("nan"),
                              "kernel": kernel}
        progress(f"  quality {name}: perplexity {out['plans'][name]['perplexity']:.4f} vs "
                 f"{out['reference_perplexity']:.4f} ({out['plans'][name]['loss'] * 100:+.3f}%)")
        del m
    return out


def _int4_blocks(model: nn.Module, dev: torch.device) -> nn.Module:
    from runtime.session import find_blocks, quantize_linears

    m = copy.deepcopy(model).to(dev)
    for block in find_blocks(m)[1]:
        quantize_linears(block, "int4", 128)
    return m


# ------------------------------------------------------------------------------------------------- records
def _source(data: dict[str, Any], where: str) -> str:
    return f"{where}: {data.get('card', '?')}, {data.get('date_utc', '?')}"


GPU_TITLES = {
    "speed_acc": ("speed", "GPU: placement vs accelerate CPU offload (same GPU cap)"),
    "speed_cpu": ("speed", "GPU: placement vs everything on one device (the host CPU)"),
    "speed_tier": ("speed", "GPU: placement vs everything on one tier (all blocks streamed from host)"),
    "energy_acc": ("energy", "GPU energy/token: energy plan vs accelerate CPU offload (NVML)"),
    "energy_lat": ("energy", "GPU energy/token: energy plan vs our latency-optimal plan (NVML)"),
    "energy_lat_acc": ("energy", "GPU energy/token: latency-optimal plan vs accelerate (NVML)"),
    "memory_int4": ("memory", "GPU: int4 g128 blocks vs bf16, whole model (7B-16l shape)"),
    "quality_int4": ("quality", "GPU: held-out perplexity loss, int4 g128 blocks on the CUDA kernel (trained zoo LM)"),
}


def missing_gpu_records(why: str) -> list[ClaimRecord]:
    """The GPU rows when there is neither a GPU here nor a saved GPU file: "not measured", never invented."""
    return [not_measured(claim, title, why=why) for claim, title in GPU_TITLES.values()]


def gpu_records(data: dict[str, Any], *, where: str) -> list[ClaimRecord]:
    """Claim rows from a GPU run's JSON (``run_gpu``); rows whose configuration failed say so."""
    rows, s = data.get("rows", {}), data.get("settings", {})
    device = f"{data.get('card', '?')} (torch {data.get('torch', '?')}, {data.get('host_cores', '?')} host cores)"
    source = _source(data, where)
    cap = f"{data.get('cap_bytes', 0) / 2**30:.2f} GiB"
    model = (f"Llama architecture (hidden {s.get('hidden')}, {s.get('layers')} layers, vocab {s.get('vocab')}), "
             f"bf16 random seeded weights ({data.get('model_bytes', 0) / 1e9:.2f} GB), GPU cap {cap}, batch 1, "
             f"{s.get('prompt_len')}-token prompt, greedy")
    timing = (f"tok/s = 1 / median per-token time over the timed steps after {s.get('warmup')} warm-up steps (each "
              f"step synchronised; at least {s.get('tokens')} steps and {s.get('min_seconds')} s per window; "
              "accelerate and the CPU run fewer); all configurations in one process, one after another")
    common = dict(device=device, source=source, settings=s)
    out: list[ClaimRecord] = []

    def have(*names: str) -> bool:
        return all(n in rows for n in names)

    def failed(key: str, *names: str) -> ClaimRecord:
        claim, title = GPU_TITLES[key]
        errs = "; ".join(e for e in data.get("errors", []) if e.split(":")[0] in names) or "configuration missing"
        return not_measured(claim, title, why=f"failed in the GPU run ({errs})", device=device)

    def tps(r: dict[str, Any]) -> str:
        extra = f", {r['resident_blocks']} blocks resident" if "resident_blocks" in r else ""
        if str(r.get("decode_path", "")).startswith("graph"):
            extra += ", captured decode step"
        return f"{r['tokens_per_s']:.2f} tok/s{extra}, allocator peak {r['cuda_max_allocated'] / 2**30:.2f} GiB"

    lat = rows.get("latency")
    for key, base_name, base_desc in (
            ("speed_acc", "accelerate", "accelerate `infer_auto_device_map(max_memory={0: cap, 'cpu': '200GiB'}, "
             "no_split_module_classes=['LlamaDecoderLayer'])` + `dispatch_model` (CPU offload: weights of the CPU "
             "entries copied to the GPU per forward)"),
            ("speed_cpu", "cpu_only", f"the whole model on the host CPU ({data.get('host_cores')} cores, bf16, torch "
             "eager): the one device that holds it (its bf16 kernels round differently from the GPU's, so greedy "
             "tokens of these random weights may part from the GPU reference)"),
            ("speed_tier", "one_tier", "the same runtime with every block streamed from pinned host memory (no "
             "resident blocks): placement's residency switched off")):
        if not have("latency", base_name):
            out.append(failed(key, "latency", base_name))
            continue
        base = rows[base_name]
        out.append(ratio_record(
            "speed", GPU_TITLES[key][1], ours=lat["tokens_per_s"], base=base["tokens_per_s"], unit="tok/s",
            ours_text=tps(lat), baseline_text=tps(base) if base_name != "cpu_only" else
            f"{base['tokens_per_s']:.2f} tok/s (host)",
            method=f"{model}. Ours (latency-optimal, no precision change): {lat['label']}; lookahead "
            f"{lat.get('lookahead')}, {lat.get('streamed_bytes', 0) / 1e9:.2f} GB streamed per token (bound at the "
            f"measured {data.get('h2d_pinned_Bps', 0) / 1e9:.1f} GB/s pinned H2D: "
            f"{data.get('h2d_pinned_Bps', 0) / max(lat.get('streamed_bytes') or 1, 1):.2f} tok/s). Baseline: "
            f"{base_desc}; {base['n_timed']} timed steps. {timing}. Tokens equal the all-on-GPU reference: "
            f"ours {lat.get('tokens_match_reference')}, baseline {base.get('tokens_match_reference')}.", **common))

    idle = data.get("idle", {})
    energy_how = (f"NVML total-energy counter of the board (`runtime.telemetry.EnergyMeter`, whole board, idle "
                  f"included: idle {idle.get('watts', float('nan')):.0f} W measured first) over each timed window; "
                  f"J/token = window joules / timed steps. Power limit {data.get('power_limit_w', '?')} W as found; "
                  "clocks and limits never changed. The GPU board only: host CPU and DRAM energy are not in it "
                  + ("(the host's RAPL counters were not readable on the GPU machine either)"
                     if rows.get("cpu_only", {}).get("energy_source") == "estimate" else
                     "(accelerate's host-side copies cost host energy this figure does not see)"))
    en = rows.get("energy")
    for key, a, b in (("energy_acc", "energy", "accelerate"), ("energy_lat", "energy", "latency"),
                      ("energy_lat_acc", "latency", "accelerate")):
        if not have(a, b):
            out.append(failed(key, a, b))
            continue
        ra, rb = rows[a], rows[b]
        if ra.get("energy_source") != "nvml" or rb.get("energy_source") != "nvml":
            out.append(not_measured("energy", GPU_TITLES[key][1], device=device,
                                    why=f"NVML counter not read (sources {ra.get('energy_source')}, "
                                    f"{rb.get('energy_source')})"))
            continue

        def jt(r: dict[str, Any]) -> str:
            return (f"{r['j_per_token']:.2f} J/token ({r['watts_avg']:.0f} W × {r['median_token_s'] * 1e3:.1f} ms, "
                    f"{r['n_timed']} steps, {r['energy_seconds']:.1f} s window)")

        out.append(reduction_record(
            GPU_TITLES[key][1], ours=ra["j_per_token"], base=rb["j_per_token"], unit="J/token", ours_text=jt(ra),
            baseline_text=jt(rb),
            method=f"{model}. Measured: {ra['label']} ({ra['tokens_per_s']:.2f} tok/s). Baseline: {rb['label']} "
            f"({rb['tokens_per_s']:.2f} tok/s). {energy_how}. The faster configuration also spends the board's idle "
            "power over a shorter token, which is part of the saving.", **common))

    if en is not None and "model_bytes" in en and data.get("model_bytes"):
        out.append(ratio_record(
            "memory", GPU_TITLES["memory_int4"][1], ours=en["model_bytes"], base=data["model_bytes"], unit="B",
            higher_is_better=False, ours_text=f"{en['model_bytes'] / 1e9:.2f} GB (codes + scales)",
            baseline_text=f"{data['model_bytes'] / 1e9:.2f} GB bf16",
            method=f"{model}. Bytes of every tensor of the model after quantizing the blocks' linears to int4 g128 "
            "(`runtime.kernels.QuantizedLinear`; embedding and head stay bf16). Against bf16, not float32 (float32 "
            "would double the ratio). The CUDA tinygemm kernel keeps a packed copy of each *resident* int4 weight "
            "next to these buffers; the placement rule counts it. Quality of this precision: the quality row.",
            **common))
    else:
        out.append(failed("memory_int4", "energy"))

    q = data.get("quality", {})
    if q.get("plans", {}).get("int4"):
        p = q["plans"]["int4"]
        bf = q["plans"].get("bfloat16", {})
        out.append(ClaimRecord(
            claim="quality", title=GPU_TITLES["quality_int4"][1], target=QUALITY, figure=p["loss"],
            ours=f"perplexity {p['perplexity']:.4f} ({p['loss'] * 100:+.3f}% ± {p['se'] * 100:.3f})",
            baseline=f"perplexity {q['reference_perplexity']:.4f} float32 on the GPU",
            method=f"Trained zoo model `{q['model']}` (cache `{q['model_folder']}`) on the GPU; the energy plan's "
            f"precision (int4 g128 on every block's linears, kernel `{p.get('kernel')}`, bf16 activations inside the "
            f"kernel) scored on {q['windows']} held-out windows of 256 byte tokens ({q['data']}); loss = exp(mean "
            f"NLL difference) - 1 against float32 on the same windows, paired per-chunk standard error. bf16 alone: "
            f"{bf.get('loss', float('nan')) * 100:+.3f}%.", **common))
    else:
        out.append(failed("quality_int4", "quality"))
    for r in out:
        assert r.target in (SPEED, MEMORY, ENERGY, QUALITY)  # internal invariant: GPU rows use the shared targets
    return out
