"""SearchSpace: masks per layer and device, encode/decode round trips, repair, sampling, features, saving."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from autosurgeon.errors import InvalidArgumentError
from autosurgeon.hardware.resolve import resolve_profile
from autosurgeon.hardware.profile import HardwareProfile
from autosurgeon.knobs import KNOBS
from autosurgeon.models.digits import DigitsCNN
from autosurgeon.plan import Plan, Rule, model_fingerprint
from autosurgeon.space.search_space import SearchSpace

from _paper_profiles import paper_cpu_profile

ALL = KNOBS


def cpu_profile(*, arch: str = "x86_64", isa: tuple[str, ...] = ("avx2", "avx512f", "avx512bw", "avx512vl")) -> HardwareProfile:
    return paper_cpu_profile(name=f"cpu-{arch}", model=f"test {arch}", arch=arch, isa=isa)


def tiny_llama(*, tie: bool = False, hidden: int = 64) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=hidden, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      tie_word_embeddings=tie)
    return LlamaForCausalLM(cfg).eval()


LM_INPUTS = {"input_ids": torch.zeros(1, 8, dtype=torch.long)}
CNN_INPUTS = {"x": torch.zeros(1, 1, 8, 8)}


@pytest.fixture(scope="module")
def llama() -> LlamaForCausalLM:
    return tiny_llama()


@pytest.fixture(scope="module")
def profiles() -> dict[str, HardwareProfile]:
    return {"cpu": cpu_profile(), "h100": resolve_profile("h100-80gb"), "jetson": resolve_profile("jetson-agx-orin-64gb")}


@pytest.fixture(scope="module")
def spaces(llama, profiles) -> dict[str, SearchSpace]:
    return {k: SearchSpace.build(llama, p, inputs=LM_INPUTS, knobs=ALL) for k, p in profiles.items()}


def _valid(v, value) -> bool:
    return v.mask[v.choices.index(value)]


@pytest.mark.parametrize("device", ["cpu", "h100", "jetson"])
def test_random_valid_vectors_round_trip_exactly(spaces, device) -> None:
    space = spaces[device]
    rng = np.random.default_rng(0)
    for _ in range(40):
        x = space.random_vector(rng)
        assert space.is_valid(x) and space.problems(x) == []
        plan = space.decode(x)
        assert all(not r.is_pattern for r in plan.rules)
        assert np.array_equal(space.encode(plan), x)
        assert np.array_equal(space.encode(Plan.from_json(plan.to_json())), x)  # through JSON too


def test_decode_fills_fingerprints_and_default_is_the_unmodified_model(llama, spaces, profiles) -> None:
    space = spaces["h100"]
    plan = space.decode(space.default_vector())
    assert plan.model_fingerprint == model_fingerprint(llama)
    assert plan.device_fingerprint == profiles["h100"].fingerprint
    assert plan.metadata["space"] == space.digest()
    assert plan.decisions_for("model.layers.0.mlp.up_proj") == {"precision": "float32"}
    assert plan.decisions_for("model.layers.0")["placement"] == "gpu"
    assert np.array_equal(space.encode(Plan()), space.default_vector())
    assert spaces["cpu"].decode(spaces["cpu"].default_vector()).decisions_for("model.layers.1")["placement"] == "cpu"


def test_placement_masks_differ_by_device(spaces) -> None:
    placement = {k: s.variable("model.layers.0", "placement") for k, s in spaces.items()}
    valid = {k: {c for c, ok in zip(v.choices, v.mask) if ok} for k, v in placement.items()}
    assert valid["cpu"] == {"cpu", "cpu<-disk"}
    assert valid["h100"] == {"gpu", "gpu<-cpu", "gpu<-disk"}  # the preset lists no CPU unit
    assert valid["jetson"] == {"gpu", "gpu<-cpu", "gpu<-disk", "cpu", "cpu<-disk", "dla"}
    assert placement["cpu"].choices[0] == "cpu" and placement["h100"].choices[0] == "gpu"
    assert "no GPU unit" in placement["cpu"].reasons["gpu"]
    assert "no DLA unit" in placement["h100"].reasons["dla"]
    assert "no CPU compute unit" in placement["h100"].reasons["cpu"]


def test_precision_masks_differ_by_device(spaces, profiles) -> None:
    name = "model.layers.0.mlp.up_proj"
    prec = {k: s.variable(name, "precision") for k, s in spaces.items()}
    assert _valid(prec["h100"], "fp8") and not _valid(prec["jetson"], "fp8") and not _valid(prec["cpu"], "fp8")
    assert "compute capability >= 8.9" in prec["jetson"].reasons["fp8"]
    assert _valid(prec["cpu"], "int8-dynamic") and not _valid(prec["h100"], "int8-dynamic")
    assert "fbgemm" in prec["jetson"].reasons["int8-dynamic"]  # Arm CPU: no fbgemm
    assert all(_valid(p, "bfloat16") and _valid(p, "int4") and _valid(p, "int8") for p in prec.values())
    arm = SearchSpace.build(tiny_llama(), cpu_profile(arch="aarch64", isa=("neon",)), inputs=LM_INPUTS)
    assert not _valid(arm.variable(name, "precision"), "int8-dynamic")


def test_precision_follows_the_placement_of_its_block(spaces) -> None:
    space = spaces["jetson"]
    x = space.default_vector()
    p = space.index_of("model.layers.1", "placement")
    x[p] = space.variables[p].choices.index("dla")
    q = space.index_of("model.layers.1.mlp.up_proj", "precision")
    mask, reasons = space.allowed(q, x)
    allowed = {c for c, ok in zip(space.variables[q].choices, mask) if ok}
    assert allowed == {"float16", "int8"}
    assert "DLA" in reasons["float32"]
    assert not space.is_valid(x)
    fixed = space.repair(x)
    assert space.variables[q].choices[fixed[q]] == "float16"  # nearest in bits to float32, ties toward index 0
    assert space.is_valid(fixed)


def test_conv_embedding_and_tied_head_rules(profiles) -> None:
    cnn = SearchSpace.build(DigitsCNN(), profiles["jetson"], inputs=CNN_INPUTS, knobs=ALL)
    conv = cnn.variable("block.conv1", "precision")
    assert not _valid(conv, "int8") and "no quantized conv kernel" in conv.reasons["int8"]
    assert _valid(conv, "float16") and cnn.variable("fc", "precision") is not None
    assert cnn.variable("block.conv1", "layout").mask == (True, True, False)
    assert cnn.variable("block", "placement") is not None
    fusion = {v.name for v in cnn.variables if v.knob == "fusion"}
    assert fusion == {"stem.0", "block.conv1", "block.conv2", "down.0"}  # conv+bn folds
    lm = SearchSpace.build(tiny_llama(tie=True), profiles["cpu"], inputs=LM_INPUTS)
    emb = lm.variable("model.embed_tokens", "precision")
    assert not _valid(emb, "int8") and "no quantized embedding" in emb.reasons["int8"]
    assert lm.variable("lm_head", "precision") is None  # tied: follows the embedding
    untied = SearchSpace.build(tiny_llama(), profiles["cpu"], inputs=LM_INPUTS)
    assert _valid(untied.variable("lm_head", "precision"), "int4")


def test_conditional_rules_group_kernel_fusion(spaces) -> None:
    space = spaces["cpu"]
    rng = np.random.default_rng(1)
    x = space.random_vector(rng)
    q = space.index_of("model.layers.0.self_attn.q_proj", "precision")
    g = space.index_of("model.layers.0.self_attn.q_proj", "group_size")
    k = space.index_of("model.layers.0.self_attn.q_proj", "kernel")
    x[q] = space.variables[q].choices.index("float32")
    x[g] = 2
    x[k] = space.variables[k].choices.index("cpu-avx512")
    fixed = space.repair(x)
    assert fixed[g] == 0 and fixed[k] == 0  # canonical for a float layer
    x = fixed.copy()
    x[q] = space.variables[q].choices.index("int4")
    x = space.repair(x)
    kernels = {c for c, ok in zip(space.variables[k].choices, space.allowed(k, x)[0]) if ok}
    assert "cpu-avx512" in kernels and "int8-dynamic" not in kernels and "cuda-fp8" not in kernels
    f = space.index_of("model.layers.0.self_attn", "fusion")
    for name in ("q_proj", "k_proj", "v_proj"):
        i = space.index_of(f"model.layers.0.self_attn.{name}", "precision")
        x[i] = space.variables[i].choices.index("int8" if name == "v_proj" else "int4")
    x = space.repair(x)
    x[f] = 1
    mask, reasons = space.allowed(f, x)
    assert not mask[1] and "must share precision" in reasons["fuse"]


def test_repair_is_idempotent_and_only_returns_valid_vectors(spaces) -> None:
    rng = np.random.default_rng(2)
    for space in spaces.values():
        for _ in range(25):
            x = rng.integers(-2, space.nvec + 2)
            fixed = space.repair(x)
            assert space.is_valid(fixed)
            assert np.array_equal(space.repair(fixed), fixed)
        valid = space.random_vector(rng)
        assert np.array_equal(space.repair(valid), valid)


def test_repair_maps_a_missing_precision_to_the_nearest_in_bits(spaces) -> None:
    space = spaces["cpu"]
    x = space.default_vector()
    q = space.index_of("model.layers.0.mlp.down_proj", "precision")
    x[q] = space.variables[q].choices.index("fp8")
    assert space.variables[q].choices[space.repair(x)[q]] == "int8"


def test_features_and_description(spaces) -> None:
    space = spaces["h100"]
    feats, names = space.features()
    assert feats.shape == (len(space), len(names)) and feats.dtype == np.float32
    assert np.all(feats >= 0) and np.all(feats <= 1)
    assert {"log_flops", "log_bytes", "log_intensity", "parallelism", "position", "kind_block"} <= set(names)
    col = names.index("log_bytes")
    up = space.index_of("model.layers.0.mlp.up_proj", "precision")
    q = space.index_of("model.layers.0.self_attn.q_proj", "precision")
    assert feats[up, col] > feats[q, col]  # the MLP projection is bigger than q_proj
    text = space.describe()
    assert "h100-80gb" in text and "precision" in text and "int8-dynamic" in text


def test_definition_round_trips_through_json(spaces) -> None:
    space = spaces["jetson"]
    again = SearchSpace.from_json(space.to_json())
    assert again.digest() == space.digest() and np.array_equal(again.nvec, space.nvec)
    rng = np.random.default_rng(3)
    for _ in range(10):
        x = space.random_vector(rng)
        assert again.is_valid(x) and again.decode(x).rules == space.decode(x).rules
    data = space.to_dict()
    data["_data"]["variables"][0]["mask"][0] = not data["_data"]["variables"][0]["mask"][0]
    with pytest.raises(InvalidArgumentError, match="digest"):
        SearchSpace.from_dict(data)
    with pytest.raises(InvalidArgumentError, match="_version"):
        SearchSpace.from_dict({**space.to_dict(), "_version": 99})


def test_bad_arguments_say_what_to_do(llama, spaces, profiles) -> None:
    space = spaces["cpu"]
    with pytest.raises(InvalidArgumentError, match=r"`knobs` must be a non-empty subset"):
        SearchSpace.build(llama, profiles["cpu"], inputs=LM_INPUTS, knobs=("precision", "speed"))
    with pytest.raises(InvalidArgumentError, match=r"only mean something with a precision"):
        SearchSpace.build(llama, profiles["cpu"], inputs=LM_INPUTS, knobs=("placement", "kernel"))
    with pytest.raises(InvalidArgumentError, match="needs `inputs`"):
        SearchSpace.build(llama, profiles["cpu"])
    with pytest.raises(InvalidArgumentError, match=r"shape"):
        space.decode(np.zeros(3, dtype=np.int64))
    bad = space.default_vector()
    bad[0] = space.nvec[0]
    with pytest.raises(InvalidArgumentError, match=r"must be in \[0, "):
        space.decode(bad)
    with pytest.raises(InvalidArgumentError, match="numpy.random.Generator"):
        space.random_vector(0)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="is not a choice"):
        space.encode(Plan(rules=(Rule("model.layers.0.mlp.up_proj", {"kernel": "no-such-kernel"}),)))


def test_loaded_model_on_meta_builds_and_round_trips(tmp_path, profiles) -> None:
    from autosurgeon.zoo import load_model

    loaded = load_model("digits-cnn", device="meta", cache_dir=tmp_path)  # architecture only: nothing trains
    space = SearchSpace.build(loaded, profiles["jetson"], knobs=ALL)
    assert space.model_fingerprint == model_fingerprint(loaded.model)
    rng = np.random.default_rng(4)
    for _ in range(20):
        x = space.random_vector(rng)
        assert np.array_equal(space.encode(space.decode(x)), x)


def test_every_masked_choice_has_a_reason(spaces) -> None:
    rng = np.random.default_rng(5)
    for space in spaces.values():
        for v in space.variables:
            assert v.mask[0] or v.knob == "group_size", (v.name, v.knob)  # index 0 (unmodified) stays valid
            assert {str(c) for c, ok in zip(v.choices, v.mask) if not ok} == set(map(str, v.reasons)), (v.name, v.knob)
        x = space.random_vector(rng)
        for i, v in enumerate(space.variables):
            mask, reasons = space.allowed(i, x)
            assert all(str(c) in reasons for c, ok in zip(v.choices, mask) if not ok), (v.name, v.knob)


def test_streamed_blocks_share_one_layout_and_only_runtime_blocks_move(spaces, profiles) -> None:
    space = spaces["jetson"]
    x = space.default_vector()
    for block in ("model.layers.0", "model.layers.1"):
        p = space.index_of(block, "placement")
        x[p] = space.variables[p].choices.index("gpu<-cpu")
    first, second = space.index_of("model.layers.0", "layout"), space.index_of("model.layers.1", "layout")
    x[first] = space.variables[first].choices.index("packed")
    mask, reasons = space.allowed(second, x)
    assert [c for c, ok in zip(space.variables[second].choices, mask) if ok] == ["packed"]
    assert "one granularity" in reasons["default"]
    assert space.variables[second].choices[space.repair(x)[second]] == "packed"
    cnn = SearchSpace.build(DigitsCNN(), profiles["jetson"], inputs=CNN_INPUTS)
    block = cnn.variable("block", "placement")
    assert [c for c, ok in zip(block.choices, block.mask) if ok] == ["gpu"]
    assert "not in the runtime's block list" in block.reasons["gpu<-cpu"]
