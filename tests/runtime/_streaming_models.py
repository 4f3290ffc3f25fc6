"""A tiny random Llama shared by the runtime tests (hidden 64, vocab 256: fast, still the real HF code)."""
from __future__ import annotations

import torch
from torch import nn


def tiny_llama(*, layers: int = 3, seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=256, max_position_embeddings=256, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).to(dtype).eval()


def greedy(model: nn.Module, ids: torch.Tensor, n: int) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=n, do_sample=False, attention_mask=torch.ones_like(ids),
                              pad_token_id=0)


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
