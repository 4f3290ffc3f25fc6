"""The rest of a step (linears nulled), measured on the runtime for the analytic model on a measured CPU."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from test_evaluate import host_profile, tiny_lm
from torch import nn

from autosurgeon.cost.base import resolve_blocks
from autosurgeon.cost.profiled import TimingSettings
from autosurgeon.cost.profiled_trust import cached_tables_as_is
from autosurgeon.cost.step_rest import null_linears, rest_on_runtime
from autosurgeon.cost.workload import Workload
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.evaluate import AnalyticEvaluator
from autosurgeon.space.search_space import SearchSpace
from autosurgeon.zoo import LoadedModel


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


def _measured(profile):
    return dataclasses.replace(profile, measured=True)


def _vit():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=32,
                                                num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                                num_labels=5)).eval()
    return LoadedModel(name="vit", model=model, task="image-classification", source="factory",
                       image_shape=(3, 16, 16), input_name="pixel_values")


@pytest.mark.parametrize("make", [tiny_lm, _vit], ids=["causal-lm", "image-classifier"])
def test_analytic_on_a_measured_cpu_prices_from_measured_parts(make):
    """On a measured CPU the analytic evaluator's unmodified step is the measured rest + the linears' GEMV entries
    (at each linear's own rows: 1 at decode, the patches of an image), and its method says so."""
    loaded = make()
    profile = _measured(host_profile())
    ev = AnalyticEvaluator(loaded, profile, space=SearchSpace.build(loaded, profile, knobs=("precision",)))
    phase = ev.workload.phase
    m = ev.models[phase]
    assert m.rest_s is not None and m.rest_s == ev.rest[phase]["median_s"] > 0
    x = ev.space.default_vector()
    linears = [c for b in resolve_blocks(ev.space, x) for c in b.leaves if c.leaf.kind == "linear"]
    expected = m.rest_s + sum(m.leaf_seconds(c, "cpu")[0] for c in linears)
    assert m.breakdown(x)["latency_s"] == pytest.approx(expected)
    assert all(m.rows[c.leaf.name] >= 1 for c in linears)
    assert "rest of the step (linears nulled) measured" in ev.evaluate(x).method


def test_dask_workers_take_the_kept_rest_so_they_price_alike():
    """Inside ``cached_tables_as_is()`` (a sweep's Dask workers) the rest measured by the coordinator is reused."""
    loaded = tiny_lm()
    profile = _measured(host_profile())
    space = SearchSpace.build(loaded, profile, knobs=("precision",))
    first = AnalyticEvaluator(loaded, profile, space=space)
    with cached_tables_as_is():
        worker = AnalyticEvaluator(loaded, profile, space=space)
    assert worker.rest == first.rest
    x = space.default_vector()
    assert worker.evaluate(x).latency_s == first.evaluate(x).latency_s
