"""Metrics: validation, labels, objectives for minimisation, versioned round trip."""
from __future__ import annotations

import json
import math

import pytest

from autosurgeon.errors import InvalidArgumentError
from autosurgeon.metrics import Metrics


def make(**kw) -> Metrics:
    base = dict(latency_s=0.002, prefill_s=0.01, tokens_per_s=500.0, peak_bytes={"gpu": 100, "cpu": 50, "disk": 7},
                energy_j=0.3, quality_loss=0.012, method="test", device="abc", evaluator="analytic",
                labels={"latency_s": "profiled", "prefill_s": "profiled", "tokens_per_s": "profiled",
                        "peak_bytes": "estimated", "energy_j": "estimated", "quality_loss": "estimated"})
    base.update(kw)
    return Metrics(**base)


def test_objectives_in_order_for_minimisation() -> None:
    m = make()
    assert m.objectives(("latency", "memory", "energy", "quality")) == (0.002, 150.0, 0.3, 0.012)
    assert m.objectives(["throughput"]) == (-500.0,)  # maximising tokens/s = minimising its negative
    assert m.objectives(("memory:gpu", "memory:cpu", "memory:disk", "memory:total")) == (100.0, 50.0, 7.0, 157.0)
    assert m.to_objectives("prefill") == (0.01,)
    assert m.memory_bytes == 150  # disk is not counted by the plain memory objective


def test_missing_tiers_are_zero_and_round_trip_through_json() -> None:
    m = make(peak_bytes={"cpu": 123}, extra={"breakdown": {"a": 1.5}})
    assert m.peak_bytes == {"gpu": 0, "cpu": 123, "disk": 0}
    again = Metrics.from_dict(json.loads(json.dumps(m.to_dict())))
    assert again == m


def test_unevaluated_objective_raises_not_nan() -> None:
    m = make(quality_loss=None, labels={"latency_s": "measured", "peak_bytes": "measured", "energy_j": "measured",
                                        "prefill_s": "measured", "tokens_per_s": "measured"})
    assert m.objectives(("latency",)) == (0.002,)
    with pytest.raises(InvalidArgumentError, match="quality_loss"):
        m.objectives(("latency", "quality"))
    with pytest.raises(InvalidArgumentError, match="unknown objective 'speed'"):
        m.objectives(("speed",))


@pytest.mark.parametrize("kw, match", [
    (dict(latency_s=0.0), "latency_s"),
    (dict(latency_s=math.inf), "latency_s"),
    (dict(peak_bytes={"hbm": 1}), "tiers"),
    (dict(labels={"latency_s": "guessed"}), "must be one of"),
    (dict(labels={"latency_s": "measured"}), "has a value but no label"),
    (dict(labels={"speed": "measured"}), "not a metric field"),
])
def test_bad_metrics_are_refused(kw, match) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        make(**kw)


def test_from_dict_refuses_other_types_and_versions() -> None:
    d = make().to_dict()
    with pytest.raises(InvalidArgumentError, match="_type"):
        Metrics.from_dict({**d, "_type": "x"})
    with pytest.raises(InvalidArgumentError, match="_version"):
        Metrics.from_dict({**d, "_version": 99})
    with pytest.raises(InvalidArgumentError, match="unknown field"):
        Metrics.from_dict({**d, "_data": {**d["_data"], "speed": 1}})
