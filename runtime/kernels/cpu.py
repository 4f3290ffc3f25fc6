"""CPU kernels: the AVX-512 extension (weight-only int8/int4), fbgemm's int8-dynamic, torch's stock kernels.

``cpu-avx512`` is a small C++ library compiled on first use with the system C++ compiler (about a second:
it includes only ``immintrin.h``, not torch's headers) and cached under
``$AUTOSURGEON_CACHE/kernels`` (default ``~/.cache/autosurgeon/kernels``), keyed by a hash of source, flags and
compiler; it is called through ctypes with the GIL released and runs on ``torch.get_num_threads()`` threads
(its own small worker pool, see ``_avx512_src``). Where there is no compiler or no AVX-512, the
kernel is not listed by ``available_kernels`` and, if named anyway, runs the portable ``torch-dequant`` path
with one warning.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from runtime._log import get_logger
from runtime.kernels._avx512_src import SOURCE
from runtime.kernels._registry import Kernel, register
from runtime.kernels.formats import QuantizedWeight, unpack_int4
from runtime.kernels.portable import torch_dequant_run

logger = get_logger(__name__)

_FLAGS = ["-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx512vl",
          "-mavx512dq", "-mfma", "-fno-math-errno"]
_REQUIRED_CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq", "fma")
_build_lock = threading.Lock()


def cache_dir() -> Path:
    """Where compiled kernels live: ``$AUTOSURGEON_CACHE/kernels`` or ``~/.cache/autosurgeon/kernels``."""
    root = os.environ.get("AUTOSURGEON_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "autosurgeon")
    return Path(root) / "kernels"


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def avx512_supported() -> bool:
    """True when this CPU has the AVX-512 subsets the extension uses and a C++ compiler is present."""
    return all(f in _cpu_flags() for f in _REQUIRED_CPU_FLAGS) and _compiler() is not None


def build_library(source: str, flags: list[str], stem: str) -> Path:
    """Compile ``source`` into a shared library under :func:`cache_dir` (once per source, flags and compiler)."""
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler (set CXX or install g++)")
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256("\0".join([source, " ".join(flags), version]).encode()).hexdigest()[:16]
    out = cache_dir() / f"{stem}_{key}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            src = Path(tmp) / "k.cpp"
            src.write_text(source)
            tmp_out = Path(tmp) / out.name
            proc = subprocess.run([cxx, *flags, str(src), "-o", str(tmp_out)], capture_output=True, text=True,
                                  timeout=300)
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-2000:])
            os.replace(tmp_out, out)  # atomic: concurrent builders never see a half-written library
        logger.info("compiled %s into %s", stem, out)
    return out


_lib: ctypes.CDLL | None = None
_lib_failed = False


def load_extension() -> ctypes.CDLL | None:
    """Compile (first use only) and load the AVX-512 library; None if that is impossible here."""
    global _lib, _lib_failed
    if _lib is not None or _lib_failed:
        return _lib
    with _build_lock:
        if _lib is not None or _lib_failed:
            return _lib
        if not avx512_supported():
            _lib_failed = True
            return None
        try:
            lib = ctypes.CDLL(str(build_library(SOURCE, _FLAGS, "jalapeno_avx512")))
            i64, vp = ctypes.c_int64, ctypes.c_void_p
            lib.jal_int8_linear.argtypes = [vp, vp, vp, vp, i64, i64, i64, ctypes.c_int]
            lib.jal_int8_linear.restype = None
            lib.jal_int4_linear.argtypes = [vp, vp, vp, vp, vp, vp, i64, i64, i64, i64, ctypes.c_int]
            lib.jal_int4_linear.restype = None
            lib.jal_int4_linear_bf16.argtypes = [vp, vp, vp, vp, vp, vp, i64, i64, i64, i64, ctypes.c_int]
            lib.jal_int4_linear_bf16.restype = None
            lib.jal_int8_linear_a16.argtypes = [vp, vp, vp, vp, vp, vp, i64, i64, i64, i64, ctypes.c_int]
            lib.jal_int8_linear_a16.restype = None
            lib.jal_int4_linear_a16.argtypes = [vp, vp, vp, vp, vp, vp, vp, i64, i64, i64, i64, ctypes.c_int]
            lib.jal_int4_linear_a16.restype = None
            lib.jal_read_bytes.argtypes = [vp, i64, ctypes.c_int]
            lib.jal_read_bytes.restype = i64
            _lib = lib
        except Exception as exc:  # no compiler, sandbox, broken toolchain: fall back, say so once
            logger.warning("AVX-512 kernels unavailable (%s); using the portable torch path", exc)
            _lib_failed = True
    return _lib


def _avx512_available() -> bool:
    # Asked on every forward that resolves its kernel: once loaded, answer without searching PATH for a compiler.
    return _lib is not None or (avx512_supported() and load_extension() is not None)


def read_bandwidth(nbytes: int = 512 * 2**20, *, repeats: int = 5, best: bool = False) -> float | None:
    """Measured read bandwidth (bytes/s) of a buffer far larger than the caches: median of ``repeats`` passes,
    or the fastest pass with ``best=True`` (the machine's capability when other jobs share it).

    Streams the buffer with AVX-512 loads on all torch threads; None without the extension.
    """
    lib = load_extension()
    if lib is None:
        return None
    import time

    nbytes -= nbytes % 4096
    buf = torch.randint(0, 255, (nbytes,), dtype=torch.uint8)
    nthreads = torch.get_num_threads()
    lib.jal_read_bytes(buf.data_ptr(), nbytes, nthreads)  # warm-up: page faults, thread start
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        lib.jal_read_bytes(buf.data_ptr(), nbytes, nthreads)
        times.append(time.perf_counter() - t0)
    times.sort()
    return nbytes / (times[0] if best else times[len(times) // 2])


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def avx512_run(x: torch.Tensor, qw: QuantizedWeight, prepared: Any = None) -> torch.Tensor:
    """Weight-only linear through the extension: fp32 accumulate, dequant in registers."""
    lib = load_extension()
    if lib is None or x.device.type != "cpu":
        return torch_dequant_run(x, qw, None)
    m = x.shape[0]
    xf = x.to(torch.float32).contiguous()
    y = torch.empty(m, qw.out_features, dtype=torch.float32)
    nthreads = torch.get_num_threads()
    if qw.fmt == "int8":
        lib.jal_int8_linear(_ptr(xf), _ptr(qw.qweight), _ptr(qw.scales), _ptr(y), m, qw.out_features,
                            qw.in_features, nthreads)
    elif qw.fmt == "int4":
        assert qw.offsets is not None and qw.group_size is not None
        kp = qw.padded_in_features
        if kp != qw.in_features:
            xf = F.pad(xf, (0, kp - qw.in_features))
        xsum = xf.view(m, kp // qw.group_size, qw.group_size).sum(dim=2).contiguous()
        lib.jal_int4_linear(_ptr(xf), _ptr(xsum), _ptr(qw.qweight), _ptr(qw.scales), _ptr(qw.offsets), _ptr(y),
                            m, qw.out_features, kp, qw.group_size, nthreads)
    else:
        return torch_dequant_run(x, qw, None)
    return y if x.dtype == torch.float32 else y.to(x.dtype)


def bf16_supported() -> bool:
    """AVX512-BF16 (vdpbf16ps) present, for ``cpu-avx512-bf16``."""
    return "avx512_bf16" in _cpu_flags() and avx512_supported()


def avx512_bf16_run(x: torch.Tensor, qw: QuantizedWeight, prepared: Any = None) -> torch.Tensor:
    """int4 weights x bf16-rounded activations with vdpbf16ps (group size must be a multiple of 64)."""
    lib = load_extension()
    if lib is None or x.device.type != "cpu" or qw.fmt != "int4" or (qw.group_size or 1) % 64:
        return avx512_run(x, qw, prepared)
    assert qw.offsets is not None and qw.group_size is not None
    m, kp = x.shape[0], qw.padded_in_features
    xf = x.to(torch.float32)
    if kp != qw.in_features:
        xf = F.pad(xf, (0, kp - qw.in_features))
    xsum = xf.view(m, kp // qw.group_size, qw.group_size).sum(dim=2).contiguous()
    # per 64-chunk (half A|B of 32, nibble lo|hi of 16): order [lo A, lo B, hi A, hi B] to match the code loads
    xp = xf.to(torch.bfloat16).view(m, kp // 64, 2, 2, 16).transpose(2, 3).contiguous()
    y = torch.empty(m, qw.out_features, dtype=torch.float32)
    lib.jal_int4_linear_bf16(_ptr(xp), _ptr(xsum), _ptr(qw.qweight), _ptr(qw.scales), _ptr(qw.offsets), _ptr(y),
                             m, qw.out_features, kp, qw.group_size, torch.get_num_threads())
    return y if x.dtype == torch.float32 else y.to(x.dtype)


def vnni_supported() -> bool:
    """AVX512-VNNI (vpdpwssd) present, for ``cpu-avx512-a16``."""
    return "avx512_vnni" in _cpu_flags() and avx512_supported()


def _quantize_rows_int16(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (M, K) float32 -> (int16 codes, float32 per-row scale) with |code| <= 32767."""
    sx = (x.abs().amax(dim=1) / 32767.0).clamp_min(torch.finfo(torch.float32).tiny)
    return torch.round(x / sx[:, None]).to(torch.int16), sx.contiguous()


def avx512_a16_run(x: torch.Tensor, qw: QuantizedWeight, prepared: Any = None) -> torch.Tensor:
    """Integer-dot kernels: int8/int4 weights x int16-quantized activations (vpdpwssd, exact integer MACs)."""
    lib = load_extension()
    if lib is None or x.device.type != "cpu" or qw.fmt not in ("int8", "int4") or "avx512_vnni" not in _cpu_flags():
        return avx512_run(x, qw, prepared)
    if qw.fmt == "int4" and (qw.group_size or 1) % 64:
        return avx512_run(x, qw, prepared)
    m, n = x.shape[0], qw.out_features
    xf = x.to(torch.float32)
    y = torch.empty(m, n, dtype=torch.float32)
    nthreads = torch.get_num_threads()
    if qw.fmt == "int8":
        k = qw.in_features
        kx = -(-k // 32) * 32
        xq, sx = _quantize_rows_int16(F.pad(xf, (0, kx - k)) if kx != k else xf)
        xq = xq.contiguous()
        tot = torch.empty(m, n, dtype=torch.float64)
        lib.jal_int8_linear_a16(_ptr(xq), _ptr(sx), _ptr(qw.qweight), _ptr(qw.scales), _ptr(y), _ptr(tot), m, n, k,
                                kx, nthreads)
    else:
        assert qw.offsets is not None and qw.group_size is not None
        kp = qw.padded_in_features
        if kp != qw.in_features:
            xf = F.pad(xf, (0, kp - qw.in_features))
        xsum = xf.view(m, kp // qw.group_size, qw.group_size).sum(dim=2).contiguous()
        xq, sx = _quantize_rows_int16(xf)
        xp = xq.view(m, kp // 64, 2, 2, 16).transpose(2, 3).contiguous()  # same order as the bf16 kernel
        lib.jal_int4_linear_a16(_ptr(xp), _ptr(sx), _ptr(xsum), _ptr(qw.qweight), _ptr(qw.scales), _ptr(qw.offsets),
                                _ptr(y), m, n, kp, qw.group_size, nthreads)
    return y if x.dtype == torch.float32 else y.to(x.dtype)


# ---------------------------------------------------------------- fbgemm dynamic int8 (w8a8)
def _fbgemm_ok() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines and hasattr(torch.ops.quantized, "linear_dynamic")


def fbgemm_prepare(qw: QuantizedWeight) -> Any:
    """Pack the int8 weight for fbgemm (a copy of the weight: resident layers pay its bytes twice)."""
    zeros = torch.zeros(qw.out_features, dtype=torch.long)
    with warnings.catch_warnings():  # torch flags quantized tensors as deprecated; fbgemm needs one here
        warnings.simplefilter("ignore", UserWarning)
        qt = torch._make_per_channel_quantized_tensor(qw.qweight, qw.scales.double(), zeros, 0)
    return torch.ops.quantized.linear_prepack(qt, None)


@functools.lru_cache(maxsize=1)
def _cpu_has_vnni() -> bool:
    """Whether this CPU multiplies u8 x s8 without an int16 intermediate (AVX512-VNNI or AVX-VNNI)."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        return False  # unknown: take the safe path below
    return "avx512_vnni" in flags or "avx_vnni" in flags


def fbgemm_run(x: torch.Tensor, qw: QuantizedWeight, prepared: Any) -> torch.Tensor:
    if prepared is None:
        prepared = fbgemm_prepare(qw)
    # With VNNI (vpdpbusd) the int8 activation keeps all 8 bits. Without it fbgemm multiplies through
    # vpmaddubsw, whose int16 pair sums saturate on full-range activations (errors of ~5-20 % measured on
    # an AVX2-only EPYC), so the activation range is reduced to 7 bits there, as fbgemm's own guidance says.
    y = torch.ops.quantized.linear_dynamic(x.to(torch.float32).contiguous(), prepared, not _cpu_has_vnni())
    return y if x.dtype == torch.float32 else y.to(x.dtype)


# ---------------------------------------------------------------- torch's stock weight-only kernels (baselines)
def _has(name: str) -> bool:
    return hasattr(torch.ops.aten, name)


def int8pack_run(x: torch.Tensor, qw: QuantizedWeight, prepared: Any = None) -> torch.Tensor:
    xf = x.to(torch.float32).contiguous()
    y = torch._weight_int8pack_mm(xf, qw.qweight, qw.scales)
    return y if x.dtype == torch.float32 else y.to(x.dtype)


def int4pack_cpu_prepare(qw: QuantizedWeight) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Repack into torch's CPU int4 layout (w = (q - 8) * s + zero); None when N % 16 != 0 (unsupported)."""

    if qw.out_features % 16:
        return None
    q = unpack_int4(qw.qweight).to(torch.int32)
    packed = torch._convert_weight_to_int4pack_for_cpu(q, 1)
    assert qw.offsets is not None
    zeros = qw.offsets + 8.0 * qw.scales
    sz = torch.stack([qw.scales, zeros], dim=2).transpose(0, 1).contiguous()  # (G, N, 2)
    return packed, sz


def int4pack_cpu_run(x: torch.Tensor, qw: QuantizedWeight, prepared: Any) -> torch.Tensor:
    if prepared is None:
        prepared = int4pack_cpu_prepare(qw)
    if prepared is None:
        return torch_dequant_run(x, qw, None)
    packed, sz = prepared
    xf = x.to(torch.float32)
    kp = qw.padded_in_features
    if kp != qw.in_features:
        xf = F.pad(xf, (0, kp - qw.in_features))
    y = torch._weight_int4pack_mm_for_cpu(xf.contiguous(), packed, qw.group_size, sz)
    return y if x.dtype == torch.float32 else y.to(x.dtype)


register(Kernel(
    name="cpu-avx512", formats=("int8", "int4"), device_type="cpu", run=avx512_run,
    available=_avx512_available, tolerance=1e-4,
    description="C++ AVX-512 weight-only GEMV/GEMM, dequant in registers, fp32 accumulate, OpenMP over rows"))
register(Kernel(
    name="cpu-avx512-bf16", formats=("int4",), device_type="cpu", run=avx512_bf16_run,
    available=lambda: "avx512_bf16" in _cpu_flags() and _avx512_available(), tolerance=1e-2,
    quantizes_activations=True,
    description="C++ AVX512-BF16 int4: activations rounded to bf16, codes to bf16 by table, vdpbf16ps (group % 64)"))
register(Kernel(
    name="cpu-avx512-a16", formats=("int8", "int4"), device_type="cpu", run=avx512_a16_run,
    available=lambda: "avx512_vnni" in _cpu_flags() and _avx512_available(), tolerance=1e-3,
    quantizes_activations=True,
    description="C++ AVX512-VNNI: activations rounded to int16 per row (~3e-5), exact integer MACs (vpdpwssd)"))
register(Kernel(
    name="int8-dynamic", formats=("int8",), device_type="cpu", run=fbgemm_run, available=_fbgemm_ok, tolerance=5e-2,
    prepare=fbgemm_prepare, quantizes_activations=True,
    description="fbgemm w8a8: activations quantized per tensor at run time (different numerics: tolerance 5e-2)"))
register(Kernel(
    name="torch-int8pack-cpu", formats=("int8",), device_type="cpu", run=int8pack_run,
    available=lambda: _has("_weight_int8pack_mm"), tolerance=1e-4,
    description="torch stock _weight_int8pack_mm (baseline)"))
register(Kernel(
    name="torch-int4pack-cpu", formats=("int4",), device_type="cpu", run=int4pack_cpu_run,
    available=lambda: _has("_weight_int4pack_mm_for_cpu"), tolerance=1e-3, prepare=int4pack_cpu_prepare,
    description="torch stock _weight_int4pack_mm_for_cpu (baseline; bf16 scales inside)"))
