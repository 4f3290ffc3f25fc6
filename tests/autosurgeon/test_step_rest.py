"""The rest of a step (linears nulled), measured on the runtime for the analytic model on a measured CPU."""
from __future__ import annotations

import pytest
import torch
from test_evaluate import host_profile, tiny_lm
from torch import nn

from autosurgeon.cost.profiled import TimingSettings
from autosurgeon.cost.step_rest import null_linears, rest_on_runtime
from autosurgeon.cost.workload import Workload
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.space.search_space import SearchSpace


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


def test_rest_is_measured_on_the_runtime_with_spread_and_counts_fewer_ops():
    loaded, profile = tiny_lm(), host_profile()
    space = SearchSpace.build(loaded, profile)
    w = Workload(task="causal-lm", batch=1, context=8)
    timing = TimingSettings(clock="cpu", step_warmup=1, step_repeats=3)
    names = {n for n, m in loaded.model.named_modules() if isinstance(m, nn.Linear)}
    rest = rest_on_runtime(loaded, space, profile, w, names, timing=timing)
    assert rest["median_s"] > 0 and rest["prefill_s"] > 0 and rest["dispersion"] >= 0
    assert isinstance(rest["noisy"], bool) and len(rest["load_average"]) == 3
    full = rest_on_runtime(loaded, space, profile, w, set(), timing=timing)
    assert rest["ops"] < full["ops"]
