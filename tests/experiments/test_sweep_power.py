"""Sweeps under a power cap: on a measured profile plans above the cap are infeasible and the front respects
it; on a paper profile the evaluator runs in the mode the cap selects; the cap is recorded, checked and part
of the resumable config; ``--power-cap`` 0 or negative exits 2 with a clear message."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from autosurgeon import cli
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.evaluate import AnalyticEvaluator
from autosurgeon.hardware.resolve import load_preset
from autosurgeon.hardware.power_cap import mean_power_w
from autosurgeon.space.search_space import SearchSpace
from autosurgeon.zoo import LoadedModel
from experiments.sweep import SweepConfig, run_sweep
from experiments.sweep.problem import Archive, SurgeryProblem
from tests.autosurgeon._paper_profiles import paper_cpu_profile

KNOBS = ("precision", "group_size", "placement")


@pytest.fixture(scope="module")
def loaded():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
    return LoadedModel(name="tiny", model=LlamaForCausalLM(cfg).eval(), task="causal-lm", source="factory")


@pytest.fixture(scope="module")
def measured(loaded):
    """A 'measured' CPU profile (as this machine's would be): a cap is a constraint there, not a derating."""
    profile = dataclasses.replace(paper_cpu_profile(name="host", links={"disk_read": 1e9}), measured=True)
    return profile, SearchSpace.build(loaded, profile, knobs=KNOBS)


def config(**kw) -> SweepConfig:
    base = dict(model="tiny", device="host", evaluator="analytic", algo="random", budget_evals=16, pop_size=8,
                quality="none", baselines=False, hv_at=(16,))
    base.update(kw)
    return SweepConfig(**base)


def test_plans_over_the_cap_are_infeasible_and_the_front_respects_it(loaded, measured, tmp_path):
    profile, space = measured
    # One evaluator for both sweeps: on a measured profile the analytic evaluator prices decode GEMVs from
    # timings it measures (cost.gemv), so two instances may price the same plan a little differently.
    evaluator = AnalyticEvaluator(loaded, profile, space=space)
    free = run_sweep(config(), tmp_path / "free", evaluator=evaluator, outputs=False, tensorboard=False)
    watts = sorted(mean_power_w(_metrics(r)) for r in free.records)
    assert watts[0] < watts[-1]  # plans differ in mean power (utilisation), so a cap can split them
    cap = float(np.median(watts))
    res = run_sweep(config(power_cap_w=cap), tmp_path / "cap", evaluator=evaluator, outputs=False, tensorboard=False)
    assert [r["x"] for r in res.records] == [r["x"] for r in free.records]  # random search: same plans
    for r in res.records:
        assert r["power_w"] == pytest.approx(mean_power_w(_metrics(r)), rel=1e-12)
        assert r["feasible"] == (r["power_w"] <= cap) and r["power_excess_w"] == pytest.approx(r["power_w"] - cap)
    assert 0 < sum(r["feasible"] for r in res.records) < len(res.records)
    assert res.front and all(res.records[i]["power_w"] <= cap for i in res.front)
    power = res.summary["power"]
    assert res.summary["power_cap_w"] == cap and power["power_cap_w"] == cap and not power["derated"]
    assert "never changed" in power["how"] and power["device_measured"]
    assert res.summary["feasible"] == sum(r["feasible"] for r in res.records)
    assert free.summary["power"] is None and "power_w" not in free.records[0]


def test_problem_carries_quality_and_power_constraints(loaded, measured):
    profile, space = measured
    ev = AnalyticEvaluator(loaded, profile, space=space)
    ref = ev.evaluate(space.default_vector())
    arch = Archive(space, ev, objectives=("latency", "memory"), scales=(1.0, 1.0), budget=3, quality="none",
                   power_cap_w=1.0)
    problem = SurgeryProblem(arch)
    out: dict = {}
    problem._evaluate(space.default_vector(), out)
    assert problem.n_ieq_constr == 1 and out["G"][0] == pytest.approx(mean_power_w(ref) - 1.0) and out["G"][0] > 0
    assert not arch.records[0]["feasible"]


def test_paper_profile_is_evaluated_in_the_capped_mode(loaded, tmp_path):
    orin = load_preset("jetson-agx-orin-64gb")
    low = orin.at_power_cap(15)
    space = SearchSpace.build(loaded, low, knobs=KNOBS)
    kw = dict(device="jetson-agx-orin-64gb", algo="nsga2", budget_evals=12, pop_size=6, power_cap_w=15)
    res = run_sweep(config(**kw), tmp_path / "orin15", evaluator=AnalyticEvaluator(loaded, low, space=space),
                    outputs=False, tensorboard=False)
    assert all(r["feasible"] and r["power_w"] <= 15 for r in res.records)  # by construction: the mode's envelope
    power = res.summary["power"]
    assert power["power_mode"] == "15W" and power["mode_watts"] == 15 and power["derated"]
    assert "15W" in res.records[0]["metrics"]["_data"]["method"]
    # An evaluator in another mode than the cap selects is refused before anything is written.
    maxn = AnalyticEvaluator(loaded, orin, space=SearchSpace.build(loaded, orin, knobs=KNOBS))
    with pytest.raises(InvalidArgumentError, match=r"selects power mode '15W'.*at_power_cap"):
        run_sweep(config(**kw), tmp_path / "wrong", evaluator=maxn, outputs=False, tensorboard=False)


def test_cap_is_validated_and_part_of_the_resumable_config(loaded, measured, tmp_path):
    for bad in (0, -3, float("nan"), "15"):
        with pytest.raises(InvalidArgumentError, match=r"`power_cap_w` \(--power-cap\) must be a power in watts > 0"):
            config(power_cap_w=bad)
    assert config(power_cap_w=15).power_cap_w == 15.0 and config().to_dict()["power_cap_w"] is None
    assert SweepConfig.from_dict({k: v for k, v in config().to_dict().items() if k != "power_cap_w"}) == config()
    profile, space = measured
    run_sweep(config(budget_evals=4, power_cap_w=30), tmp_path / "run",
              evaluator=AnalyticEvaluator(loaded, profile, space=space), outputs=False, tensorboard=False)
    with pytest.raises(InvalidArgumentError, match=r"settings \['power_cap_w'\] differ"):
        run_sweep(config(budget_evals=6, power_cap_w=20), tmp_path / "run", resume=True,
                  evaluator=AnalyticEvaluator(loaded, profile, space=space), outputs=False, tensorboard=False)
    more = run_sweep(config(budget_evals=6, power_cap_w=30), tmp_path / "run", resume=True,
                     evaluator=AnalyticEvaluator(loaded, profile, space=space), outputs=False, tensorboard=False)
    assert len(more.records) == 6 and more.summary["replayed"] == 4


@pytest.mark.parametrize("value", ["0", "-5"])
def test_cli_refuses_a_cap_that_is_not_positive(value, monkeypatch, capsys, tmp_path):
    if "sweep" not in cli.COMMANDS:
        monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, "sweep"))
    code = cli.main(["sweep", "tiny-llama", "--device", "jetson-agx-orin-64gb", "--evaluator", "analytic",
                     f"--power-cap={value}", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "`--power-cap` must be a power in watts > 0" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def _metrics(record):
    from autosurgeon.metrics import Metrics

    return Metrics.from_dict(record["metrics"])


def test_front_json_and_tensorboard_record_the_cap(loaded, measured, tmp_path):
    pytest.importorskip("experiments.reporting")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    profile, space = measured
    res = run_sweep(config(budget_evals=6, power_cap_w=100), tmp_path / "out",
                    evaluator=AnalyticEvaluator(loaded, profile, space=space), outputs=True, tensorboard=True)
    front = json.loads((res.run_dir / "front.json").read_text())
    text = json.dumps(front)
    assert '"power_cap_w": 100.0' in text and '"power_mode"' in text
    events = EventAccumulator(str(res.run_dir / "tb" / "power")).Reload()
    with pytest.raises(KeyError, match="hparams"):  # no HParams session there: it would be a row without a plan
        events.PluginTagToContent("hparams")
    (text,) = events.Tensors("power/cap/text_summary")  # the cap and mode, and no HParams row without a plan
    assert f"power cap 100 W, mode {res.summary['power']['power_mode']}" in text.tensor_proto.string_val[0].decode()
    assert events.Scalars("power/front_size")[0].value == res.summary["front_size"]
    # Every plan's row says the cap and mode.
    from experiments.sweep.ids import record_id

    member = res.records[res.front[0]]  # every front member has a session
    start = EventAccumulator(str(res.run_dir / "tb" / "front" / record_id(member))).Reload().PluginTagToContent(
        "hparams")["_hparams_/session_start_info"]
    hp = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
    assert hp["Power"].string_value.startswith("100 W cap, mode ")


def test_optuna_gets_both_constraints(loaded, measured, tmp_path):
    profile, space = measured
    res = run_sweep(config(algo="optuna-nsga2", budget_evals=8, pop_size=4, power_cap_w=5.0), tmp_path / "o",
                    evaluator=AnalyticEvaluator(loaded, profile, space=space), outputs=False, tensorboard=False)
    assert len(res.records) == 8
    assert all(r["feasible"] == (r["power_w"] <= 5.0) for r in res.records)
