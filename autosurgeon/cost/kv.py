"""The latency a session's KV-cache and expert-streaming decisions add to (or save from) a decode step, on paper.

The cost models analyse a decode step against Hugging Face's ``DynamicCache`` in the model dtype: the
attention leaves read the ``context`` cached positions, and the cache's per-step concatenation
(``torch.cat`` of past and new states: a read and a write of the whole cache per layer) is an elementwise op
with no FLOPs, so only its launches are in their launch term. The runtime's paged cache
(``runtime.kv_pages.LayerKV.gather``) hands attention the kept tokens as one tensor per layer:

* float storage: the pages are concatenated — the same read + write of the kept tokens as HF's cat;
* int8 / fp8 storage: the codes and the float16 scales are concatenated, then decoded
  ``(q.float() * scale.float()).to(dtype)``: the codes read (1 B) and upcast to float32 (4 B written), the
  product read and written (4 B + 4 B), and a cast to a non-float32 model dtype (4 B read + itemsize written);
* attention then reads the decoded kept tokens in the model dtype.

So on this runtime int8/fp8 KV saves memory but costs time (no fused dequantizing attention kernel); a
window or budget that keeps fewer tokens saves time. The step's change against the analysis' baseline is::

    delta_s = (traffic(precision, kept) - traffic("float", context + 1)) / bandwidth
              + (ops(precision, pages) - 2) x layers x launch_overhead_s

``traffic(p, n)`` is the bytes above for ``n`` kept tokens (attention's read included); ``kept`` and the
live ``pages`` per layer come from ``footprint.kv_layer_bytes``'s page simulation. ``ops`` counts the
dispatches ``LayerKV.gather`` makes per layer (HF's cache makes 2, its two concatenations): per stored
tensor (k, v, and their scales for int8/fp8) one page slice with its device move per live page (counted as
one op) and one concatenation; the sink block's slices; the decode (a no-op cast per tensor for float, 4 ops
for int8/fp8); the final sinks + pages concatenation; and ~12 ops to re-rotate the sinks' keys once tokens
were evicted ("sinks-window"). Bandwidth is the execution unit's ``memory_bandwidth``; the op cost the
cost model's launch overhead. Measured on tiny-llama (4 layers, decode at 512 positions, the project's
2-core CPU machine, 1 thread, process CPU clock, median of 3 sessions x 15 steps, two runs) the paged
float cache adds 1.27-1.39 ms per step to HF's, int8 2.66-2.79 ms, int8 with a 64-token window 0.87 ms;
this model says 1.73, 3.87 and 1.05 ms (the default 6 us per op; a page slice dispatches cheaper than the
average op it stands for): it ranks them right and overstates them by 20-40 %.
Everything here is an estimate (it never enters a "measured" figure); prefill's one-off quantization of
the prompt's states is not modelled.

Streamed experts (``prefetch`` other than "none") are fetched into a bounded cache on a miss. ASSUMED, for
want of routing statistics on paper: routing is uniform and independent, so an LRU cache of ``C`` slots over
``N`` experts hits with probability ``C / N``; a step routes each of ``batch`` tokens to ``top_k`` experts
per MoE layer, ``E (1 - (1 - top_k / E) ** batch)`` distinct ones per layer; every miss is fetched
synchronously::

    delta_s = misses x (expert bytes x seconds per byte of the link + fetch overhead)

with the link as the streaming model has it (``cost.transfer_seconds_per_byte``) and the per-fetch overhead
of ``cost.DEFAULT_FETCH_OVERHEAD_S``. The Markov and gate prefetchers are not credited (their hit rate is
learned at run time), so this is the cost of the LRU-only case: an upper estimate for the others.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from autosurgeon.cost.base import DEFAULT_FETCH_OVERHEAD_S, disk_is_warm, transfer_seconds_per_byte
from autosurgeon.cost.footprint import FLOAT_ITEMSIZE
from autosurgeon.knobs import KV_KNOBS
from runtime.experts import expected_experts_read

if TYPE_CHECKING:  # annotations only
    from autosurgeon.hardware.profile import HardwareProfile

_HF_OPS_PER_LAYER = 2  # DynamicCache: cat(keys), cat(values)
_ROTATE_OPS = 12  # RopeRotator.rotate of the sinks' keys (runtime.kv_pages)


def kv_traffic_bytes(elements: int, precision: str, itemsize: int, head_dim: int) -> int:
    """Bytes moved to hand attention ``elements`` kept key/value elements of one step (module docstring)."""
    if precision == "float":
        return elements * itemsize * 3  # concatenation read + write, attention's read
    scales = elements // max(1, head_dim)  # one float16 scale per token and head: cat (2 + 2), upcast (2 + 4)
    decode = 1 + 4 + 4 + 4 + ((4 + itemsize) if itemsize != 4 else 0)
    return elements * (2 * 1 + decode + itemsize) + scales * 10


def kv_step_delta(kv: Mapping[str, Any] | None, *, record: Any, bandwidth: float, launch_overhead_s: float,
                  context: int) -> dict[str, Any] | None:
    """``{"delta_s", "kept_tokens", "bytes", "baseline_bytes", "ops"}`` of a KV footprint (``footprint.kv_footprint``
    output) against HF's float cache at ``context + 1`` tokens; None without a paged cache."""
    if kv is None or record is None or not record.has_kv:
        return None

    itemsize = FLOAT_ITEMSIZE.get(kv["dtype"], 4)
    per_token = 2 * kv["batch"] * record.kv_heads * record.head_dim * record.kv_layers  # K and V elements
    kept = kv["kept_tokens"]
    now = kv_traffic_bytes(per_token * kept, kv["precision"], itemsize, record.head_dim)
    base = kv_traffic_bytes(per_token * (context + 1), "float", itemsize, record.head_dim)
    ops = (gather_ops(kv["precision"], kv["pages"] // max(1, record.kv_layers), rotated=kv["evicted_tokens"] > 0)
           - _HF_OPS_PER_LAYER) * record.kv_layers
    delta = ((now - base) / bandwidth if bandwidth > 0 else 0.0) + ops * launch_overhead_s
    return {"delta_s": delta, "kept_tokens": kept, "bytes": now, "baseline_bytes": base, "ops": ops}


def expert_step_delta(experts: Mapping[str, Any] | None, *, record: Any, profile: HardwareProfile, exec_unit: Any,
                      batch: int,
                      fetch_overhead_s: float | None = None) -> dict[str, Any] | None:
    """``{"delta_s", "misses", "hit_rate", "bytes", "link"}`` of expert streaming per decode step (module
    docstring); None when experts are not streamed (``footprint.expert_footprint`` gave None)."""
    if experts is None or record is None or not record.moe:
        return None

    layers, per_layer = len(record.experts), record.num_experts
    total = layers * per_layer
    hit_rate = min(1.0, experts["slots"] / total) if total else 1.0

    distinct = expected_experts_read(per_layer, record.experts_per_token, batch)
    misses = layers * distinct * (1.0 - hit_rate)
    nbytes = misses * sum(record.expert_tensor_bytes)
    warm = disk_is_warm(profile, experts["home_bytes"], "auto") if experts["home"] == "disk" else True
    per_byte, link = transfer_seconds_per_byte(profile, exec_unit, experts["home"], warm_disk=warm)
    fetch = DEFAULT_FETCH_OVERHEAD_S.get(exec_unit.kind, 0.0) if fetch_overhead_s is None else fetch_overhead_s
    return {"delta_s": nbytes * per_byte + misses * fetch, "misses": misses, "hit_rate": hit_rate,
            "bytes": nbytes, "link": link}


def gather_ops(precision: str, pages: int, *, rotated: bool, sinks: bool = True) -> int:
    """Dispatches of one layer's ``LayerKV.gather`` with ``pages`` live pages (module docstring)."""
    tensors = 2 if precision == "float" else 4  # k, v (+ their scales)
    decode = 1 if precision == "float" else 4  # per k or v: .to(dtype) | .float(), scale.float(), mul, .to
    ops = tensors * (pages + 1) + 2 * decode  # page slices and one cat per tensor; decode of k and v
    if sinks:
        ops += tensors + 2 * decode + 2 + (_ROTATE_OPS if rotated else 0)  # sink slices, decode, final cats
    return ops


def has_kv_decisions(session: Mapping[str, Any]) -> bool:
    return any(k in session for k in KV_KNOBS)


__all__ = ["expert_step_delta", "gather_ops", "has_kv_decisions", "kv_step_delta", "kv_traffic_bytes"]
