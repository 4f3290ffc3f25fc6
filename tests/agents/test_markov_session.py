"""Markov placement model on spaces with session knobs: unit statistics from SearchSpace.unit_summary (the
same numbers as before for module units), module contexts unchanged, a session rule learnt and transferred by
value to another device, masks respected when the learnt choice is invalid there, save/load."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from agents.markov import MarkovPlacementModel
from agents.markov_features import _unit_stats, variable_contexts
from autosurgeon.hardware.resolve import resolve_profile
from autosurgeon.hardware.profile import ComputeUnit, CpuInfo, HardwareProfile
from autosurgeon.knobs import SESSION_KNOBS, SESSION_UNIT
from autosurgeon.space.search_space import SearchSpace
from autosurgeon.space.session import SESSION_KIND

INPUTS = {"input_ids": torch.zeros(1, 8, dtype=torch.long)}
SESSION = ("precision", "placement", *SESSION_KNOBS)
RULE = {"kv_precision": "int8", "kv_budget": "50%", "kv_tier": "cpu", "kv_window": 256, "prefetch": "none",
        "prefetch_depth": 3}


def llama(layers: int, hidden: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=hidden, intermediate_size=2 * hidden + 32,
                      num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=64, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def cpu_profile() -> HardwareProfile:
    """A paper CPU-only machine: KV pages can only live on the CPU tier there."""
    return HardwareProfile(
        name="host", measured=False,
        cpu=CpuInfo(model="host", arch="x86_64", isa=("avx2",), physical_cores=2, logical_cores=2, memory_bytes=2**34),
        units=(ComputeUnit(name="cpu", kind="cpu", memory_bytes=2**34, memory_bandwidth=1e10,
                           gemm_flops={"float32": 1e11}),),
        links={"disk_read": 1e9})


@pytest.fixture(scope="module")
def plain() -> SearchSpace:
    return SearchSpace.build(llama(2, 64), resolve_profile("h100-80gb"), inputs=INPUTS)


@pytest.fixture(scope="module")
def gpu() -> SearchSpace:
    return SearchSpace.build(llama(2, 64), resolve_profile("h100-80gb"), inputs=INPUTS, knobs=SESSION)


@pytest.fixture(scope="module")
def cpu() -> SearchSpace:
    # Another depth, width and device: kv_tier's choices are ("cpu", "gpu") here, ("gpu", "cpu") on the H100.
    return SearchSpace.build(llama(3, 96), cpu_profile(), inputs=INPUTS, knobs=SESSION)


def session_indices(space: SearchSpace) -> dict[str, int]:
    return {v.knob: i for i, v in enumerate(space.variables) if v.name == SESSION_UNIT}


def rule_vectors(space: SearchSpace, n: int, seed: int, rule: dict[str, object]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = space.random_vector(rng)
        for knob, i in session_indices(space).items():
            x[i] = space.variables[i].index(rule[knob])
        assert space.is_valid(x)
        out.append(x)
    return out


def test_unit_stats_are_the_previous_numbers_and_the_whole_model_for_the_session() -> None:
    space = SearchSpace.build(llama(2, 64), resolve_profile("h100-80gb"), inputs=INPUTS,
                              knobs=("precision", "placement", "group_size", "kernel", "layout", "fusion",
                                     *SESSION_KNOBS))
    kinds = {v.kind for v in space.variables}
    assert {"block", "group", "linear", SESSION_KIND} <= kinds
    for v in space.variables:
        # The formula _unit_stats had before it read SearchSpace.unit_summary.
        if v.kind == "block":
            b = next(b for b in space.blocks if b.name == v.name)
            want = (float(b.weight_bytes), float(b.intensity))
        elif v.kind == "group":
            members = [space.leaves[n] for n in next(g for g in space.units.groups if g.name == v.name).members]
            want = (float(sum(m.own_bytes for m in members)),
                    sum(m.flops for m in members) / max(sum(m.memory_bytes for m in members), 1))
        elif v.kind == SESSION_KIND:
            want = (float(sum(b.weight_bytes for b in space.blocks)), max(b.intensity for b in space.blocks))
        else:
            leaf = space.leaves[v.name]
            want = (float(leaf.own_bytes), float(leaf.intensity))
        assert _unit_stats(space, v) == want, (v.name, v.knob)


def test_module_contexts_are_unchanged_by_session_variables(plain, gpu) -> None:
    before, after = variable_contexts(plain), variable_contexts(gpu)
    assert len(after) == len(plain) + len(SESSION_KNOBS)
    assert after[:len(plain)] == before
    for ctx, knob in zip(after[len(plain):], SESSION_KNOBS):
        assert (ctx.knob, ctx.kind, ctx.prev, ctx.size) == (knob, SESSION_KIND, None, 0)
        assert ctx.position == 3  # decided after every module: the last position bin


def test_session_rule_is_learnt_and_transfers_by_value(gpu, cpu) -> None:
    model = MarkovPlacementModel().fit([(gpu, x) for x in rule_vectors(gpu, 30, seed=0, rule=RULE)])
    for space in (gpu, cpu):
        assert space.decode(model.predict(space)).session == RULE
        samples = model.sample(space, 30, np.random.default_rng(1))
        assert all(space.is_valid(x) for x in samples)
        agree = np.mean([space.decode(x).session[k] == v for x in samples for k, v in RULE.items()])
        assert agree >= 0.9, agree
    # By value, not index: "cpu" is kv_tier's index 1 on the H100 and index 0 on the CPU machine.
    tier = {s.device_name: s.variables[session_indices(s)["kv_tier"]].choices for s in (gpu, cpu)}
    assert tier["h100-80gb"].index("cpu") != tier["host"].index("cpu")


def test_samples_respect_masks_when_the_learnt_session_choice_is_invalid(gpu, cpu) -> None:
    # Learnt on the H100: KV pages on the GPU, always. The CPU machine has no GPU: the choice is masked there.
    model = MarkovPlacementModel().fit([(gpu, x) for x in rule_vectors(gpu, 20, seed=2,
                                                                       rule={**RULE, "kv_tier": "gpu"})])
    i = session_indices(cpu)["kv_tier"]
    assert not cpu.allowed(i, cpu.default_vector())[0][cpu.variables[i].index("gpu")]
    samples = model.sample(cpu, 30, np.random.default_rng(3))
    assert all(cpu.is_valid(x) and cpu.problems(x) == [] for x in samples)
    assert {cpu.variables[i].choices[x[i]] for x in samples} == {"cpu"}
    assert cpu.decode(model.predict(cpu)).session == {**RULE, "kv_tier": "cpu"}
    # Dense model: prefetch "none" only, whatever was learnt.
    j = session_indices(gpu)["prefetch"]
    assert {gpu.variables[j].choices[x[j]] for x in model.sample(gpu, 20, np.random.default_rng(4))} == {"none"}


def test_save_load_round_trip_with_session_values(tmp_path, gpu) -> None:
    vectors = rule_vectors(gpu, 5, seed=5, rule={**RULE, "kv_window": None})
    model = MarkovPlacementModel().fit([(gpu, x) for x in vectors])
    loaded = MarkovPlacementModel.load(model.save(tmp_path / "markov.json"))
    assert loaded == model
    assert gpu.decode(loaded.predict(gpu)).session["kv_window"] is None
    a = model.sample(gpu, 3, np.random.default_rng(6))
    b = loaded.sample(gpu, 3, np.random.default_rng(6))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
