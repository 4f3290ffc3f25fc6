"""Decode attention over a static KV cache, as the captured step runs it.

Hugging Face's eager decode (batch 1, no padding) calls SDPA on exactly the filled positions with no mask. A
captured step cannot slice by a position that moves on the device, so by default it attends over the whole static
cache with a -inf mask on the empty positions (``sdpa``: PyTorch then picks a kernel that takes a mask — cuDNN's
on an H200 with torch 2.11). ``flash`` instead calls flash attention's variable-length entry with the filled
length read on the device (``seqused_k``): no mask, and only the filled positions are read. It is taken only
where it is bit for bit the unmasked SDPA call on the filled positions for random inputs of the model's shapes
(:meth:`FlashDecodeAttention.verify`), and at batch 1 (the cache layout is one sequence's rows).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _expand(kv: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, kv_heads, L, D) -> (B, heads, L, D): each KV head repeated for its query heads (as ``repeat_kv``)."""
    b, kv_heads, length, dim = kv.shape
    if kv_heads == heads:
        return kv
    rep = heads // kv_heads
    return kv[:, :, None].expand(b, kv_heads, rep, length, dim).reshape(b, heads, length, dim)


def masked_sdpa(q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, mask: torch.Tensor, scale: float,
                heads: int) -> torch.Tensor:
    """The whole static cache under a -inf mask on the empty positions (works on any device)."""
    return F.scaled_dot_product_attention(q, _expand(kc, heads), _expand(vc, heads), attn_mask=mask, scale=scale)


class FlashDecodeAttention:
    """Flash attention over the filled part of a batch-1 static cache, its length on the device.

    Call :meth:`set_length` once per step (from the position tensor), then the instance per layer.
    """

    def __init__(self, device: torch.device, *, length: int, scale: float) -> None:
        self.scale = scale
        self.length = length
        self.used = torch.ones(1, dtype=torch.int32, device=device)
        self.cu_q = torch.tensor([0, 1], dtype=torch.int32, device=device)
        self.cu_k = torch.tensor([0, length], dtype=torch.int32, device=device)

    def set_length(self, pos: torch.Tensor) -> None:
        """The filled length is ``pos + 1`` (the step writes position ``pos`` before attending)."""
        self.used.copy_(pos + 1)

    def __call__(self, q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor) -> torch.Tensor:
        """q (1, heads, 1, D), caches (1, kv_heads, L, D) -> (1, heads, 1, D)."""
        out = torch.ops.aten._flash_attention_forward(
            q[0].transpose(0, 1), kc[0].transpose(0, 1), vc[0].transpose(0, 1), self.cu_q, self.cu_k, 1,
            self.length, 0.0, False, False, scale=self.scale, seqused_k=self.used)[0]
        return out.transpose(0, 1)[None]

    @staticmethod
    def verify(device: torch.device, dtype: torch.dtype, *, heads: int, kv_heads: int, head_dim: int,
               scale: float, length: int = 128, seed: int = 0) -> tuple[bool, str]:
        """Whether flash equals the unmasked SDPA call on the filled positions bit for bit here, and a note."""
        if device.type != "cuda":
            return False, "flash attention runs on CUDA only"
        gen = torch.Generator(device=device).manual_seed(seed)
        att = FlashDecodeAttention(device, length=length, scale=scale)
        try:
            for filled in (1, length // 2 + 3, length):
                q = torch.randn(1, heads, 1, head_dim, generator=gen, device=device).to(dtype)
                kc, vc = (torch.randn(1, kv_heads, length, head_dim, generator=gen, device=device).to(dtype)
                          for _ in range(2))
                att.set_length(torch.tensor([filled - 1], device=device))
                ref = F.scaled_dot_product_attention(q, _expand(kc[:, :, :filled], heads),
                                                     _expand(vc[:, :, :filled], heads), scale=scale)
                got = att(q, kc, vc)
                if not torch.equal(got, ref):
                    diff = float((got.float() - ref.float()).abs().max())
                    return False, f"flash differs from the unmasked SDPA call at {filled} positions (max |diff| {diff:.3g})"
        except (RuntimeError, TypeError, AttributeError) as exc:
            return False, f"flash attention not usable here: {type(exc).__name__}: {str(exc)[:200]}"
        return True, "flash (seqused_k), bit for bit the unmasked SDPA call on the filled positions"


__all__ = ["FlashDecodeAttention", "masked_sdpa"]
