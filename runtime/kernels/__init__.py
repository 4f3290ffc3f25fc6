"""Quantization kernels: weight-only int8 / int4 (and fp8) linear for CPU and CUDA, chosen per layer.

API (what the rest of the runtime uses)::

    from runtime.kernels import QuantizedLinear, quantize_weight, choose_kernel, KernelSelector

    qlin = QuantizedLinear.from_linear(linear, "int4", group_size=128)   # or "int8" (per-channel), "fp8"
    y = qlin(x)                          # kernel = default for the buffers' device at call time
    qlin.to("cuda")                      # buffers qweight/scales/offsets/bias move like any tensors
    qlin.kernel = choose_kernel(qlin.quantized_weight(), batch=1).name   # micro-benchmarked choice

    qw = quantize_weight(w, "int8")      # QuantizedWeight: frozen record of plain tensors (+ .to(device))
    available_kernels("int4", "cpu")     # -> ["cpu-avx512", "torch-int4pack-cpu", "torch-dequant", ...]
    selector = KernelSelector()          # caches choices per (fmt, shape, batch, dtype, device); you hold it
    selector.choose(qw, batch=16).name
    choose_kernels(model, batch=1, selector=selector)   # sets .kernel on every QuantizedLinear in a model

Streaming contract: a ``QuantizedLinear``'s state is exactly its buffers (``qweight``, ``scales``, ``offsets``
for int4, ``bias``); replace them (``module.qweight = t``) or move them and the next ``forward`` runs on their
device. Kernels that pack the weight (``int8-dynamic``, ``cuda-int4-tinygemm``) rebuild the packed copy when
the buffers change (``release_prepared()`` drops it at once, ``prepared_nbytes`` says how big it is).
Defaults (``default_kernel``; no benchmark, weight-only numerics): CPU int8/int4 ``cpu-avx512`` (reads the
buffers as they are, no extra copy), int8 ``cpu-avx2`` where the CPU lacks AVX-512; CUDA int8 ``cuda-triton``
(no copy); CUDA int4 ``cuda-int4-tinygemm`` (packs once per weight on the GPU: a streamed int4 block pays one
repack and ~its int4 bytes again while resident; call ``release_prepared()`` when releasing it); fp8 ``cuda-fp8`` / ``torch-dequant`` on CPU.
``module.to(dtype)`` is harmless for int8/int4 (codes are integers; scales are used as float32).
Buffer bytes: ``QuantizedWeight.nbytes`` (int8 ~ N*K + 4N; int4 ~ N*K/2 + 8*N*K/group_size).

Formats (layouts in :mod:`runtime.kernels.formats`): int8 symmetric per output channel; int4 asymmetric
group-wise (scale + offset per group of ``group_size`` along K, a multiple of 32); K not divisible by the
group size is zero-padded (documented, exact); fp8 e4m3 with per-channel scales.

Kernels (each with a stated tolerance, relative Frobenius error vs a float64 reference on the same
dequantized weight, fp32 activations):

==================== ===== ============ ========= ======================================================
name                 dev   formats      tolerance notes
==================== ===== ============ ========= ======================================================
cpu-avx512           cpu   int8, int4   1e-4      C++ AVX-512, dequant in registers (compiled lazily)
cpu-avx512-a16       cpu   int8, int4   1e-3      same library, VNNI: activations rounded to int16 per row
cpu-avx2             cpu   int8         1e-4      C++ AVX2 (CPUs without AVX-512), dequant in registers
cpu-avx512-bf16      cpu   int4         1e-2      same library, AVX512-BF16: activations rounded to bf16
int8-dynamic         cpu   int8         5e-2      fbgemm w8a8: quantizes activations too
torch-int8pack-cpu   cpu   int8         1e-4      torch stock ``_weight_int8pack_mm`` (baseline)
torch-int4pack-cpu   cpu   int4         1e-3      torch stock ``_weight_int4pack_mm_for_cpu`` (baseline)
cuda-triton          cuda  int8, int4   1.5e-2    Triton, canonical layout, dequant in registers (bf16 dot)
cuda-int8pack        cuda  int8         1.5e-2    torch ``_weight_int8pack_mm`` (bf16)
cuda-int4-tinygemm   cuda  int4         1.5e-2    torch ``_weight_int4pack_mm`` (bf16)
cuda-int4-gemv       cuda  int4         1.5e-2    Triton GEMV (<= 8 rows), canonical layout, no packed copy
cuda-fp8             cuda  fp8          8e-2      ``torch._scaled_mm`` row-wise, capability >= 8.9
torch-dequant        any   all          1e-4      dequantize + F.linear (portable fallback)
dequant-bf16         any   all          1.5e-2    dequantize to bf16 + bf16 matmul
dequant-fp16         cuda  all          5e-3      dequantize to fp16 + fp16 matmul
==================== ===== ============ ========= ======================================================
"""
from __future__ import annotations

from runtime.kernels import cpu as _cpu  # noqa: F401  (registers CPU kernels)
from runtime.kernels import cpu_avx2 as _cpu_avx2  # noqa: F401  (registers the AVX2 int8 kernel)
from runtime.kernels import cuda as _cuda  # noqa: F401  (registers CUDA kernels; touches no device)
from runtime.kernels import portable as _portable  # noqa: F401
from runtime.kernels import triton_cuda as _triton_cuda  # noqa: F401  (imports triton only on first use)
from runtime.kernels import triton_gemv as _triton_gemv  # noqa: F401  (registers the CUDA int4 GEMV)
from runtime.kernels._registry import Kernel, all_kernels, get_kernel
from runtime.kernels.formats import FORMATS, QuantizedWeight, dequantize, quantize_weight
from runtime.kernels.linear import QuantizedLinear, choose_kernels, quantized_linear, use_unpacked_kernels
from runtime.kernels.select import (
    KernelChoice,
    KernelSelector,
    available_kernels,
    choose_kernel,
    default_kernel,
    kernel_error,
    unpacked_kernel,
)

__all__ = [
    "FORMATS",
    "Kernel",
    "KernelChoice",
    "KernelSelector",
    "QuantizedLinear",
    "QuantizedWeight",
    "all_kernels",
    "available_kernels",
    "choose_kernel",
    "choose_kernels",
    "default_kernel",
    "dequantize",
    "get_kernel",
    "kernel_error",
    "quantize_weight",
    "quantized_linear",
    "unpacked_kernel",
    "use_unpacked_kernels",
]
