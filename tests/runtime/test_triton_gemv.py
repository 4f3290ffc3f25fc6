"""The CUDA int4 GEMV (``cuda-int4-gemv``): exact enough against float64 at decode row counts, group sizes and
padded K, inside a captured CUDA graph, and (without a GPU) through Triton's interpreter when triton is here."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from runtime.kernels import get_kernel, kernel_error, quantize_weight
from runtime.kernels.formats import dequantize
from runtime.kernels.triton_gemv import gemv_run


@pytest.mark.gpu
@pytest.mark.parametrize(("n", "k", "group_size"), [(4096, 4096, 128), (1000, 1100, 64), (37, 300, 32),
                                                  (520, 512, 256), (64, 192, 96)])
def test_gemv_matches_float64_at_decode_rows(group_size: int, n: int, k: int) -> None:
    kernel = get_kernel("cuda-int4-gemv")
    if not kernel.supports("int4", "cuda"):
        pytest.skip("cuda-int4-gemv does not run here (no CUDA GPU of capability >= 8.0 or no triton)")
    gen = torch.Generator().manual_seed(n * 7 + k)
    qw = quantize_weight(torch.randn(n, k, generator=gen), "int4", group_size=group_size).to("cuda")
    for batch in (1, 3, 9):
        for dtype in (torch.float32, torch.bfloat16):
            err = kernel_error(kernel, qw, batch=batch, seed=batch, dtype=dtype)
            assert err <= kernel.tolerance, f"{n}x{k} g{group_size} batch {batch} {dtype}: {err:.2e}"


@pytest.mark.gpu
def test_gemv_replays_in_a_cuda_graph() -> None:
    kernel = get_kernel("cuda-int4-gemv")
    if not kernel.supports("int4", "cuda"):
        pytest.skip("cuda-int4-gemv does not run here")
    qw = quantize_weight(torch.randn(2048, 1024), "int4").to("cuda")
    x = torch.randn(1, 1024, device="cuda", dtype=torch.bfloat16)
    eager = gemv_run(x, qw)  # also compiles and autotunes outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = gemv_run(x, qw)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, gemv_run(x, qw))
    assert not torch.equal(out, eager)


_INTERPRETED = textwrap.dedent("""
    import torch
    from runtime.kernels.formats import dequantize, quantize_weight
    from runtime.kernels import triton_gemv
    triton, kernel, kernel1 = triton_gemv._build()
    for n, k, gs, m, block_n, nb in [(64, 256, 128, 1, 8, 4), (50, 300, 64, 2, 16, 2), (33, 96, 32, 3, 4, 4),
                                     (40, 1100, 256, 1, 8, 16)]:
        qw = quantize_weight(torch.randn(n, k), "int4", group_size=gs)
        x, y, kp = torch.randn(m, k), torch.empty(m, n), qw.padded_in_features
        kernel.fn[(triton.cdiv(n, block_n),)](
            x, qw.qweight, qw.scales, qw.offsets, y, m, n, k, kp, kp // gs, x.stride(0), qw.qweight.stride(0),
            qw.scales.stride(0), y.stride(0), GS=gs, BLOCK_M=triton.next_power_of_2(m), BLOCK_N=block_n, NB=nb)
        ref = x.double() @ dequantize(qw, torch.float64).t()
        err = float((y.double() - ref).norm() / ref.norm())
        assert err < 1e-5, (n, k, gs, m, err)
        y1 = torch.empty(1, n)
        kernel1.fn[(triton.cdiv(n, block_n),)](
            x, qw.qweight, qw.scales, qw.offsets, y1, n, k, kp, kp // gs, qw.qweight.stride(0), qw.scales.stride(0),
            GS=gs, BLOCK_N=block_n, NB=nb)
        err1 = float((y1.double() - ref[:1]).norm() / ref[:1].norm())
        assert err1 < 1e-5, (n, k, gs, err1)
""")


def test_gemv_kernel_body_in_the_triton_interpreter() -> None:
    """The kernel's index algebra (nibble layout, padded K, partial row and group tiles) on the CPU."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}  # set before triton.jit runs, so in a child process
    done = subprocess.run([sys.executable, "-c", _INTERPRETED], env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def test_gemv_falls_back_above_its_row_limit_without_a_gpu() -> None:
    """Prefill-sized inputs take the bf16 dequantize path (runs anywhere): same numbers as that path."""
    qw = quantize_weight(torch.randn(64, 256), "int4")
    x = torch.randn(9, 256)
    ref = x.double() @ dequantize(qw, torch.float64).t()
    y = gemv_run(x, qw)
    assert float((y.double() - ref).norm() / ref.norm()) < 1.5e-2
