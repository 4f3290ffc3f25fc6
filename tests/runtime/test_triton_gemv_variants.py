"""The candidate one-row int4 GEMVs (exponent-trick conversion): exact enough against float64 on a GPU and,
without one, through Triton's interpreter when triton is here (index algebra, padded K, partial tiles)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from runtime.kernels import quantize_weight
from runtime.kernels.formats import dequantize
from runtime.kernels.triton_gemv_variants import gemv1_variant

_CASES = [(64, 256, 128, 4, 4), (40, 200, 32, 2, 8), (24, 512, 64, 8, 2), (33, 1100, 256, 4, 1)]

_INTERPRETED = textwrap.dedent("""
    import torch
    from runtime.kernels.formats import dequantize, quantize_weight
    from runtime.kernels.triton_gemv_variants import gemv1_variant
    for n, k, gs, block_n, steps in CASES:
        qw = quantize_weight(torch.randn(n, k), "int4", group_size=gs)
        x = torch.randn(1, k)
        ref = x.double() @ dequantize(qw, torch.float64).t()
        for variant in ("magic", "group"):
            y = gemv1_variant(x, qw, variant, block_n=block_n, steps=steps if variant == "group" else 4 * steps)
            err = float((y.double() - ref).norm() / ref.norm())
            assert err < 1e-5, (variant, n, k, gs, err)
""").replace("CASES", repr(_CASES))


def test_variants_in_the_triton_interpreter() -> None:
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}  # set before triton.jit runs, so in a child process
    done = subprocess.run([sys.executable, "-c", _INTERPRETED], env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["magic", "group"])
def test_variants_match_float64_on_the_gpu(variant: str) -> None:
    pytest.importorskip("triton")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    for n, k, gs, block_n, steps in [*_CASES, (4096, 4096, 128, 4, 2)]:
        qw = quantize_weight(torch.randn(n, k, generator=torch.Generator().manual_seed(n + k)), "int4",
                             group_size=gs).to("cuda")
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        ref = x.double() @ dequantize(qw, torch.float64).t()
        y = gemv1_variant(x, qw, variant, block_n=block_n, steps=steps if variant == "group" else 4 * steps)
        assert float((y.double() - ref).norm() / ref.norm()) < 1e-5
