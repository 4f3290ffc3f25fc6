"""GPT-2's Conv1D and OPT's learned position embedding take every precision the space offers them.

Tiny random GPT-2 and OPT built from transformers configs (no hub). Uniform plans of each precision apply,
generate, charge exactly the bytes the footprint predicts, and stay near the float model; float32 is exact.
"""
from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, OPTConfig, OPTForCausalLM
from transformers.pytorch_utils import Conv1D

from autosurgeon.cost.footprint import plan_memory
from autosurgeon.knobs import KNOBS
from autosurgeon.quality.precision_swap import precision_units, swapped, weight_perturbation
from autosurgeon.space.search_space import SearchSpace
from autosurgeon.transforms import apply_plan
from autosurgeon.transforms.modules import is_conv1d, linear_from_conv1d
from runtime.kernels import QuantizedLinear

from _transform_models import cpu_profile as paper_cpu_profile

VOCAB = 256
IDS = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(0))
# Relative error of the last position's logits against float32 (random weights: small but not trained).
TOLERANCE = {"float32": 0.0, "bfloat16": 0.02, "float16": 0.005, "int8": 0.05, "int8-dynamic": 0.1, "int4": 0.3}


def _gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                                      bos_token_id=0, eos_token_id=0)).eval()


def _opt() -> torch.nn.Module:
    torch.manual_seed(0)
    return OPTForCausalLM(OPTConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, ffn_dim=128,
                                    num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=64,
                                    pad_token_id=1, bos_token_id=0, eos_token_id=0)).eval()


MODELS = {"gpt2": _gpt2, "opt": _opt}


def test_conv1d_becomes_the_linear_it_is() -> None:
    torch.manual_seed(0)
    conv = Conv1D(24, 16)  # nf=24 outputs, nx=16 inputs: weight (16, 24)
    assert is_conv1d(conv) and not is_conv1d(torch.nn.Linear(16, 24))
    linear = linear_from_conv1d(conv)
    x = torch.randn(3, 5, 16)
    assert linear.weight.shape == (24, 16)
    torch.testing.assert_close(linear(x), conv(x), rtol=1e-6, atol=1e-6)
    # quantized per OUTPUT channel, as the deployed linear is
    assert weight_perturbation(conv, "int8") == weight_perturbation(linear, "int8")


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("precision", list(TOLERANCE))
def test_uniform_plans_apply_generate_and_charge_the_footprint(arch: str, precision: str) -> None:
    model = MODELS[arch]()
    profile = paper_cpu_profile()
    inputs = {"input_ids": IDS}
    space = SearchSpace.build(model, profile, inputs=inputs, knobs=KNOBS)
    x = space.default_vector()
    touched = []
    for i, v in enumerate(space.variables):
        if v.knob == "precision" and precision in v.choices and v.mask[v.choices.index(precision)]:
            x[i] = v.choices.index(precision)
            touched.append(v.name)
    plan = space.decode(space.repair(x))
    if arch == "gpt2" and precision != "float32":  # every Conv1D takes it (masked before: not an nn.Linear)
        assert {n for n in touched if n.endswith(("c_attn", "c_proj", "c_fc"))} == {
            n for n, m in model.named_modules() if is_conv1d(m)}
    if arch == "opt" and precision in ("bfloat16", "float16"):
        assert "model.decoder.embed_positions" in touched  # the learned positions are cast too
    with torch.no_grad():
        reference = model(input_ids=IDS).logits[0, -1]
    with apply_plan(model, plan, profile, space=space, inputs=inputs) as session:
        logits = session.forward(input_ids=IDS).logits[0, -1].float()
        out = session.generate(IDS, max_new_tokens=3)
        assert out.shape == (1, IDS.shape[1] + 3)
        assert session.stats().peak_bytes == plan_memory(space, plan)
        if precision in ("int8", "int4") and arch == "gpt2":
            assert any(isinstance(m, QuantizedLinear) for m in session.model.modules())
    error = float((logits - reference).norm() / reference.norm())
    assert error <= TOLERANCE[precision], error


def test_sensitivity_units_include_conv1d() -> None:
    model = _gpt2()
    units = precision_units(model)
    conv1d = [n for n, m in model.named_modules() if is_conv1d(m)]
    assert conv1d and set(conv1d) <= set(units)
    with torch.no_grad():
        reference = model(input_ids=IDS).logits
        with swapped(model, {n: "int8" for n in conv1d}):
            changed = model(input_ids=IDS).logits
        back = model(input_ids=IDS).logits
    assert not torch.equal(changed, reference) and torch.equal(back, reference)
    assert float((changed - reference).norm() / reference.norm()) < 0.05


def test_profiled_variants_of_conv1d_and_a_read_weight() -> None:
    """The profiled table times a quantized Conv1D as the Linear it deploys as, and its float wrapper exposes the
    weight (ViT reads ``projection.weight.dtype`` to cast its pixels)."""
    from autosurgeon.cost.profiled_table import variant

    torch.manual_seed(0)
    conv = Conv1D(24, 16)
    q = variant(conv, "int8", 128, "auto")
    assert isinstance(q, QuantizedLinear) and (q.out_features, q.in_features) == (24, 16)
    x = torch.randn(2, 16)
    assert float((q(x) - conv(x)).norm() / conv(x).norm()) < 0.05
    patch = torch.nn.Conv2d(3, 8, 4, stride=4)
    assert variant(patch, "bfloat16", 128, "auto").weight.dtype == torch.bfloat16
