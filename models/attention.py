"""Causal self-attention with pluggable kernels.

`eager` is the plain PyTorch reference; the others must match it (tests/test_model.py).
The softmax scale always comes from the parametrization.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from parametrization import Parametrization, Role

from .config import ModelConfig
from .layers import Linear, Rotary


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Reference: softmax(q k^T * scale + causal mask) v, in fp32. q: (B, nh, T, hs); k, v: (B, nkv, T, hs)."""
    rep = q.shape[1] // k.shape[1]
    if rep > 1:  # grouped-query attention: each kv head serves `rep` query heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    T = q.shape[-2]
    att = (q.float() @ k.float().transpose(-2, -1)) * scale  # (B, nh, T, T)
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    return (att @ v.float()).to(q.dtype)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """PyTorch scaled_dot_product_attention; it picks flash / cuDNN / efficient / math itself."""
    return F.scaled_dot_product_attention(
        q, k, v, is_causal=True, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )


ATTENTION_BACKENDS: dict[str, Callable[..., torch.Tensor]] = {
    "eager": eager_attention,
    "sdpa": sdpa_attention,
}


def get_attention_backend(name: str) -> Callable[..., torch.Tensor]:
    try:
        return ATTENTION_BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"attention backend '{name}' is unknown; valid: {', '.join(ATTENTION_BACKENDS)}"
        ) from None


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, param: Parametrization, backend: str):
        super().__init__()
        self.n_heads, self.n_kv, self.d_head = cfg.n_heads, cfg.kv_heads, cfg.d_head
        self.wqkv = Linear(cfg.d_model, (self.n_heads + 2 * self.n_kv) * self.d_head, Role.ATTN_QKV)
        self.wo = Linear(self.n_heads * self.d_head, cfg.d_model, Role.ATTN_OUT)
        self.rotary = Rotary(self.d_head, cfg.seq_len, cfg.rope_theta)
        self.scale = param.attn_scale(self.d_head)
        self.backend_name = backend
        self.attend = get_attention_backend(backend)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Projected, rotated q (B, nh, T, hs) and k, v (B, nkv, T, hs); probes reuse this."""
        B, T, _ = x.shape
        qkv = self.wqkv(x).view(B, T, self.n_heads + 2 * self.n_kv, self.d_head).transpose(1, 2)
        q, k, v = qkv.split([self.n_heads, self.n_kv, self.n_kv], dim=1)
        return self.rotary(q), self.rotary(k), v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x)
        y = self.attend(q, k, v, self.scale)  # (B, nh, T, hs)
        return self.wo(y.transpose(1, 2).reshape(B, T, self.n_heads * self.d_head))
