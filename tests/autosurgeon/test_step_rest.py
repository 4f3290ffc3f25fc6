"""The rest of a step (linears nulled), measured for the analytic model on a measured CPU."""
from __future__ import annotations

import pytest
import torch
from test_evaluate import tiny_lm
from torch import nn

from autosurgeon.cost.profiled import base_inputs, make_steps, no_grad_forward
from autosurgeon.cost.step_rest import measure_rest, null_linears, rest_of_step
from autosurgeon.cost.workload import Workload
from autosurgeon.errors import InvalidArgumentError


def test_null_linears_keeps_shapes_and_leaves_the_model_alone():
    loaded = tiny_lm()
    names = {n for n, m in loaded.model.named_modules() if isinstance(m, nn.Linear)}
    nulled = null_linears(loaded.model, names)
    assert not any(isinstance(m, nn.Linear) for m in nulled.modules())
    assert any(isinstance(m, nn.Linear) for m in loaded.model.modules())  # a copy was changed
    ids = torch.randint(0, 256, (1, 5))
    with torch.no_grad():
        assert nulled(input_ids=ids).logits.shape == loaded.model(input_ids=ids).logits.shape
    with pytest.raises(InvalidArgumentError, match="not a linear"):
        null_linears(loaded.model, {"model.norm"})


def test_rest_of_step_is_measured_with_spread_and_counts_fewer_ops():
    loaded = tiny_lm()
    w = Workload(task="causal-lm", batch=1, context=8)
    inputs = loaded.example_inputs(1, 8, phase="decode", seed=0)
    names = {n for n, m in loaded.model.named_modules() if isinstance(m, nn.Linear)}

    def make_step(module):
        return make_steps(no_grad_forward(module), module, w, base_inputs(loaded, w))[0]

    rest = rest_of_step(loaded.model, names, make_step, inputs)
    assert rest["median_s"] > 0 and rest["dispersion"] >= 0 and isinstance(rest["noisy"], bool)
    full = rest_of_step(loaded.model, set(), make_step, inputs)
    assert rest["ops"] < full["ops"]
    with pytest.raises(InvalidArgumentError, match="`rounds` must be >= 3"):
        measure_rest(lambda: None, ops=1, rounds=2)
