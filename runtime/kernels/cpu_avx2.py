"""``cpu-avx2``: the weight-only int8 and int4 kernel for x86 CPUs without AVX-512 (e.g. AMD Zen 3).

Same contract and build scheme as ``cpu-avx512`` (:mod:`runtime.kernels.cpu`): a small C++ library compiled on
first use with the system compiler, cached under ``$AUTOSURGEON_CACHE/kernels`` keyed by a hash of source, flags
and compiler, called through ctypes with the GIL released, on ``torch.get_num_threads()`` threads. It reads the
codes where they are (no packed copy), so a streamed int8/int4 unit costs its quantized bytes and nothing else.
"""
from __future__ import annotations

import ctypes
import threading
from typing import Any

import torch
import torch.nn.functional as F

from runtime._log import get_logger
from runtime.kernels._avx2_src import SOURCE
from runtime.kernels._registry import Kernel, register
from runtime.kernels.cpu import _compiler, _cpu_flags, build_library
from runtime.kernels.formats import QuantizedWeight
from runtime.kernels.portable import torch_dequant_run

logger = get_logger(__name__)

_FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-mavx2", "-mfma", "-mf16c", "-fno-math-errno"]
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_failed = False


def avx2_supported() -> bool:
    """True when this CPU has AVX2 and FMA and a C++ compiler is present."""
    return {"avx2", "fma"} <= _cpu_flags() and _compiler() is not None


def load_avx2() -> ctypes.CDLL | None:
    """Compile (first use only) and load the AVX2 library; None if that is impossible here."""
    global _lib, _failed
    if _lib is not None or _failed:
        return _lib
    with _lock:
        if _lib is not None or _failed:
            return _lib
        if not avx2_supported():
            _failed = True
            return None
        try:
            lib = ctypes.CDLL(str(build_library(SOURCE, _FLAGS, "jalapeno_avx2")))
            i64, vp = ctypes.c_int64, ctypes.c_void_p
            lib.jal_avx2_int8_linear.argtypes = [vp, vp, vp, vp, i64, i64, i64, ctypes.c_int]
            lib.jal_avx2_int8_linear.restype = None
            lib.jal_avx2_int4_linear.argtypes = [vp, vp, vp, vp, vp, i64, i64, i64, i64, ctypes.c_int]
            lib.jal_avx2_int4_linear.restype = None
            _lib = lib
        except Exception as exc:  # no compiler, sandbox, broken toolchain: fall back, say so once
            logger.warning("AVX2 kernels unavailable (%s); using the portable torch path", exc)
            _failed = True
    return _lib


def _available() -> bool:
    # Called on every forward that resolves its kernel: once loaded, answer without touching the file system
    # (``_compiler`` searches PATH: ~0.1-0.2 ms a call, measured, which at 84 linears a token was ms per token).
    return _lib is not None or (avx2_supported() and load_avx2() is not None)


def avx2_run(x: torch.Tensor, qw: QuantizedWeight, prepared: Any = None) -> torch.Tensor:
    """int8/int4 weight-only linear: fp32 accumulate, dequant in registers (fp8: the portable path)."""
    lib = _lib if _lib is not None else load_avx2()
    if lib is None or x.device.type != "cpu" or qw.fmt not in ("int8", "int4"):
        return torch_dequant_run(x, qw, None)
    m = x.shape[0]
    xf = x if x.dtype == torch.float32 and x.is_contiguous() else x.to(torch.float32).contiguous()
    y = torch.empty(m, qw.out_features, dtype=torch.float32)
    if qw.fmt == "int8":
        lib.jal_avx2_int8_linear(xf.data_ptr(), qw.qweight.data_ptr(), qw.scales.data_ptr(), y.data_ptr(), m,
                                 qw.out_features, qw.in_features, torch.get_num_threads())
    else:
        assert qw.offsets is not None and qw.group_size is not None
        kp = qw.padded_in_features
        if kp != qw.in_features:  # padded codes decode to the group offset: their inputs must be zeros
            xf = F.pad(xf, (0, kp - qw.in_features))
        lib.jal_avx2_int4_linear(xf.data_ptr(), qw.qweight.data_ptr(), qw.scales.data_ptr(), qw.offsets.data_ptr(),
                                 y.data_ptr(), m, qw.out_features, kp, qw.group_size, torch.get_num_threads())
    return y if x.dtype == torch.float32 else y.to(x.dtype)


register(Kernel(
    name="cpu-avx2", formats=("int8", "int4"), device_type="cpu", run=avx2_run,
    available=_available, tolerance=1e-4,
    description="C++ AVX2 int8/int4 weight-only GEMV/GEMM, dequant in registers, fp32 accumulate, prefetch one "
                "tile ahead (CPUs without AVX-512)"))
