"""The classifier's quality proxy: expected top-1 flips from margin noise (autosurgeon/quality/flip_proxy.py)."""
from __future__ import annotations

import math

import pytest
import torch
from test_evaluate import digits

from autosurgeon.quality.calibration import CalibrationData
from autosurgeon.quality.flip_proxy import expected_flip_loss, margin_change_sq, reference_margins
from autosurgeon.quality.sensitivity import SensitivityTable, measure_sensitivity


def test_margins_are_the_gaps_to_the_top_class_smallest_first():
    logp = torch.log_softmax(torch.tensor([[2.0, 1.5, 0.0], [0.0, 0.0, 3.0]]), dim=-1)
    top, margins = reference_margins(logp, k=2)
    assert top.tolist() == [0, 2]
    assert margins.flatten().tolist() == pytest.approx([0.5, 2.0, 3.0, 3.0])
    # a candidate that swaps the first row's two leading logits moves that margin by -1 (squared 1); others 0
    cand = torch.log_softmax(torch.tensor([[1.5, 2.0, 0.0], [0.0, 0.0, 3.0]]), dim=-1)
    sq, n = margin_change_sq(logp, cand)
    assert n == 4 and sq == pytest.approx(1.0 + 0.25)  # margins vs class 1: -1; vs class 2: -0.5


def test_the_expected_loss_follows_margins_and_noise_and_counts_only_correct_images():
    assert expected_flip_loss([[1.0]], [True], 0.0) == 0.0
    # one competitor at margin m, noise sigma: P(flip) = Phi(-m / sigma)
    assert expected_flip_loss([[1.0]], [True], 1.0) == pytest.approx(0.5 * (1 - math.erf(1 / math.sqrt(2))))
    assert expected_flip_loss([[0.0]], [True], 1e-6) == pytest.approx(0.5)  # at a tie a coin flip
    tiny, wide = expected_flip_loss([[0.01]], [True], 0.01), expected_flip_loss([[5.0]], [True], 0.01)
    assert tiny > 0.4 and wide < 1e-6  # near-chance margins flip under noise that leaves wide ones alone
    assert expected_flip_loss([[0.01], [0.01]], [True, False], 0.01) == pytest.approx(tiny / 2)


def test_a_classifier_table_keeps_margins_and_the_proxy_sees_near_chance_flips(tmp_path):
    loaded = digits()  # random init: near chance, small margins
    torch.manual_seed(0)
    x = torch.rand(32, 1, 8, 8)
    with torch.no_grad():
        y = loaded.model(x).argmax(-1)
    cal = CalibrationData("images", x, y, {"source": "test"})
    table = measure_sensitivity(loaded, calibration=cal, hessian_samples=0, precisions=("int4", "int8"),
                                cache_dir=tmp_path)
    assert len(table.margins) == 32 and all(table.correct) and table.margin_mse
    assert SensitivityTable.from_json(table.to_json()) == table
    noise = sum(v for (u, p), v in table.margin_mse.items() if p == "int4")
    assert noise > sum(v for (u, p), v in table.margin_mse.items() if p == "int8") > 0
    loss = expected_flip_loss(table.margins, table.correct, noise)
    assert expected_flip_loss(table.margins, table.correct, noise * 1e4) > loss >= 0  # more noise, more flips
