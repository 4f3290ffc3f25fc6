"""Several execution devices: multi-GPU presets, placements naming a GPU, per-device footprint, budgets, checks."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from autosurgeon.cost.footprint import plan_memory
from autosurgeon.errors import InvalidArgumentError, UnsupportedTransformError
from autosurgeon.hardware.resolve import load_preset
from autosurgeon.knobs import placement_kind, placement_parts, validate_decision
from autosurgeon.multi.devices import (
    device_placements,
    execution_devices,
    link_rates,
    placement_device,
    runtime_device,
)
from autosurgeon.multi.footprint import device_budgets, device_footprint, device_problems, devices_used
from autosurgeon.plan import Plan
from autosurgeon.plan_check import check_plan
from autosurgeon.space.search_space import SearchSpace
from autosurgeon.transforms.configs import PlaceConfig
from autosurgeon.transforms.place import block_spec

LM_INPUTS = {"input_ids": torch.zeros(1, 8, dtype=torch.long)}
MULTI = ("2x-h100-80gb", "8x-h100-80gb", "2x-h200-141gb", "8x-h200-141gb")


def tiny_llama(layers: int = 4) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=160, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("name", MULTI)
def test_multi_gpu_presets_state_per_gpu_memory_and_links_with_sources(name: str) -> None:
    profile = load_preset(name)
    n = int(name[0])
    gpus = [u for u in profile.units if u.kind == "gpu"]
    assert [u.name for u in gpus] == [f"cuda:{i}" for i in range(n)] and len(profile.gpus) == n
    per_gpu = 80 * 2**30 if "h100" in name else 141e9
    assert all(u.memory_bytes == per_gpu for u in gpus)
    assert profile.links["h2d_pinned"] == 64e9 and profile.links["p2p"] == 450e9
    rates = link_rates(profile)
    assert rates["host_total"] == n * 64e9 and rates["p2p"] == 450e9
    assert "PER GPU" in profile.sources["links"] and "NVLink" in profile.sources["links.p2p"]
    assert all("datasheet" in profile.sources[k] for k in ("links", "links.p2p", "gpus[*].memory_bytes"))
    assert execution_devices(profile) == tuple(f"gpu:{i}" for i in range(n))


def test_placements_naming_a_gpu_are_vocabulary_and_single_gpu_spellings_keep_their_meaning() -> None:
    for value in ("gpu:1", "gpu:0<-cpu", "gpu:7<-disk"):
        validate_decision("placement", value)
    with pytest.raises(InvalidArgumentError, match=r"`placement` must be one of .*gpu:N.*got 'gpu:1<-gpu'"):
        validate_decision("placement", "gpu:1<-gpu")
    with pytest.raises(InvalidArgumentError, match="got 'gpu:01'"):
        PlaceConfig("gpu:01")
    assert placement_parts("gpu:1<-cpu") == ("gpu:1", "cpu") and placement_kind("gpu:1<-cpu") == "gpu"
    assert placement_device("gpu") == "gpu:0" and placement_device("gpu:3<-disk") == "gpu:3"
    assert device_placements(load_preset("h100-80gb")) == ()
    two = load_preset("2x-h100-80gb")
    assert device_placements(two) == ("gpu:1", "gpu:1<-cpu", "gpu:1<-disk")
    assert runtime_device(two, "gpu:1") == "cuda:1"
    assert block_spec("gpu:1<-cpu", two).device == "cuda:1" and block_spec("gpu:1<-cpu", two).home == "cpu"
    with pytest.raises(UnsupportedTransformError, match="gpu:2.*has 2 GPU unit"):
        block_spec("gpu:2", two, fqn="model.layers.0")


def test_space_offers_each_gpu_and_masks_gpus_the_profile_lacks() -> None:
    model = tiny_llama()
    single = SearchSpace.build(model, "h100-80gb", inputs=LM_INPUTS)
    two = SearchSpace.build(model, "2x-h100-80gb", inputs=LM_INPUTS)
    p1, p2 = single.index_of("model.layers.0", "placement"), two.index_of("model.layers.0", "placement")
    assert single.variables[p1].choices == ("gpu", "gpu<-cpu", "gpu<-disk", "cpu", "cpu<-disk", "dla")
    v = two.variables[p2]
    assert v.choices[:6] == single.variables[p1].choices and v.choices[6:] == ("gpu:1", "gpu:1<-cpu", "gpu:1<-disk")
    assert all(v.mask[v.choices.index(c)] for c in ("gpu", "gpu:1", "gpu:1<-cpu"))
    # A precision decision under a gpu:1 placement is judged on the GPU unit (bf16 valid there).
    x = two.default_vector()
    x[p2] = v.choices.index("gpu:1")
    q = two.index_of("model.layers.0.mlp.down_proj", "precision")
    mask, _ = two.allowed(q, x)
    assert mask[two.variables[q].choices.index("bfloat16")]
    assert two.problems(x) == [] and devices_used(two, x) == ["gpu:1", "gpu:0"]
    plan = two.decode(x)
    assert plan.decisions_for("model.layers.0")["placement"] == "gpu:1"
    assert (two.encode(Plan.from_json(plan.to_json())) == x).all()


def test_device_footprint_is_the_one_byte_formula_split_by_device() -> None:
    model = tiny_llama()
    space = SearchSpace.build(model, "2x-h100-80gb", inputs=LM_INPUTS)
    base = device_footprint(space, space.default_vector())
    assert base.devices == {"gpu:0": plan_memory(space, space.default_vector())["gpu"]}  # all on the first GPU
    x = space.default_vector()
    placement = space.variables[space.index_of("model.layers.0", "placement")].choices
    for i, choice in enumerate(["gpu", "gpu<-cpu", "gpu:1", "gpu:1<-cpu"]):
        x[space.index_of(f"model.layers.{i}", "placement")] = placement.index(choice)
    split = device_footprint(space, x)
    tiers = plan_memory(space, x)
    blocks = {d: set(b) for d, b in split.blocks.items()}
    assert {"model.layers.0", "model.layers.1"} <= blocks["gpu:0"] and "model.layers.2" in blocks["gpu:1"]
    # Each device stages its own streamed units: one Streamer per device, lookahead 2 -> 3 slots each.
    assert set(split.staging) == {"gpu:0", "gpu:1"} and split.staging["gpu:0"] == split.staging["gpu:1"]
    assert sum(split.devices.values()) == tiers["gpu"] + split.staging["gpu:1"]  # the tier counts one set of slots
    assert split.tiers == {"cpu": tiers["cpu"], "disk": 0}


def test_per_device_budgets_and_plan_check_name_the_device_that_overflows() -> None:
    model = tiny_llama()
    profile = load_preset("2x-h100-80gb")
    assert device_budgets(profile) == {"gpu:0": 80 * 2**30, "gpu:1": 80 * 2**30}
    assert device_budgets(profile, per_gpu="1GiB", devices={"gpu:1": "2GiB"}) == {"gpu:0": 2**30, "gpu:1": 2**31}
    with pytest.raises(InvalidArgumentError, match=r"`devices` names 'gpu:2'.*\['gpu:0', 'gpu:1'\]"):
        device_budgets(profile, devices={"gpu:2": "1GiB"})
    space = SearchSpace.build(model, profile, inputs=LM_INPUTS)
    x = space.default_vector()
    choices = space.variables[space.index_of("model.layers.0", "placement")].choices
    for i in (2, 3):
        x[space.index_of(f"model.layers.{i}", "placement")] = choices.index("gpu:1")
    fp = device_footprint(space, x)
    cap = max(fp.devices.values()) - 1
    problems = device_problems(fp, {"gpu:0": 10**12, "gpu:1": fp.devices["gpu:1"] - 1})
    assert list(problems) == ["gpu:1"]
    assert "device 'gpu:1' needs" in problems["gpu:1"] and "largest block 'model.layers." in problems["gpu:1"]
    plan = space.decode(x)
    assert [p for p in check_plan(model, plan, profile, space=space, budgets={"gpu": cap + 1})
            if p.knob == "budget"] == []  # the gpu budget holds per device, not for both together
    found = [p for p in check_plan(model, plan, profile, space=space, budgets={"gpu": cap}) if p.knob == "budget"]
    assert len(found) == 1 and "device 'gpu:0'" in found[0].reason and "'gpu<-cpu'" in found[0].reason


def test_a_plan_saying_gpu0_encodes_as_gpu_and_a_missing_gpu_is_named() -> None:
    from autosurgeon.plan import Rule

    model = tiny_llama(layers=2)
    two = SearchSpace.build(model, "2x-h100-80gb", inputs=LM_INPUTS)
    plan = Plan(rules=(Rule("model.layers.0", {"placement": "gpu:0<-cpu"}),
                       Rule("model.layers.1", {"placement": "gpu:1"})))
    x = two.encode(plan)
    assert [two.values(x)[(f"model.layers.{i}", "placement")] for i in (0, 1)] == ["gpu<-cpu", "gpu:1"]
    problems = check_plan(model, plan, "h100-80gb", inputs=LM_INPUTS)
    errors = [p for p in problems if p.severity == "error"]
    assert len(errors) == 1 and errors[0].fqn == "model.layers.1" and errors[0].value == "gpu:1"  # gpu:0 is gpu
    assert "(profile 'h100-80gb' has 1 GPU unit(s), so no gpu:1)" in errors[0].reason
