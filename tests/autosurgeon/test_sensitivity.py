"""Sensitivity: ordering of precisions, bit-exact restore, cache, Hutchinson against exact Hessian traces."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import autosurgeon.quality.sensitivity as sens
from autosurgeon.quality.calibration import CalibrationData, digits_calibration
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.quality.hutchinson import hutchinson_trace, unit_hessian_traces
from autosurgeon.quality.precision_swap import precision_units, quantized_copy, swapped
from autosurgeon.quality.sensitivity import SensitivityTable, measure_sensitivity, spearman

UNIT = "model.layers.0.mlp.down_proj"


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny matrices gain nothing from two threads, and on a shared 2-core box OpenMP spin-waits make them slow.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def llama():
    """A tiny random Llama with a wide init, so next-token distributions are far from uniform."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=96, initializer_range=0.1)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def calib():
    g = torch.Generator().manual_seed(0)
    windows = torch.randint(0, 256, (4, 33), generator=g)
    return CalibrationData("tokens", windows[:, :-1], windows[:, 1:], {"test": "random"})


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_divergence_orders_int4_int8_bf16(llama, calib, tmp_path):
    table = measure_sensitivity(llama, calibration=calib, units=[UNIT, "lm_head"], group_size=32,
                                hessian_samples=0, cache_dir=tmp_path)
    d = {p: table.divergence[(UNIT, p)] for p in table.precisions}
    assert d["int4"] > d["int8"] > d["bfloat16"] >= 0.0
    assert d["int8"] > d["float16"] >= 0.0  # fp16 keeps 10 mantissa bits, int8 ~7 per channel
    assert table.metric == "kl_next_token"
    assert set(table.loss_delta) == set(table.divergence)
    assert table.perturbation[(UNIT, "int4")] > table.perturbation[(UNIT, "int8")] > 0.0


def test_measurement_restores_model_bit_identical(llama, calib):
    before = _state(llama)
    flags = [p.requires_grad for p in llama.parameters()]
    modules = dict(llama.named_modules())
    threads = torch.get_num_threads()
    measure_sensitivity(llama, calibration=calib, units=[UNIT, "model.layers.1.self_attn.q_proj"], group_size=32,
                        hessian_samples=1, use_cache=False, threads=threads + 1)
    assert torch.get_num_threads() == threads
    after = llama.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [p.requires_grad for p in llama.parameters()] == flags
    assert all(modules[n] is m for n, m in llama.named_modules())  # the original module objects are back
    assert llama.config._attn_implementation == "sdpa"


def test_swapped_restores_on_error_and_checks_before_touching(llama):
    original = llama.get_submodule(UNIT)
    with pytest.raises(RuntimeError, match="boom"):
        with swapped(llama, {UNIT: "int4"}, group_size=32):
            assert llama.get_submodule(UNIT) is not original
            raise RuntimeError("boom")
    assert llama.get_submodule(UNIT) is original
    with pytest.raises(InvalidArgumentError, match="'model.nope' is not a module"):
        with swapped(llama, {UNIT: "int4", "model.nope": "int8"}):
            pass
    with pytest.raises(InvalidArgumentError, match="is a LlamaRMSNorm, not a linear/conv unit"):
        with swapped(llama, {"model.norm": "int8"}):
            pass
    assert llama.get_submodule(UNIT) is original


def test_int4_swap_is_the_runtime_quantized_linear(llama, calib):
    from runtime.kernels import QuantizedLinear

    w = quantized_copy(llama.get_submodule(UNIT).weight, "int4", group_size=32)
    with swapped(llama, {UNIT: "int4"}, group_size=32):
        module = llama.get_submodule(UNIT)
        assert isinstance(module, QuantizedLinear) and module.group_size == 32
        x = torch.randn(3, module.in_features, generator=torch.Generator().manual_seed(0))
        # The kernel's result against a float64 product with Q(W): the runtime's stated cpu tolerance is 1e-4.
        ref = x.double() @ w.double().T
        assert (module(x).double() - ref).norm() / ref.norm() < 1e-3


def test_cache_round_trip_and_key(llama, calib, tmp_path, monkeypatch):
    table = measure_sensitivity(llama, calibration=calib, units=[UNIT], group_size=32, hessian_samples=1,
                                cache_dir=tmp_path)
    again = SensitivityTable.from_json(table.to_json())
    assert again == table
    files = list((tmp_path / "sensitivity").glob("*.json"))
    assert [f.stem for f in files] == [table.key]

    def must_not_run(*args, **kwargs):
        raise AssertionError("measured again despite the cache")

    monkeypatch.setattr(sens, "_divergences", must_not_run)
    cached = measure_sensitivity(llama, calibration=calib, units=[UNIT], group_size=32, hessian_samples=1,
                                 cache_dir=tmp_path)
    assert cached == table
    # Other weights' VALUES (same architecture) must not hit that entry.
    other = type(llama)(llama.config).eval()
    assert sens._cache_key(other, table.settings) != table.key
    with pytest.raises(InvalidArgumentError, match="`_version` 99 is newer than this AutoSurgeon reads"):
        SensitivityTable.from_json(table.to_json().replace('"_version": 3', '"_version": 99'))


def test_predict_loss_is_additive_and_checks_input():
    table = SensitivityTable(
        divergence={("a", "int8"): 0.01, ("a", "int4"): 0.1, ("b", "int8"): 0.02, ("b", "int4"): 0.3},
        hessian={"a": 8.0, "b": 2.0}, params={"a": 4, "b": 2},
        perturbation={("a", "int8"): 0.5, ("a", "int4"): 2.0, ("b", "int8"): 1.0, ("b", "int4"): 3.0},
        metric="kl_next_token",
        loss_delta={("a", "int8"): -0.001, ("a", "int4"): 0.05, ("b", "int8"): 0.002, ("b", "int4"): 0.2})
    assert table.predict_loss({"a": "int4", "b": "int8"}) == pytest.approx(0.12)
    assert table.predict_loss({"a": "float32", "b": {"precision": "int4", "placement": "cpu"}}) == pytest.approx(0.3)
    assert table.omega("a", "int4") == pytest.approx(8.0 / 4 * 2.0)
    assert table.predict_loss({"a": "int4", "b": "int4"}, proxy="hessian") == pytest.approx(4.0 + 3.0)
    assert table.predict_loss({"a": "int8", "b": "int8"}, proxy="loss_delta") == pytest.approx(0.001)
    with pytest.raises(InvalidArgumentError, match="unit 'c' is not in the sensitivity table"):
        table.predict_loss({"c": "int8"})
    with pytest.raises(InvalidArgumentError, match="precision 'bfloat16' of unit 'a' was not measured"):
        table.predict_loss({"a": "bfloat16"})
    with pytest.raises(InvalidArgumentError, match="`proxy` must be one of"):
        table.predict_loss({}, proxy="magic")


def test_hutchinson_exact_when_gram_matrix_is_diagonal():
    # L(W) = 1/N sum_n ||W x_n - t_n||^2, W (O, D): Hessian = I_O (x) A with A = 2/N X^T X, so
    # Tr(H) = O * 2/N * sum_n ||x_n||^2. If X has orthogonal columns A is diagonal and v^T H v = Tr(H) for EVERY
    # Rademacher v (v_i^2 = 1): the estimate is exact up to float rounding (rel 1e-6).
    n, d, o = 8, 4, 3
    x = torch.zeros(n, d, dtype=torch.float64)
    for j in range(d):
        x[2 * j, j], x[2 * j + 1, j] = 1.5 + j, -0.5 * j  # disjoint rows per column: orthogonal columns
    t = torch.randn(n, o, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    w = torch.randn(o, d, dtype=torch.float64, requires_grad=True)
    exact = o * 2.0 / n * float((x**2).sum())
    est = hutchinson_trace([lambda: ((x @ w.T - t) ** 2).sum() / n], {"w": w}, n_samples=3, seed=0)["w"]
    assert est == pytest.approx(exact, rel=1e-6)


def test_hutchinson_general_quadratic_within_four_standard_errors():
    # Same loss, dense X. v^T H v = Tr(H) + sum_o sum_{i!=j} A_ij v_oi v_oj, whose variance is
    # O * 2 * sum_{i!=j} A_ij^2; with S samples the standard error is sqrt(that / S). Tolerance: 4 SE.
    n, d, o, samples = 16, 6, 2, 200
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, d, dtype=torch.float64, generator=g)
    t = torch.randn(n, o, dtype=torch.float64, generator=g)
    w = torch.randn(o, d, dtype=torch.float64, generator=g).requires_grad_(True)
    a = 2.0 / n * x.T @ x
    exact = o * float(torch.trace(a))
    se = math.sqrt(o * 2.0 * float((a**2).sum() - (torch.diagonal(a) ** 2).sum()) / samples)
    est = hutchinson_trace([lambda: ((x @ w.T - t) ** 2).sum() / n], {"w": w}, n_samples=samples, seed=0)["w"]
    assert abs(est - exact) <= 4 * se
    assert se < 0.1 * exact  # the check is meaningful: 4 SE is well under the trace itself


def test_unit_hessian_trace_of_softmax_regression_matches_closed_form():
    # A linear classifier z = W x with mean cross-entropy: H = 1/N sum_n (diag(p_n) - p_n p_n^T) (x) x_n x_n^T,
    # so Tr(H) = 1/N sum_n sum_c p_nc (1 - p_nc) ||x_n||^2. 400 samples in two batches; tolerance 8 %, about
    # 4 SE (the estimate's relative spread over seeds 0..9 was 1.8 % when this test was written; seed 0: +2.9 %).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3, bias=False)).double()
    x = torch.randn(10, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = torch.randint(0, 3, (10,), generator=torch.Generator().manual_seed(3))
    calib = CalibrationData("images", x, y)
    with torch.no_grad():
        p = torch.softmax(model(x), dim=1)
    exact = float(((p * (1 - p)).sum(1) * x.flatten(1).pow(2).sum(1)).mean())
    est = unit_hessian_traces(model, calib, ["1"], n_samples=400, seed=0, batch_size=5)["1"]
    assert est == pytest.approx(exact, rel=0.08)


def test_conv_units_on_a_digits_cnn():
    from autosurgeon.models.digits import DigitsCNN

    torch.manual_seed(0)
    model = DigitsCNN(width=8).eval()
    calib = digits_calibration(n_samples=32, seed=0)
    assert precision_units(model) == ["stem.0", "block.conv1", "block.conv2", "down.0", "fc"]
    table = measure_sensitivity(model, calibration=calib, precisions=("bfloat16", "int8", "int4"), group_size=32,
                                hessian_samples=2, use_cache=False)
    assert table.metric == "kl_logits"
    assert table.divergence[("down.0", "int4")] > table.divergence[("down.0", "int8")] > 0.0
    assert set(table.hessian) == set(precision_units(model))
    with pytest.raises(InvalidArgumentError, match="cannot be measured at precision 'int8-dynamic'"):
        with swapped(model, {"stem.0": "int8-dynamic"}):
            pass


def test_spearman_matches_scipy_with_ties():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 40).astype(float)  # many ties
    b = a + rng.normal(0, 2, 40)
    assert spearman(a, b) == pytest.approx(scipy_stats.spearmanr(a, b).statistic, abs=1e-12)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_bad_arguments_are_named(llama, calib):
    with pytest.raises(InvalidArgumentError, match="no default calibration data for task 'custom'"):
        measure_sensitivity(nn.Sequential(nn.Linear(2, 2)), use_cache=False)
    with pytest.raises(InvalidArgumentError, match=r"`units` \['model.norm'\] are not linear/conv units"):
        measure_sensitivity(llama, calibration=calib, units=["model.norm"], use_cache=False)
    with pytest.raises(InvalidArgumentError, match="`precisions` must be drawn from"):
        measure_sensitivity(llama, calibration=calib, precisions=("int2",), use_cache=False)
    with pytest.raises(InvalidArgumentError, match="`hessian_samples` must be >= 0"):
        measure_sensitivity(llama, calibration=calib, hessian_samples=-1, use_cache=False)
    with pytest.raises(InvalidArgumentError, match="`threads` must be >= 1"):
        measure_sensitivity(llama, calibration=calib, threads=0, use_cache=False)
