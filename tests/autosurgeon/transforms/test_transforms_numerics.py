"""Each transformation against the original module's output, with stated tolerances.

Tolerances (relative Frobenius error of the output vs the unmodified module, float32 reference):
conv+bn fold 1e-5; q/k/v and gate/up concatenation 1e-6; channels_last 1e-5; int8 weight-only 1e-2;
int4 group-wise 1e-1; bfloat16 cast 1e-2; fp8 1e-1; int8-dynamic 5e-2 (activations quantized too).
"""
from __future__ import annotations

import copy

import pytest
import torch
from _transform_models import digits_cnn, rel_err, tiny_llama
from torch import nn

from autosurgeon.errors import InvalidArgumentError, UnsupportedTransformError
from autosurgeon.transforms import (
    FuseConfig,
    KernelConfig,
    LayoutConfig,
    PruneConfig,
    QuantizeConfig,
    TransformContext,
    transform,
)
from autosurgeon.transforms.modules import ConcatLinear, FusedAway, LinearAct, SplitOutput, SurgeryLinear
from runtime.kernels import QuantizedLinear, get_kernel

IDS = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
IMAGES = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
CONV_BN = ("stem.0", "block.conv1", "block.conv2", "down.0")


@torch.no_grad()
def logits(model: nn.Module) -> torch.Tensor:
    return model(input_ids=IDS).logits


def x_for(linear: nn.Linear, seed: int = 3) -> torch.Tensor:
    return torch.randn(5, linear.in_features, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------- fuse
def test_conv_bn_fold_matches_the_original_within_1e_5() -> None:
    model = digits_cnn()
    ref = model(IMAGES)
    fused = copy.deepcopy(model)
    ctx = TransformContext()
    for name in CONV_BN:
        transform(fused, FuseConfig("conv-bn"), fqn=name, context=ctx)
    assert isinstance(fused.stem[1], FusedAway) and isinstance(fused.block.bn2, FusedAway)
    assert fused.stem[0].bias is not None
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    with torch.no_grad():
        assert rel_err(fused(IMAGES), ref) < 1e-5
    # Idempotent: the second pass finds every BatchNorm folded already.
    before = {k: v.clone() for k, v in fused.state_dict().items()}
    for name in CONV_BN:
        transform(fused, FuseConfig("conv-bn"), fqn=name, context=ctx)
    assert [w for *_, w in ctx.log] == ["applied"] * 4 + ["skipped"] * 4
    assert all(torch.equal(before[k], v) for k, v in fused.state_dict().items())


def test_conv_bn_fold_refuses_training_mode_and_non_conv_targets() -> None:
    model = digits_cnn().train()
    with pytest.raises(UnsupportedTransformError, match=r"stem\.1: folding needs the BatchNorm in eval mode"):
        transform(model, FuseConfig("conv-bn"), fqn="stem.0")
    assert isinstance(model.stem[1], nn.BatchNorm2d)
    with pytest.raises(InvalidArgumentError, match=r"fc: conv-bn fusion targets the conv; fc is a Linear"):
        transform(model.eval(), FuseConfig("conv-bn"), fqn="fc")


def test_qkv_and_gate_up_concatenation_match_within_1e_6() -> None:
    model = tiny_llama()
    ref = logits(model)
    for i in range(2):
        transform(model, FuseConfig("qkv"), fqn=f"model.layers.{i}.self_attn")
        transform(model, FuseConfig("gate-up"), fqn=f"model.layers.{i}.mlp")
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert isinstance(attn.qkv_proj, ConcatLinear) and attn.qkv_proj.sizes == (64, 32, 32)
    assert isinstance(attn.q_proj, SplitOutput) and isinstance(mlp.gate_proj, SplitOutput)
    # The fused linear is registered where q_proj was (module order follows the data flow) ...
    assert list(attn._modules)[:2] == ["qkv_proj", "q_proj"]
    # ... and holds the members' weights once: no q/k/v weights left in the state dict.
    keys = model.state_dict().keys()
    assert "model.layers.0.self_attn.qkv_proj.linear.weight" in keys
    assert not any(k.endswith("q_proj.weight") or k.endswith("gate_proj.weight") for k in keys)
    assert rel_err(logits(model), ref) < 1e-6
    assert attn.qkv_proj._cache is None  # every slice was served; no activation kept between calls
    with torch.inference_mode():  # inference tensors keep no version counter: still served from one matmul
        assert rel_err(model(input_ids=IDS).logits, ref) < 1e-6


def test_concatenation_runs_one_matmul_for_the_three_projections() -> None:
    model = tiny_llama(layers=1)
    transform(model, FuseConfig("qkv"), fqn="model.layers.0.self_attn")
    calls = []
    model.model.layers[0].self_attn.qkv_proj.linear.register_forward_hook(lambda *a: calls.append(1))
    logits(model)
    assert len(calls) == 1


def test_fusion_refuses_quantized_members_and_is_idempotent() -> None:
    model = tiny_llama(layers=1)
    ctx = TransformContext()
    transform(model, FuseConfig("gate-up"), fqn="model.layers.0.mlp", context=ctx)
    transform(model, FuseConfig("gate-up"), fqn="model.layers.0.mlp", context=ctx)
    assert [w for *_, w in ctx.log] == ["applied", "skipped"]
    transform(model, QuantizeConfig("int8"), fqn="model.layers.0.self_attn.k_proj")
    with pytest.raises(UnsupportedTransformError, match=r"q_proj, k_proj, v_proj to be float nn.Linear modules "
                                                        r"\(k_proj: QuantizedLinear\); fuse before quantizing"):
        transform(model, FuseConfig("qkv"), fqn="model.layers.0.self_attn")


def test_linear_act_fusion_in_a_sequential() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4)).eval()
    x = torch.randn(3, 16)
    ref = model(x)
    transform(model, FuseConfig("linear-act"), fqn="0")
    assert isinstance(model[0], LinearAct) and isinstance(model[1], FusedAway)
    assert torch.equal(model(x), ref)
    llama = tiny_llama(layers=1)
    with pytest.raises(UnsupportedTransformError, match=r"inside an nn.Sequential .*parent is a LlamaMLP"):
        transform(llama, FuseConfig("linear-act"), fqn="model.layers.0.mlp.gate_proj")


# ---------------------------------------------------------------------------------------------- quantize
@pytest.mark.parametrize("precision, group, tol", [("int8", 128, 1e-2), ("int4", 32, 1e-1), ("fp8", 128, 1e-1)])
def test_quantized_linear_against_the_original(precision: str, group: int, tol: float) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48))
    linear = model[0]
    x = x_for(linear)
    ref = linear(x).detach()
    new = transform(model, QuantizeConfig(precision, group_size=group), fqn="0")
    assert isinstance(new, QuantizedLinear) and new.fmt == precision
    if precision == "int4":
        assert new.group_size == group
    err = rel_err(new(x), ref)
    assert 0 < err < tol


def test_int8_dynamic_uses_the_fbgemm_kernel_where_the_runtime_has_it() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48))
    x = x_for(model[0])
    ref = model(x).detach()
    if not get_kernel("int8-dynamic").supports("int8", "cpu"):
        with pytest.raises(UnsupportedTransformError, match="int8-dynamic"):
            transform(model, QuantizeConfig("int8-dynamic"), fqn="0")
        return
    new = transform(model, QuantizeConfig("int8-dynamic"), fqn="0")
    assert new.kernel == "int8-dynamic" and new.fmt == "int8"
    assert rel_err(new(x), ref) < 5e-2


def test_float_cast_keeps_the_dtype_boundary() -> None:
    model = tiny_llama()
    ref = logits(model)
    transform(model, QuantizeConfig("bfloat16"), fqn="model.layers.0.mlp.down_proj")
    transform(model, QuantizeConfig("float16"), fqn="model.layers.1.self_attn.o_proj")
    down = model.model.layers[0].mlp.down_proj
    assert isinstance(down, SurgeryLinear) and down.weight.dtype == torch.bfloat16
    out = logits(model)  # neighbours still compute in float32
    assert out.dtype == torch.float32
    assert 0 < rel_err(out, ref) < 1e-2
    x = torch.randn(3, 128)
    assert down(x).dtype == torch.float32


def test_casting_a_tied_embedding_keeps_the_tie() -> None:
    model = tiny_llama(layers=1)
    model.config.tie_word_embeddings = True
    model.lm_head.weight = model.model.embed_tokens.weight
    ref = logits(model)
    transform(model, QuantizeConfig("bfloat16"), fqn="model.embed_tokens")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.lm_head.weight.dtype == torch.bfloat16 and isinstance(model.lm_head, SurgeryLinear)
    out = logits(model)
    assert out.dtype == torch.float32 and rel_err(out, ref) < 2e-2
    with pytest.raises(UnsupportedTransformError, match="shared with another module"):
        transform(model, QuantizeConfig("int8"), fqn="lm_head")


def test_convs_take_float_precisions_only() -> None:
    model = digits_cnn()
    ref = model(IMAGES).detach()
    transform(model, QuantizeConfig("bfloat16"), fqn="block.conv1")
    assert model.block.conv1.weight.dtype == torch.bfloat16
    with torch.no_grad():
        assert rel_err(model(IMAGES), ref) < 1e-2
    with pytest.raises(UnsupportedTransformError, match=r"down\.0: precision 'int8' needs an nn.Linear .* "
                                                        r"Use a float precision"):
        transform(model, QuantizeConfig("int8"), fqn="down.0")


def test_quantize_is_idempotent_and_refuses_requantizing() -> None:
    model = nn.Sequential(nn.Linear(64, 16))
    ctx = TransformContext()
    q = transform(model, QuantizeConfig("int4", group_size=32), fqn="0", context=ctx)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert transform(model, QuantizeConfig("int4", group_size=32), fqn="0", context=ctx) is q
    assert ctx.log[-1][2] == "skipped"
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with pytest.raises(UnsupportedTransformError, match=r"already quantized \(int4, group 32.*cannot be turned into "
                                                        r"'int8' without the original weights"):
        transform(model, QuantizeConfig("int8"), fqn="0")


def test_a_fused_linear_quantizes_as_one_matrix() -> None:
    model = tiny_llama(layers=1)
    ref = logits(model)
    transform(model, FuseConfig("qkv"), fqn="model.layers.0.self_attn")
    transform(model, QuantizeConfig("int8"), fqn="model.layers.0.self_attn.qkv_proj")
    fused = model.model.layers[0].self_attn.qkv_proj
    assert isinstance(fused.linear, QuantizedLinear) and fused.linear.out_features == 128
    assert 0 < rel_err(logits(model), ref) < 1e-2


# ---------------------------------------------------------------------------------------------- kernel
def test_kernel_sets_a_valid_kernel_and_names_bad_ones() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.Linear(16, 4))
    x = torch.randn(2, 64)
    transform(model, QuantizeConfig("int8"), fqn="0")
    ref = model(x)
    transform(model, KernelConfig("torch-dequant"), fqn="0")
    assert model[0].kernel == "torch-dequant"
    assert rel_err(model(x), ref) < 1e-4
    with pytest.raises(InvalidArgumentError, match=r"0: `kernel` 'fast' is not a runtime kernel; known kernels: "
                                                   r".*torch-dequant"):
        transform(model, KernelConfig("fast"), fqn="0")
    with pytest.raises(UnsupportedTransformError, match=r"`kernel` 'cuda-triton' cannot run int8 weights on cpu "
                                                        r"here.*kernels for int8 on cpu: .*torch-dequant"):
        transform(model, KernelConfig("cuda-triton"), fqn="0")
    with pytest.raises(InvalidArgumentError, match=r"1: `kernel` applies to quantized linears; 1 is a Linear"):
        transform(model, KernelConfig("torch-dequant"), fqn="1")
    transform(model, KernelConfig("auto"), fqn="0")
    assert model[0].kernel is None


# ---------------------------------------------------------------------------------------------- layout
def test_channels_last_convs_match_within_1e_5() -> None:
    model = digits_cnn()
    ref = model(IMAGES).detach()
    for name in CONV_BN:
        transform(model, LayoutConfig("channels_last"), fqn=name)
    conv = model.block.conv1
    assert conv.channels_last and conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert rel_err(model(IMAGES), ref) < 1e-5
    with pytest.raises(UnsupportedTransformError, match=r"fc: channels_last applies to Conv2d modules"):
        transform(model, LayoutConfig("channels_last"), fqn="fc")


def test_packed_needs_a_streamed_placement() -> None:
    from autosurgeon.transforms import PlaceConfig

    model = tiny_llama(layers=2)
    ctx = TransformContext()
    with pytest.raises(InvalidArgumentError, match="apply a PlaceConfig to it first"):
        transform(model, LayoutConfig("packed"), fqn="model.layers.0", context=ctx)
    transform(model, PlaceConfig("cpu"), fqn="model.layers.0", context=ctx)
    with pytest.raises(UnsupportedTransformError, match=r"model.layers.0: layout 'packed' applies to streamed blocks; "
                                                        r"it is placed 'cpu' \(resident\)"):
        transform(model, LayoutConfig("packed"), fqn="model.layers.0", context=ctx)
    transform(model, PlaceConfig("cpu<-disk"), fqn="model.layers.1", context=ctx)
    transform(model, LayoutConfig("packed"), fqn="model.layers.1", context=ctx)
    assert ctx.packed == {"model.layers.1"}


# ---------------------------------------------------------------------------------------------- prune
def test_prune_ratio_zero_changes_nothing_and_half_keeps_the_largest_channels() -> None:
    model = tiny_llama(layers=1)
    ref = logits(model)
    transform(model, PruneConfig(0.0), fqn="model.layers.0.mlp")
    assert torch.equal(logits(model), ref)

    model = tiny_llama(layers=1)
    mlp = model.model.layers[0].mlp
    score = (mlp.gate_proj.weight.pow(2).sum(1) + mlp.up_proj.weight.pow(2).sum(1)
             + mlp.down_proj.weight.pow(2).sum(0)).detach()
    expect = torch.topk(score, 64).indices.sort().values
    gate_rows = mlp.gate_proj.weight.detach()[expect].clone()
    transform(model, PruneConfig(0.5), fqn="model.layers.0.mlp")
    mlp = model.model.layers[0].mlp
    assert mlp.gate_proj.out_features == mlp.up_proj.out_features == mlp.down_proj.in_features == 64
    assert torch.equal(mlp.gate_proj.weight, gate_rows)
    assert mlp.intermediate_size == 64
    out = logits(model)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    ctx = TransformContext()
    transform(model, PruneConfig(0.5), fqn="model.layers.0.mlp", context=ctx)
    assert ctx.log[-1][2] == "skipped"
    with pytest.raises(UnsupportedTransformError, match="already pruned at ratio 0.5 from 128 channels"):
        transform(model, PruneConfig(0.25), fqn="model.layers.0.mlp")


def test_pruning_a_fused_gate_up_equals_pruning_the_separate_linears() -> None:
    a, b = tiny_llama(layers=1), tiny_llama(layers=1)
    transform(a, PruneConfig(0.25), fqn="model.layers.0.mlp")
    transform(b, FuseConfig("gate-up"), fqn="model.layers.0.mlp")
    transform(b, PruneConfig(0.25), fqn="model.layers.0.mlp")
    assert b.model.layers[0].mlp.gate_up_proj.sizes == (96, 96)
    assert rel_err(logits(b), logits(a)) < 1e-6
    with pytest.raises(UnsupportedTransformError, match="pruning needs an MLP with gate_proj, up_proj and down_proj"):
        transform(a, PruneConfig(0.25), fqn="model.layers.0.self_attn")
