"""apply_plan on a GPU: resident and streamed (from host and disk) blocks, quantized layers with CUDA kernels."""
from __future__ import annotations

import pytest
import torch
from _transform_models import rel_err, tiny_llama

from autosurgeon.hardware.profile import ComputeUnit, CpuInfo, GpuInfo, HardwareProfile
from autosurgeon.plan import Plan, Rule
from autosurgeon.transforms import apply_plan
from runtime.kernels import QuantizedLinear

pytestmark = pytest.mark.gpu
# 4 KV heads: torch 2.11's FLOP counter (used by the analysis) rejects GQA's shapes in SDPA; torch 2.13 does not.
IDS = torch.randint(0, 256, (1, 10), generator=torch.Generator().manual_seed(4))


def gpu_profile() -> HardwareProfile:
    """A host + one Hopper GPU on paper (the tests need the runtime's real CUDA kernels, not measured rates)."""
    return HardwareProfile(
        name="gpu-test", measured=False,
        cpu=CpuInfo(model="test", arch="x86_64", isa=("avx2",), physical_cores=2, logical_cores=2, memory_bytes=2**36),
        gpus=(GpuInfo(index=0, name="test-gpu", memory_bytes=2**36, compute_capability="9.0"),),
        units=(ComputeUnit(name="cuda:0", kind="gpu", memory_bytes=2**36, memory_bandwidth=3e12,
                           gemm_flops={"float32": 5e13, "bfloat16": 8e14}),
               ComputeUnit(name="cpu", kind="cpu", memory_bytes=2**36, memory_bandwidth=1e11,
                           gemm_flops={"float32": 1e12})))


def test_all_float_streamed_plan_matches_the_model_on_the_gpu(tmp_path) -> None:
    model = tiny_llama(layers=3, kv_heads=4)
    ref_model = tiny_llama(layers=3, kv_heads=4).to("cuda")
    ids = IDS.to("cuda")
    with torch.no_grad():
        expected = ref_model.generate(ids, max_new_tokens=6, do_sample=False, attention_mask=torch.ones_like(ids),
                                      pad_token_id=0).cpu()
    plan = Plan(rules=(Rule("model.layers.1", {"placement": "gpu<-cpu"}),
                       Rule("model.layers.2", {"placement": "gpu<-disk"})))
    with apply_plan(model, plan, gpu_profile(), offload_dir=str(tmp_path)) as session:
        assert [(b.device, b.home) for b in session.spec.blocks] == [("cuda:0", None), ("cuda:0", "cpu"),
                                                                     ("cuda:0", "disk")]
        out = session.generate(IDS, max_new_tokens=6).cpu()
        assert session.stats().fetches > 0
    assert torch.equal(out, expected)


@pytest.mark.parametrize("kernel", ["auto", "cuda-triton"])
def test_mixed_plan_with_cuda_kernels(kernel: str) -> None:
    model = tiny_llama(layers=2, kv_heads=4)
    with torch.no_grad():
        ref = model(input_ids=IDS).logits
    plan = Plan(default={"precision": "int8", "kernel": kernel}, rules=(
        Rule("model.embed_tokens", {"precision": "bfloat16"}),
        Rule("re:.*self_attn", {"fusion": "fuse"}),
        Rule("re:.*mlp\\.down_proj", {"precision": "int4", "group_size": 32}),
        Rule("model.layers.1", {"placement": "gpu<-cpu"})))
    with apply_plan(model, plan, gpu_profile()) as session:
        qkv = session.model.model.layers[0].self_attn.qkv_proj.linear
        assert isinstance(qkv, QuantizedLinear) and qkv.kernel == (None if kernel == "auto" else kernel)
        out = session.forward(input_ids=IDS).logits
        assert out.device.type == "cuda" and out.dtype == torch.float32
        assert rel_err(out.cpu(), ref) < 0.1
