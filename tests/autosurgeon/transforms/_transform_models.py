"""Tiny models and a CPU profile shared by the transform tests (random weights, fixed seeds, eval mode)."""
from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from autosurgeon.hardware.profile import ComputeUnit, CpuInfo, HardwareProfile
from autosurgeon.models.digits import DigitsCNN

LM_INPUTS = {"input_ids": torch.zeros(1, 8, dtype=torch.long)}
IMAGE_INPUTS = {"x": torch.zeros(1, 1, 8, 8)}


def tiny_llama(seed: int = 0, *, layers: int = 2, kv_heads: int = 2) -> LlamaForCausalLM:
    """Hidden 64, vocab 256, 4 heads (GQA with 2 KV heads by default), untied head."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def digits_cnn(seed: int = 0) -> DigitsCNN:
    """The zoo's digits CNN architecture with random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = DigitsCNN(width=8)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def cpu_profile(*, isa: tuple[str, ...] = ("avx2",)) -> HardwareProfile:
    """A CPU-only x86-64 profile on paper (16 GiB), independent of the machine the tests run on."""
    return HardwareProfile(
        name="cpu-test", measured=False,
        cpu=CpuInfo(model="test", arch="x86_64", isa=isa, physical_cores=2, logical_cores=2, memory_bytes=2**34),
        units=(ComputeUnit(name="cpu", kind="cpu", memory_bytes=2**34, memory_bandwidth=1e10,
                           gemm_flops={"float32": 1e11}),))


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """||y - ref|| / ||ref|| in float64."""
    y, ref = y.detach().double(), ref.detach().double()
    return float((y - ref).norm() / ref.norm().clamp_min(1e-30))
