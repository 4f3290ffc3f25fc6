"""Quantization kernels: formats, every available kernel against float64, QuantizedLinear, the choice.

Tolerances are each kernel's stated one (relative Frobenius error vs ``x @ dequantize(W).T`` in float64,
on fresh random inputs); weight-quantization error itself is checked separately against the float weight.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from runtime.errors import JalapenoError
from runtime.kernels import (
    KernelSelector,
    QuantizedLinear,
    available_kernels,
    choose_kernel,
    choose_kernels,
    default_kernel,
    dequantize,
    get_kernel,
    kernel_error,
    quantize_weight,
    quantized_linear,
)
from runtime.kernels.formats import pack_int4, unpack_int4

# Odd sizes on purpose: K not a multiple of 16 (AVX-512 tail) or of the group size (int4 padding), N not a
# multiple of the 8-row tile.
SHAPES = [(64, 256), (37, 4095), (19, 100)]


@pytest.fixture(autouse=True)
def _kernel_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Compiled kernels go to a per-session temp cache unless the caller set one (CI: compile once per run).
    if "AUTOSURGEON_CACHE" not in os.environ:
        monkeypatch.setenv("AUTOSURGEON_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.mark.parametrize(("fmt", "bound"), [("int8", 0.012), ("int4", 0.12), ("fp8", 0.05)])
def test_quantization_error_of_the_weight_is_bounded(fmt: str, bound: float) -> None:
    w = torch.randn(48, 300, generator=torch.Generator().manual_seed(1))
    qw = quantize_weight(w, fmt, group_size=64)
    back = dequantize(qw)
    assert back.shape == w.shape
    assert ((back - w).norm() / w.norm()).item() < bound


def test_int4_pack_roundtrip_and_layout() -> None:
    q = torch.randint(0, 16, (5, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    packed = pack_int4(q)
    assert packed.shape == (5, 32)
    assert torch.equal(unpack_int4(packed), q)
    # byte j of a 32-block holds k=j low and k=j+16 high (the layout the AVX-512 kernel relies on)
    assert packed[0, 3].item() == q[0, 3].item() | (q[0, 19].item() << 4)


def test_int4_pads_k_to_whole_groups() -> None:
    w = torch.randn(8, 100)
    qw = quantize_weight(w, "int4", group_size=64)
    assert qw.in_features == 100 and qw.padded_in_features == 128
    assert qw.scales.shape == (8, 2)


@pytest.mark.parametrize("group_size", [0, 48, 100])
def test_bad_group_size_is_a_clear_error(group_size: int) -> None:
    with pytest.raises(JalapenoError, match="`group_size` must be a positive multiple of 32"):
        quantize_weight(torch.randn(4, 64), "int4", group_size=group_size)


def test_bad_format_and_kernel_names_are_clear_errors() -> None:
    with pytest.raises(JalapenoError, match="`fmt` must be one of"):
        quantize_weight(torch.randn(4, 64), "int3")
    with pytest.raises(JalapenoError, match="`kernel` must be one of"):
        get_kernel("nope")


def _cpu_cases() -> list[tuple[str, str]]:
    return [(fmt, name) for fmt in ("int8", "int4", "fp8") for name in available_kernels(fmt, "cpu")]


@pytest.mark.parametrize(("fmt", "name"), _cpu_cases())
@pytest.mark.parametrize(("n", "k"), SHAPES)
def test_cpu_kernel_matches_float64_reference(fmt: str, name: str, n: int, k: int) -> None:
    gen = torch.Generator().manual_seed(n * 7919 + k)
    # group 64: the bf16/int16 int4 paths need group % 64 == 0 (group 32 falls back: tested below)
    qw = quantize_weight(torch.randn(n, k, generator=gen), fmt, group_size=64)
    for batch, seed in ((1, 3), (3, 4), (16, 5)):
        err = kernel_error(name, qw, batch=batch, seed=seed)
        assert err <= get_kernel(name).tolerance, f"{name} {fmt} {n}x{k} batch {batch}: {err:.2e}"


@pytest.mark.parametrize("name", ["cpu-avx512", "cpu-avx512-a16", "cpu-avx512-bf16", "cpu-avx2"])
def test_int4_group_32_is_exact_through_the_fallback(name: str) -> None:
    if name not in available_kernels("int4", "cpu"):
        pytest.skip(f"{name} not available here")
    qw = quantize_weight(torch.randn(24, 96, generator=torch.Generator().manual_seed(9)), "int4", group_size=32)
    assert kernel_error(name, qw, batch=2, seed=1) <= get_kernel(name).tolerance


def test_avx512_kernel_is_available_here_and_default() -> None:
    # The CI machine class has AVX-512 and g++; if this fails there, the fast path silently went missing.
    from runtime.kernels.cpu import avx512_supported

    if not avx512_supported():
        pytest.skip("no AVX-512 or no C++ compiler on this machine")
    assert "cpu-avx512" in available_kernels("int8", "cpu")
    assert default_kernel("int4", "cpu").name == "cpu-avx512"


def test_avx2_kernel_is_the_int8_default_without_avx512() -> None:
    # CPUs with AVX2 but no AVX-512 (this project's 2-core AMD Zen 3 machines) must not fall back to the
    # dequantize-then-matmul path, which is slower than float32.
    from runtime.kernels.cpu import avx512_supported
    from runtime.kernels.cpu_avx2 import avx2_supported

    if avx512_supported() or not avx2_supported():
        pytest.skip("needs AVX2 without AVX-512, and a C++ compiler")
    assert default_kernel("int8", "cpu").name == "cpu-avx2"
    assert default_kernel("int4", "cpu").name == "cpu-avx2"  # torch-dequant was ~100x slower than fp32 here
    w = torch.randn(37, 1003, generator=torch.Generator().manual_seed(3))
    for qw in (quantize_weight(w, "int8"), quantize_weight(w, "int4", group_size=128)):  # int4: K padded to 1024
        for batch in (1, 5):
            assert kernel_error("cpu-avx2", qw, batch=batch) <= get_kernel("cpu-avx2").tolerance


def test_missing_compiler_falls_back_to_torch(tmp_path: os.PathLike) -> None:
    probe = textwrap.dedent(
        """
        import torch
        from runtime.kernels import available_kernels, quantize_weight, kernel_error, default_kernel
        from runtime.kernels.cpu import avx512_run
        assert "cpu-avx512" not in available_kernels("int8", "cpu")
        assert default_kernel("int8", "cpu").name == "torch-dequant"
        qw = quantize_weight(torch.randn(16, 64), "int8")
        x = torch.randn(2, 64)
        ref = x.double() @ qw.qweight.double().t() * qw.scales.double()
        assert torch.allclose(avx512_run(x, qw).double(), ref, rtol=1e-4, atol=1e-4)
        """
    )
    env = dict(os.environ, CXX=str(tmp_path) + "/no-such-compiler", AUTOSURGEON_CACHE=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_quantized_linear_from_linear(fmt: str) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(200, 72)
    qlin = QuantizedLinear.from_linear(lin, fmt, group_size=64)
    x = torch.randn(2, 5, 200)
    y = qlin(x)
    assert y.shape == (2, 5, 72)
    ref = lin(x)
    assert ((y - ref).norm() / ref.norm()).item() < (0.02 if fmt == "int8" else 0.15)
    # exact against its own dequantized weight, bias included
    exact = x.double() @ dequantize(qlin.quantized_weight(), torch.float64).t() + lin.bias.double()
    assert ((y.double() - exact).norm() / exact.norm()).item() < 1e-4
    names = set(dict(qlin.named_buffers()))
    assert names == ({"qweight", "scales", "bias"} | ({"offsets"} if fmt == "int4" else set()))
    assert not list(qlin.parameters())


def test_quantized_linear_state_dict_roundtrip_and_bf16_input() -> None:
    lin = nn.Linear(64, 32, bias=False)
    src = QuantizedLinear.from_linear(lin, "int4", group_size=32)
    dst = QuantizedLinear(64, 32, fmt="int4", group_size=32, bias=False)
    dst.load_state_dict(src.state_dict())
    x = torch.randn(3, 64)
    assert torch.equal(src(x), dst(x))
    assert dst(x.bfloat16()).dtype == torch.bfloat16


def test_prepared_weight_is_rebuilt_when_buffers_change() -> None:
    # Streaming replaces buffers: a packing kernel must not keep using the old packed copy.
    if "int8-dynamic" not in available_kernels("int8", "cpu"):
        pytest.skip("fbgemm not available")
    a, b = nn.Linear(64, 32, bias=False), nn.Linear(64, 32, bias=False)
    qa, qb = QuantizedLinear.from_linear(a, "int8", kernel="int8-dynamic"), QuantizedLinear.from_linear(b, "int8")
    x = torch.randn(4, 64)
    ya = qa(x)
    qa.qweight, qa.scales = qb.qweight.clone(), qb.scales.clone()
    yb = qa(x)
    ref_b = b(x)
    assert ((yb - ref_b).norm() / ref_b.norm()).item() < 0.05
    assert not torch.allclose(ya, yb)


def test_moving_the_module_drops_its_packed_copy() -> None:
    # A packed copy built from the old buffers must not outlive a move (it would stay on the old device).
    if "int8-dynamic" not in available_kernels("int8", "cpu"):
        pytest.skip("fbgemm not available")
    q = QuantizedLinear.from_linear(nn.Linear(64, 32), "int8", kernel="int8-dynamic")
    q(torch.randn(2, 64))
    assert q.prepared_nbytes > 0
    q.to("cpu", torch.float32)
    assert q.prepared_nbytes == 0


def test_functional_form_matches_module() -> None:
    lin = nn.Linear(96, 40)
    q = QuantizedLinear.from_linear(lin, "int8")
    x = torch.randn(7, 96)
    torch.testing.assert_close(quantized_linear(x, q.quantized_weight(), bias=q.bias), q(x))


def test_wrong_input_width_is_a_clear_error() -> None:
    q = QuantizedLinear(64, 8, fmt="int8")
    with pytest.raises(JalapenoError, match="in_features=64"):
        q(torch.randn(2, 63))


def test_choose_kernel_picks_a_passing_kernel_and_selector_caches() -> None:
    qw = quantize_weight(torch.randn(128, 256), "int8")
    choice = choose_kernel(qw, batch=1, warmup=1, repeats=3)
    assert choice.name in available_kernels("int8", "cpu")
    assert choice.median_s[choice.name] == min(choice.median_s.values())
    assert choice.errors[choice.name] <= get_kernel(choice.name).tolerance
    weight_only = choose_kernel(qw, batch=2, warmup=1, repeats=2, allow_activation_quant=False)
    assert not get_kernel(weight_only.name).quantizes_activations
    selector = KernelSelector(warmup=1, repeats=2)
    first = selector.choose(qw, batch=4)
    assert selector.choose(qw, batch=4) is first and len(selector.cache) == 1
    with pytest.raises(JalapenoError, match="`batch` must be >= 1"):
        choose_kernel(qw, batch=0)


# ---------------------------------------------------------------- CUDA (skipped without a GPU)
def _cuda_cases() -> list[tuple[str, str]]:
    names = [k.name for k in __import__("runtime.kernels", fromlist=["all_kernels"]).all_kernels()
             if k.device_type in ("cuda", "any")]
    return [(fmt, name) for fmt in ("int8", "int4", "fp8") for name in names
            if fmt in get_kernel(name).formats]


@pytest.mark.gpu
@pytest.mark.parametrize(("fmt", "name"), _cuda_cases())
@pytest.mark.parametrize(("n", "k"), [*SHAPES, (4096, 1024), (4095, 11007)])
def test_cuda_kernel_matches_float64_reference(fmt: str, name: str, n: int, k: int) -> None:
    kernel = get_kernel(name)
    if not kernel.supports(fmt, "cuda"):
        pytest.skip(f"{name} does not run here")
    gen = torch.Generator().manual_seed(n + k)
    qw = quantize_weight(torch.randn(n, k, generator=gen), fmt, group_size=128).to("cuda")
    for batch, seed in ((1, 3), (16, 4)):
        err = kernel_error(kernel, qw, batch=batch, seed=seed)
        assert err <= kernel.tolerance, f"{name} {fmt} {n}x{k} batch {batch}: {err:.2e}"


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["int8", "int4", "fp8"])
def test_quantized_linear_moves_to_cuda(fmt: str) -> None:
    lin = nn.Linear(512, 256)
    q = QuantizedLinear.from_linear(lin, fmt)
    x = torch.randn(2, 512)
    y_cpu = q(x)
    q.to("cuda")
    y = q(x.cuda())
    assert y.device.type == "cuda"
    assert ((y.cpu().float() - y_cpu).norm() / y_cpu.norm()).item() < 0.1
    assert q.resolve_kernel().device_type in ("cuda", "any")


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_choose_kernel_on_cuda(fmt: str) -> None:
    qw = quantize_weight(torch.randn(1024, 512), fmt).to("cuda")
    choice = choose_kernel(qw, batch=1, warmup=1, repeats=3)
    assert choice.name in available_kernels(fmt, "cuda")
    assert choice.errors[choice.name] <= get_kernel(choice.name).tolerance


def test_choose_kernels_sets_every_quantized_linear() -> None:
    model = nn.Sequential(QuantizedLinear.from_linear(nn.Linear(64, 32), "int8"), nn.ReLU(),
                          QuantizedLinear.from_linear(nn.Linear(32, 64), "int4", group_size=32),
                          QuantizedLinear.from_linear(nn.Linear(64, 32), "int8"))
    selector = KernelSelector(warmup=1, repeats=2, allow_activation_quant=False)
    chosen = choose_kernels(model, batch=1, selector=selector)
    assert set(chosen) == {"0", "2", "3"} and len(selector.cache) == 2  # layers 0 and 3 share a shape
    assert all(not get_kernel(k).quantizes_activations for k in chosen.values())
    assert model[0].kernel == chosen["0"]
    model(torch.randn(2, 64))


def test_quantized_linear_resolves_its_kernel_once_and_follows_a_new_name() -> None:
    # The default kernel's availability checks are not free; forward resolves once per (name, device) and must
    # still follow a kernel named later (choose_kernels sets .kernel on live modules).
    q = QuantizedLinear.from_linear(torch.nn.Linear(32, 8), "int8")
    first = q.resolve_kernel()
    assert first.name == default_kernel("int8", "cpu").name
    assert q.resolve_kernel() is first
    q.kernel = "torch-dequant"
    assert q.resolve_kernel().name == "torch-dequant"
    q.kernel = None
    assert q.resolve_kernel() is first
    assert pickle.loads(pickle.dumps(q)).resolve_kernel() is first  # the cache holds a name, not the Kernel
