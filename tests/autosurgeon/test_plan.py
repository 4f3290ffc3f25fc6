"""Plan: precedence, JSON round trip, and every malformed input named clearly."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from autosurgeon.errors import InvalidArgumentError
from autosurgeon.knobs import placement_parts
from autosurgeon.plan import Plan, PlanFormatError, Rule, model_fingerprint


def _plan() -> Plan:
    return Plan(
        default={"precision": "int8"},
        rules=(
            Rule("re:layers\\.\\d+\\.mlp\\..*", {"precision": "int4", "group_size": 64}),
            Rule("re:layers\\.0\\..*", {"precision": "bfloat16"}),
            Rule("layers.0.mlp.up", {"kernel": "auto"}),
            Rule("layers.1", {"placement": "cpu<-disk"}),
        ),
        model_fingerprint="abc",
        device_fingerprint="def",
        metadata={"proposer": "test"},
    )


def test_precedence_exact_then_first_pattern_then_default_per_knob() -> None:
    plan = _plan()
    # exact sets only `kernel`; precision comes from the FIRST matching pattern, not the second.
    assert plan.decisions_for("layers.0.mlp.up") == {"precision": "int4", "group_size": 64, "kernel": "auto"}
    assert plan.decisions_for("layers.0.attn.q") == {"precision": "bfloat16"}
    assert plan.decisions_for("layers.1") == {"precision": "int8", "placement": "cpu<-disk"}
    assert plan.decisions_for("lm_head") == {"precision": "int8"}
    assert Plan().decisions_for("anything") == {}


def test_json_round_trip_is_exact() -> None:
    plan = _plan()
    again = Plan.from_json(plan.to_json())
    assert again == plan
    assert json.loads(plan.to_json())["_version"] == 1


def test_save_and_load(tmp_path) -> None:
    path = _plan().save(tmp_path / "sub" / "plan.json")
    assert Plan.load(path) == _plan()
    assert not list(path.parent.glob(".*.tmp"))


def test_unmatched_targets_find_typos() -> None:
    plan = Plan(rules=(Rule("layers.9", {"placement": "cpu"}), Rule("re:mlp.*", {"precision": "int8"})))
    assert plan.unmatched_targets(["layers.0", "mlp.up"]) == ["layers.9"]


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.update(_version=2), "newer than this AutoSurgeon reads"),
        (lambda d: d.update(_version="1"), "`_version` must be a positive integer"),
        (lambda d: d.update(_type="other"), "`_type` must be 'autosurgeon.Plan'"),
        (lambda d: d["_data"].update(extra=1), "unknown field\\(s\\) 'extra'"),
        (lambda d: d["_data"].update(rules={}), "`rules` must be a list"),
        (lambda d: d["_data"]["rules"].append({"target": "x"}), "`rules\\[4\\]` must be an object"),
        (lambda d: d["_data"]["rules"].append({"target": "re:(", "decisions": {"precision": "int8"}}),
         "not a valid regular expression"),
    ],
)
def test_corrupt_plans_name_the_field(mutate, match) -> None:
    obj = _plan().to_dict()
    mutate(obj)
    with pytest.raises(PlanFormatError, match=match):
        Plan.from_dict(obj)


def test_bad_decisions_name_knob_and_value() -> None:
    with pytest.raises(InvalidArgumentError, match="`precision` must be one of .* got 'int3'"):
        Rule("x", {"precision": "int3"})
    with pytest.raises(InvalidArgumentError, match="unknown knob 'colour'"):
        Plan(default={"colour": "red"})
    with pytest.raises(PlanFormatError, match="more than one rule for a"):
        Plan(rules=(Rule("a", {"precision": "int8"}), Rule("a", {"placement": "cpu"})))


def test_missing_file_and_bad_json(tmp_path) -> None:
    with pytest.raises(PlanFormatError, match="does not exist"):
        Plan.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PlanFormatError, match="not valid JSON"):
        Plan.load(tmp_path / "bad.json")


def test_placement_parts() -> None:
    assert placement_parts("gpu<-cpu") == ("gpu", "cpu")
    assert placement_parts("cpu") == ("cpu", None)
    with pytest.raises(InvalidArgumentError, match="`placement`"):
        placement_parts("tpu")


def test_model_fingerprint_tracks_structure_not_values() -> None:
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    b = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.device("meta"):
        m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    c = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    assert model_fingerprint(a) == model_fingerprint(b) == model_fingerprint(m)
    assert model_fingerprint(a) != model_fingerprint(c)
    assert model_fingerprint(a) != model_fingerprint(a.to(torch.bfloat16))
