"""Portable kernels in plain torch: they run on any device and for every format.

``torch-dequant`` expands the weight to the activation dtype (float32 accumulate) and calls ``F.linear``: the
correctness fallback, slow because it writes the whole float weight each call. ``dequant-bf16`` expands to
bfloat16 (half the bytes of float32) and multiplies in bf16 (mkldnn on CPU, cuBLAS on CUDA);
``dequant-fp16`` likewise in float16 (CUDA only).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from runtime.kernels._registry import Kernel, register
from runtime.kernels.formats import QuantizedWeight, dequantize


def torch_dequant_run(x: torch.Tensor, qw: QuantizedWeight, prepared: Any = None) -> torch.Tensor:
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    y = F.linear(x.to(dtype), dequantize(qw, dtype))
    return y.to(x.dtype)


def dequant_bf16_run(x: torch.Tensor, qw: QuantizedWeight, prepared: Any = None) -> torch.Tensor:
    y = F.linear(x.to(torch.bfloat16), dequantize(qw, torch.bfloat16))
    return y.to(x.dtype)


def dequant_fp16_run(x: torch.Tensor, qw: QuantizedWeight, prepared: Any = None) -> torch.Tensor:
    y = F.linear(x.to(torch.float16), dequantize(qw, torch.float16))
    return y.to(x.dtype)


register(Kernel(
    name="torch-dequant", formats=("int8", "int4", "fp8"), device_type="any", run=torch_dequant_run,
    available=lambda: True, tolerance=1e-4,
    description="dequantize to the activation dtype, then F.linear (portable reference path)"))
register(Kernel(
    name="dequant-bf16", formats=("int8", "int4", "fp8"), device_type="any", run=dequant_bf16_run,
    available=lambda: True, tolerance=1.5e-2,
    description="dequantize to bf16, then a bf16 matmul (weights and activations rounded to bf16)"))
register(Kernel(
    name="dequant-fp16", formats=("int8", "int4", "fp8"), device_type="cuda", run=dequant_fp16_run,
    available=lambda: torch.cuda.is_available(), tolerance=5e-3,
    description="dequantize to fp16, then an fp16 matmul (CUDA only: CPU fp16 GEMM is slow)"))
