"""Markov placement model: a rule learnt from fronts is reproduced, on the same and on another model/device;
samples are always valid; save/load round trip; fitting from run directories; clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from agents.markov import MarkovPlacementModel, fit_from_runs
from agents.markov_features import variable_contexts
from autosurgeon.errors import InvalidArgumentError
from autosurgeon.hardware.resolve import resolve_profile
from autosurgeon.space.search_space import SearchSpace

INPUTS = {"input_ids": torch.zeros(1, 8, dtype=torch.long)}


def llama(layers: int, hidden: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=hidden, intermediate_size=2 * hidden + 32,
                      num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=64, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def small() -> SearchSpace:
    return SearchSpace.build(llama(2, 64), resolve_profile("h100-80gb"), inputs=INPUTS)


@pytest.fixture(scope="module")
def big() -> SearchSpace:
    # Another depth, width and device: the choices' order differs (matching is by value).
    return SearchSpace.build(llama(5, 96), resolve_profile("jetson-agx-orin-64gb"), inputs=INPUTS)


def rule_value(space: SearchSpace, i: int) -> str | None:
    """The rule: linear layers in the second half of the model int8, every other linear float32."""
    v = space.variables[i]
    if v.knob != "precision" or v.kind != "linear":
        return None
    feats, names = space.features()
    return "int8" if feats[i, names.index("position")] >= 0.5 else "float32"


def rule_vectors(space: SearchSpace, n: int, seed: int) -> list[np.ndarray]:
    """Random valid vectors with the rule imposed on the linear precisions."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = space.random_vector(rng)
        for i in range(len(space)):
            if (value := rule_value(space, i)) is not None:
                x[i] = space.variables[i].index(value)
        x = space.repair(x)
        assert all(space.variables[i].choices[x[i]] == rule_value(space, i)
                   for i in range(len(space)) if rule_value(space, i))
        out.append(x)
    return out


def rule_agreement(space: SearchSpace, x: np.ndarray) -> float:
    idx = [i for i in range(len(space)) if rule_value(space, i)]
    return float(np.mean([space.variables[i].choices[x[i]] == rule_value(space, i) for i in idx]))


@pytest.fixture(scope="module")
def fitted(small) -> MarkovPlacementModel:
    return MarkovPlacementModel().fit([(small, x) for x in rule_vectors(small, 30, seed=0)])


def test_rule_is_reproduced_and_samples_are_valid(small, fitted) -> None:
    samples = fitted.sample(small, 40, np.random.default_rng(1))
    assert len(samples) == 40
    assert all(small.is_valid(x) for x in samples)
    agreement = np.mean([rule_agreement(small, x) for x in samples])
    assert agreement >= 0.95, agreement
    assert rule_agreement(small, fitted.predict(small)) == 1.0
    # Knobs the rule leaves random stay diverse (the model learnt them as near-uniform, not collapsed).
    first_block = small.index_of("model.layers.0", "placement")
    assert len({int(x[first_block]) for x in samples}) >= 2
    # Random vectors are much less likely than rule vectors under the model.
    rng = np.random.default_rng(2)
    assert fitted.log_prob(small, rule_vectors(small, 1, seed=3)[0]) > fitted.log_prob(small, small.random_vector(rng))


def test_transfer_to_another_model_and_device(big, fitted) -> None:
    samples = fitted.sample(big, 30, np.random.default_rng(4))
    assert all(big.is_valid(x) for x in samples)
    assert np.mean([rule_agreement(big, x) for x in samples]) >= 0.9
    assert rule_agreement(big, fitted.predict(big)) == 1.0
    plan = big.decode(fitted.predict(big))
    assert plan.decisions_for("model.layers.4.mlp.down_proj")["precision"] == "int8"
    assert plan.decisions_for("model.layers.0.self_attn.q_proj")["precision"] == "float32"


def test_unfitted_model_samples_uniformly_valid_vectors(big) -> None:
    model = MarkovPlacementModel()
    samples = model.sample(big, 20, np.random.default_rng(5))
    assert all(big.is_valid(x) for x in samples)
    assert len({tuple(x) for x in samples}) == 20


def test_masks_respected_when_the_learnt_choice_is_invalid() -> None:
    """Half the plans place blocks on the DLA with int8, half on the GPU with int4; precision's context has
    no placement, so the model learns int4 ~ int8 — yet a sample with a DLA block (int4 invalid there)
    never gets int4 in that block: the draw is renormalised over the allowed choices."""
    space = SearchSpace.build(llama(2, 64), resolve_profile("jetson-agx-orin-64gb"), inputs=INPUTS)
    xs = []
    for k, (placement, precision) in enumerate([("dla", "int8"), ("gpu", "int4")] * 10):
        x = space.default_vector()
        for i, v in enumerate(space.variables):
            if v.knob == "placement":
                x[i] = v.index(placement)
            elif v.knob == "precision" and v.kind == "linear" and v.name.startswith("model.layers."):
                x[i] = v.index(precision)
        assert space.is_valid(x)
        xs.append(x)
    model = MarkovPlacementModel().fit([(space, x) for x in xs])
    on_dla = 0
    for x in model.sample(space, 30, np.random.default_rng(7)):
        assert space.is_valid(x) and space.problems(x) == []
        for i, v in enumerate(space.variables):
            if v.knob == "precision" and v.kind == "linear" and v.name.startswith("model.layers."):
                block = v.name.split(".mlp")[0].split(".self_attn")[0]
                j = space.index_of(block, "placement")
                if space.variables[j].choices[x[j]] == "dla":
                    on_dla += 1
                    assert v.choices[x[i]] in ("int8", "float16")
    assert on_dla >= 20  # the DLA placement is sampled often enough for the check to mean something


def test_save_load_round_trip(tmp_path, small, fitted) -> None:
    path = fitted.save(tmp_path / "m" / "markov.json")
    loaded = MarkovPlacementModel.load(path)
    assert loaded == fitted and loaded.n_sequences == 30
    a = fitted.sample(small, 5, np.random.default_rng(8))
    b = loaded.sample(small, 5, np.random.default_rng(8))
    assert all(np.array_equal(u, v) for u, v in zip(a, b))


def test_errors_are_clear(tmp_path, small) -> None:
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        MarkovPlacementModel.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InvalidArgumentError, match="not valid JSON"):
        MarkovPlacementModel.load(tmp_path / "bad.json")
    (tmp_path / "plan.json").write_text(json.dumps({"_type": "autosurgeon.Plan", "_version": 1, "_data": {}}))
    with pytest.raises(InvalidArgumentError, match="`_type` must be 'autosurgeon.MarkovPlacementModel'"):
        MarkovPlacementModel.load(tmp_path / "plan.json")
    newer = {**MarkovPlacementModel().to_dict(), "_version": 99}
    with pytest.raises(InvalidArgumentError, match="`_version` 99 is newer than this AutoSurgeon reads"):
        MarkovPlacementModel.from_dict(newer)
    with pytest.raises(InvalidArgumentError, match="`alpha` must be a finite number > 0, got 0"):
        MarkovPlacementModel(alpha=0)
    with pytest.raises(InvalidArgumentError, match="numpy.random.Generator"):
        MarkovPlacementModel().sample(small, 1, 0)
    with pytest.raises(InvalidArgumentError, match="`fit` takes"):
        MarkovPlacementModel().fit([3])
    with pytest.raises(InvalidArgumentError, match="at least one run directory"):
        fit_from_runs([])
    with pytest.raises(InvalidArgumentError, match="front.json"):
        fit_from_runs([tmp_path])


def test_contexts_bucket_size_position_and_chain(small) -> None:
    ctx = variable_contexts(small)
    q = small.index_of("model.layers.0.self_attn.q_proj", "precision")
    up = small.index_of("model.layers.0.mlp.up_proj", "precision")
    head = small.index_of("lm_head", "precision")
    assert ctx[up].size == 0 and ctx[q].size == 1  # 64x160 is the largest block linear; 64x64 is 0.4 of it
    assert ctx[q].position == 0 and ctx[head].position == 3
    assert ctx[q].prev == q - 1 and ctx[small.index_of("model.layers.0", "placement")].prev is None


def test_fit_from_runs_reads_front_json(tmp_path, small, fitted) -> None:
    members = [{"member": k, "plan": small.decode(x).to_dict()} for k, x in enumerate(rule_vectors(small, 30, seed=0))]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "space.json").write_text(small.to_json())
    (tmp_path / "run" / "front.json").write_text(json.dumps(
        {"_type": "autosurgeon.Front", "_version": 1, "_data": {"config": {}, "members": members}}))
    model = fit_from_runs([tmp_path / "run"])
    assert model.counts == fitted.counts and model.sources == [str(tmp_path / "run")]


def test_cli_fit_from_rebuilt_space_then_predict_for_a_7b_shape(tmp_path, capsys) -> None:
    """A front.json with no space.json: the space is rebuilt from the config (meta device); the fitted model
    then proposes a plan for a 16-layer 7B-shaped Llama on another device, and the rule carries over."""
    import argparse

    from autosurgeon.cli.markov import register
    from autosurgeon.plan import Plan
    from autosurgeon.zoo import load_model

    config = {"model": "tiny-llama-test", "device": "h100-80gb", "knobs": ["precision", "placement"]}
    space = SearchSpace.build(load_model(config["model"], device="meta"), config["device"], knobs=config["knobs"])
    members = [{"member": k, "plan": space.decode(x).to_dict()} for k, x in enumerate(rule_vectors(space, 12, seed=9))]
    run = tmp_path / "runs" / "A"
    run.mkdir(parents=True)
    (run / "front.json").write_text(json.dumps(
        {"_type": "autosurgeon.Front", "_version": 1, "_data": {"config": config, "members": members}}))
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["markov", "fit", str(run), "--out", str(tmp_path / "markov.json")])
    assert args.func(args) == 0
    assert "fitted on 12 front members from 1 run(s)" in capsys.readouterr().out
    assert MarkovPlacementModel.load(tmp_path / "markov.json").n_sequences == 12

    args = parser.parse_args(["markov", "predict", "llama-7b-16l-shape", "--device", "jetson-agx-orin-64gb",
                              "--model-file", str(tmp_path / "markov.json"), "--out", str(tmp_path / "plan.json")])
    assert args.func(args) == 0
    plan = Plan.load(tmp_path / "plan.json")
    big = SearchSpace.build(load_model("llama-7b-16l-shape", device="meta"), "jetson-agx-orin-64gb")
    assert rule_agreement(big, big.encode(plan)) == 1.0
