"""apply_plan: checked first, nothing half-applied, the caller's model untouched, idempotent, a working Session."""
from __future__ import annotations

import copy

import pytest
import torch
from _transform_models import IMAGE_INPUTS, LM_INPUTS, cpu_profile, digits_cnn, rel_err, tiny_llama
from torch import nn

from autosurgeon.errors import InvalidArgumentError, UnsupportedTransformError
from autosurgeon.hardware.resolve import resolve_profile
from autosurgeon.knobs import KNOBS
from autosurgeon.plan import Plan, Rule, model_fingerprint
from autosurgeon.plan_check import PlanCheckError
from autosurgeon.space.search_space import SearchSpace
from autosurgeon.transforms import (
    FuseConfig,
    KernelConfig,
    PlaceConfig,
    QuantizeConfig,
    TransformContext,
    apply_plan,
    apply_surgery,
    build_session_spec,
    resolve_surgery,
    session_from_plan,
)
from autosurgeon.transforms.apply import MARKER
from autosurgeon.transforms.modules import ConcatLinear, SurgeryConv2d
from runtime.kernels import QuantizedLinear

IDS = torch.randint(0, 256, (1, 10), generator=torch.Generator().manual_seed(4))
MIXED = Plan(default={"precision": "int8"}, rules=(
    Rule("model.embed_tokens", {"precision": "float32"}),
    Rule("re:.*self_attn", {"fusion": "fuse"}),
    Rule("re:.*mlp\\.down_proj", {"precision": "int4", "group_size": 32}),
    Rule("lm_head", {"precision": "bfloat16"}),
    Rule("model.layers.1", {"placement": "cpu<-disk"}),
))


def snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, type]]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, {n: type(m) for n, m in model.named_modules()}


def assert_same(model: nn.Module, snap: tuple[dict[str, torch.Tensor], dict[str, type]]) -> None:
    state, types = snap
    now = model.state_dict()
    assert now.keys() == state.keys()
    assert all(now[k].dtype == v.dtype and torch.equal(now[k], v) for k, v in state.items())
    assert {n: type(m) for n, m in model.named_modules()} == types
    assert not hasattr(model, MARKER)


def greedy(model: nn.Module, n: int = 6) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(IDS, max_new_tokens=n, do_sample=False, attention_mask=torch.ones_like(IDS),
                              pad_token_id=0)


@pytest.fixture(scope="module")
def profile():
    return cpu_profile()


def test_all_float_plan_gives_identical_greedy_tokens(profile, tmp_path) -> None:
    model = tiny_llama()
    expected = greedy(model)
    plan = Plan(default={"precision": "float32"}, rules=(
        Rule("model.layers.0", {"placement": "cpu<-disk", "layout": "packed"}),
        Rule("model.layers.1", {"placement": "cpu<-disk", "layout": "packed"})))
    with apply_plan(model, plan, profile, offload_dir=str(tmp_path)) as session:
        assert session.spec.granularity == "block" and all(b.streamed for b in session.spec.blocks)
        out = session.generate(IDS, max_new_tokens=6)
        assert session.stats().fetches > 0  # the blocks really streamed from the disk tier
    assert torch.equal(out, expected)


def test_float_plan_with_fusion_keeps_logits_and_tokens(profile) -> None:
    model = tiny_llama()
    ref = model(input_ids=IDS).logits.detach()
    expected = greedy(model)
    plan = Plan(default={"fusion": "fuse"})
    with apply_plan(model, plan, profile) as session:
        assert isinstance(session.model.model.layers[1].mlp.gate_up_proj, ConcatLinear)
        assert rel_err(session.forward(input_ids=IDS).logits, ref) < 1e-6
        assert torch.equal(session.generate(IDS, max_new_tokens=6), expected)


def test_mixed_plan_leaves_the_callers_model_untouched(profile) -> None:
    model = tiny_llama()
    snap = snapshot(model)
    ref = model(input_ids=IDS).logits.detach()
    with apply_plan(model, MIXED, profile) as session:
        layer = session.model.model.layers[0]
        qkv = layer.self_attn.qkv_proj.linear
        assert isinstance(qkv, QuantizedLinear) and qkv.fmt == "int8"
        assert layer.mlp.down_proj.fmt == "int4" and layer.mlp.down_proj.group_size == 32
        assert session.model.lm_head.weight.dtype == torch.bfloat16
        assert session.spec.blocks[1].home == "disk" and not session.spec.blocks[0].streamed
        out = session.forward(input_ids=IDS).logits
        assert out.dtype == torch.float32 and 0 < rel_err(out, ref) < 0.1  # int4/int8 mix: ~1e-1 at most
    assert_same(model, snap)


@pytest.mark.parametrize("plan", [
    MIXED,
    Plan(default={"precision": "int8"}, rules=(Rule("model.embed_tokens", {"precision": "bfloat16"}),
                                             Rule("model.layers.0", {"placement": "cpu<-disk", "layout": "packed"}))),
], ids=["mixed-fused-int4-disk", "int8-bf16-embedding-packed"])
def test_applied_bytes_per_tier_equal_the_footprint_formula(profile, plan) -> None:
    from autosurgeon.cost.footprint import plan_memory

    model = tiny_llama()
    space = SearchSpace.build(model, profile, inputs=LM_INPUTS, knobs=KNOBS)
    with apply_plan(model, plan, profile, space=space) as session:
        held = {t: session.store.used(t) for t in ("gpu", "cpu", "disk")}
    assert held == plan_memory(space, plan)  # byte for byte: the transforms build what the planner counted
    assert held["disk"] > 0


def test_autotune_gives_resident_auto_layers_a_weight_only_kernel(profile) -> None:
    from runtime.kernels import get_kernel

    model = tiny_llama()
    ref = model(input_ids=IDS).logits.detach()
    plan = Plan(default={"precision": "int8"}, rules=(
        Rule("model.embed_tokens", {"precision": "float32"}),
        Rule("model.layers.0.mlp.down_proj", {"kernel": "torch-dequant"}),
        Rule("model.layers.1", {"placement": "cpu<-disk"})))
    with apply_plan(model, plan, profile, autotune_kernels=True) as session:
        layers = session.model.model.layers
        assert layers[0].mlp.down_proj.kernel == "torch-dequant"  # the plan's choice is kept
        tuned = layers[0].self_attn.q_proj.kernel
        assert tuned is not None and not get_kernel(tuned).quantizes_activations
        assert layers[1].self_attn.q_proj.kernel is None  # streamed: the runtime default
        assert rel_err(session.forward(input_ids=IDS).logits, ref) < 1e-2


def test_apply_plan_is_idempotent_in_place(profile) -> None:
    model = tiny_llama()
    apply_plan(model, MIXED, profile, inplace=True).close()
    assert hasattr(model, MARKER)
    snap = {k: v.clone() for k, v in model.state_dict().items()}
    types = {n: type(m) for n, m in model.named_modules()}
    with apply_plan(model, MIXED, profile, inplace=True) as session:
        assert session.model is model
        session.forward(input_ids=IDS)
    assert {n: type(m) for n, m in model.named_modules()} == types
    assert all(torch.equal(snap[k], v) for k, v in model.state_dict().items())
    # Every step of the second application found its module in the target state.
    surgery = getattr(model, MARKER)["surgery"]
    ctx = apply_surgery(model, surgery, TransformContext(profile=profile),
                        stages=("fuse", "prune", "quantize", "kernel", "layout"))
    assert len(ctx.log) >= 10 and all(what == "skipped" for *_, what in ctx.log)
    with pytest.raises(InvalidArgumentError, match="already transformed by another plan"):
        apply_plan(model, Plan(default={"precision": "int4"}), profile, inplace=True)


def test_invalid_plan_lists_every_problem_and_touches_nothing(profile) -> None:
    model = tiny_llama()
    snap = snapshot(model)
    bad = Plan(rules=(
        Rule("model.layers.0.mlp.up_proj", {"precision": "fp8"}),           # no fp8 on a CPU
        Rule("model.layers.9", {"placement": "cpu"}),                        # no such block
        Rule("model.norm", {"precision": "int8"}),                           # a norm has no precision
        Rule("model.layers.1", {"placement": "gpu<-cpu"}),                   # no GPU on this profile
    ), model_fingerprint="0123456789abcdef")
    with pytest.raises(PlanCheckError) as info:
        apply_plan(model, bad, profile, inplace=True)
    text = str(info.value)
    for needle in ("fp8", "model.layers.9", "model.norm", "gpu<-cpu", "model fingerprint 0123456789abcdef"):
        assert needle in text
    assert len([p for p in info.value.problems if p.severity == "error"]) >= 5
    assert_same(model, snap)


def test_force_lets_a_fingerprint_mismatch_through_as_a_warning(profile, caplog) -> None:
    model = tiny_llama(layers=1)
    plan = Plan(default={"precision": "bfloat16"}, model_fingerprint="0123456789abcdef")
    with pytest.raises(PlanCheckError, match="model fingerprint 0123456789abcdef"):
        apply_plan(model, plan, profile)
    with apply_plan(model, plan, profile, force=True) as session:
        assert session.model.lm_head.weight.dtype == torch.bfloat16
    assert "forced" in caplog.text


def test_budget_below_the_plan_is_refused_before_surgery(profile) -> None:
    model = tiny_llama()
    snap = snapshot(model)
    with pytest.raises(PlanCheckError, match="budget"):
        apply_plan(model, Plan(default={"precision": "float32"}), profile, budgets={"cpu": "10KiB"}, inplace=True)
    assert_same(model, snap)


def test_dla_placement_is_refused_clearly_and_touches_nothing() -> None:
    jetson = resolve_profile("jetson-agx-orin-64gb")
    model = tiny_llama()
    snap = snapshot(model)
    plan = Plan(rules=(Rule("model.layers.0", {"placement": "dla"}),), default={"precision": "float16"})
    with pytest.raises(UnsupportedTransformError, match=r"model.layers.0: placement 'dla' is plan-on-paper only"):
        apply_plan(model, plan, jetson, inplace=True)
    assert_same(model, snap)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where no GPU is visible")
def test_gpu_plan_without_cuda_is_refused_before_surgery() -> None:
    model = tiny_llama()
    snap = snapshot(model)
    with pytest.raises(UnsupportedTransformError, match=r"runs blocks on cuda:0 .*no CUDA device is visible"):
        apply_plan(model, Plan(default={"precision": "float16"}), "h100-80gb", inplace=True)
    assert_same(model, snap)


def test_session_spec_of_a_gpu_plan_on_paper() -> None:
    h100 = resolve_profile("h100-80gb")
    model = tiny_llama(layers=3)
    space = SearchSpace.build(model, h100, inputs=LM_INPUTS, knobs=KNOBS)
    plan = Plan(rules=(Rule("model.layers.1", {"placement": "gpu<-cpu", "layout": "packed"}),
                       Rule("model.layers.2", {"placement": "gpu<-disk", "layout": "packed"})))
    surgery = resolve_surgery(plan, space)
    ctx = apply_surgery(model, surgery, TransformContext(profile=h100), stages=("place", "layout"))
    spec = build_session_spec(model, ctx, budgets={"gpu": "1GiB"})
    assert [(b.device, b.home) for b in spec.blocks] == [("cuda:0", None), ("cuda:0", "cpu"), ("cuda:0", "disk")]
    assert spec.rest_spec.device == "cuda:0" and spec.granularity == "block" and spec.block_path == "model.layers"
    assert spec.budgets == {"gpu": 2**30}
    mixed = Plan(rules=(Rule("model.layers.1", {"placement": "gpu<-cpu", "layout": "packed"}),
                        Rule("model.layers.2", {"placement": "gpu<-cpu"})))
    ctx = apply_surgery(model, resolve_surgery(mixed, space), TransformContext(profile=h100),
                        stages=("place", "layout"))
    with pytest.raises(UnsupportedTransformError, match=r"one granularity .*streamed without packed: "
                                                        r"\['model.layers.2'\]"):
        build_session_spec(model, ctx)


def test_resolve_orders_stages_and_merges_fused_members(profile) -> None:
    model = tiny_llama(layers=1)
    space = SearchSpace.build(model, profile, inputs=LM_INPUTS, knobs=KNOBS)
    plan = Plan(default={"precision": "int8"}, rules=(
        Rule("model.embed_tokens", {"precision": "float32"}),
        Rule("model.layers.0.self_attn", {"fusion": "fuse"}),
        Rule("re:.*_proj", {"kernel": "torch-dequant"})))
    surgery = resolve_surgery(plan, space, prune={"re:.*mlp": 0.25}, model=model)
    stages = [s.stage for s in surgery.steps]
    assert stages == sorted(stages, key=["place", "fuse", "prune", "quantize", "kernel", "layout"].index)
    quantize = {s.fqn: s.config for s in surgery.stage("quantize")}
    assert "model.layers.0.self_attn.qkv_proj" in quantize and "model.layers.0.self_attn.q_proj" not in quantize
    assert quantize["model.layers.0.self_attn.qkv_proj"] == QuantizeConfig("int8")
    assert {s.fqn: s.config for s in surgery.stage("kernel")}["model.layers.0.mlp.down_proj"] == \
        KernelConfig("torch-dequant")
    assert surgery.stage("fuse")[0].config == FuseConfig("qkv")
    assert surgery.stage("place")[0].config == PlaceConfig("cpu")
    split = Plan(rules=(Rule("model.layers.0.self_attn", {"fusion": "fuse"}),
                        Rule("model.layers.0.self_attn.q_proj", {"precision": "int4"})))
    with pytest.raises(InvalidArgumentError, match="fused into model.layers.0.self_attn.qkv_proj but ask for "
                                                   "different precision"):
        resolve_surgery(split, space)
    with pytest.raises(InvalidArgumentError, match="`prune` target 'model.layers.0.self_attn' names no gate/up/down"):
        resolve_surgery(plan, space, prune={"model.layers.0.self_attn": 0.5}, model=model)


def test_prune_through_apply_plan(profile) -> None:
    model = tiny_llama()
    with apply_plan(model, Plan(default={"precision": "float32"}), profile, prune={"re:.*mlp": 0.25}) as session:
        assert session.model.model.layers[1].mlp.down_proj.in_features == 96
        assert torch.isfinite(session.forward(input_ids=IDS).logits).all()
    assert model.model.layers[1].mlp.down_proj.in_features == 128


def test_digits_cnn_plan_folds_casts_and_reorders(profile) -> None:
    model = digits_cnn()
    images = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    ref = model(images).detach()
    plan = Plan(default={"fusion": "fuse"}, rules=(
        Rule("block.conv1", {"precision": "bfloat16"}), Rule("fc", {"precision": "int8"}),
        Rule("re:.*(conv\\d|\\.0)", {"layout": "channels_last"})),
        model_fingerprint=model_fingerprint(model), device_fingerprint=profile.fingerprint)
    with apply_plan(model, plan, profile, inputs=IMAGE_INPUTS) as session:
        net = session.model
        assert isinstance(net.block.conv1, SurgeryConv2d) and net.block.conv1.channels_last
        assert net.block.conv1.weight.dtype == torch.bfloat16 and isinstance(net.fc, QuantizedLinear)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
        assert rel_err(session.forward(x=images), ref) < 2e-2  # bf16 conv + int8 head
    streamed = Plan(rules=(Rule("block", {"placement": "cpu<-disk"}),))
    with pytest.raises(PlanCheckError, match=r"block `placement`='cpu<-disk'.*not in the runtime's block list"):
        apply_plan(model, streamed, profile, inputs=IMAGE_INPUTS)
    with pytest.raises(UnsupportedTransformError, match=r"block \(cpu<-disk\).*outside the runtime's block list"):
        apply_plan(model, streamed, profile, inputs=IMAGE_INPUTS, check=False)  # the transform says so too


def test_session_from_plan_loads_a_saved_plan(tmp_path, profile) -> None:
    model = tiny_llama()
    expected = greedy(copy.deepcopy(model))
    path = Plan(default={"precision": "float32"}, rules=(Rule("model.layers.1", {"placement": "cpu<-disk"}),)).save(
        tmp_path / "plan.json")
    with session_from_plan(model, path, profile=profile, offload_dir=str(tmp_path / "off")) as session:
        assert session.model is model
        assert torch.equal(session.generate(IDS, max_new_tokens=6), expected)
