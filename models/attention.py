"""Causal self-attention with pluggable kernels.

`eager` is the plain PyTorch reference; every other backend must match it forward and
backward (tests/test_model.py, tests/test_backends.py). The softmax scale always comes
from the parametrization. Which backends a device and dtype can run is decided outside
this file, before building (training/hardware.py: check_kernels).

    eager       fp32 softmax(q k^T * scale) v with an explicit causal mask (reference)
    sdpa        F.scaled_dot_product_attention, PyTorch picks the kernel
    sdpa_flash  SDPA pinned to FlashAttention-2 (CUDA, fp16/bf16, head size <= 256)
    sdpa_cudnn  SDPA pinned to cuDNN attention (CUDA sm80+, fp16/bf16)
    flash_attn  the flash-attn package's flash_attn_func, layout (B, T, H, D)
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from lrscale.parametrization import Parametrization, Role

from .backends import require_package
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


def sdpa_flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """SDPA pinned to FlashAttention-2: an error, never a silent fallback to the math kernel."""
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return sdpa_attention(q, k, v, scale)


def sdpa_cudnn_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """SDPA pinned to cuDNN's fused attention (supports grouped-query heads natively)."""
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        return sdpa_attention(q, k, v, scale)


def flash_attn_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """The flash-attn package (Dao et al., arXiv 2307.08691); it takes (B, T, H, D) and
    handles grouped-query heads itself. Importability is checked when the model is built."""
    from flash_attn import flash_attn_func

    y = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                        softmax_scale=scale, causal=True)  # (B, T, nh, hs)
    return y.transpose(1, 2)  # (B, nh, T, hs): a view; the caller's reshape back is free


ATTENTION_BACKENDS: dict[str, Callable[..., torch.Tensor]] = {
    "eager": eager_attention,
    "sdpa": sdpa_attention,
    "sdpa_flash": sdpa_flash_attention,
    "sdpa_cudnn": sdpa_cudnn_attention,
    "flash_attn": flash_attn_attention,
}
# Backends whose kernels live in an optional package: (module, how to install it).
_PACKAGES = {"flash_attn": ("flash_attn", "pip install flash-attn --no-build-isolation")}


def get_attention_backend(name: str) -> Callable[..., torch.Tensor]:
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"attention backend '{name}' is unknown; valid: {', '.join(ATTENTION_BACKENDS)}")
    if name in _PACKAGES:
        module, install = _PACKAGES[name]
        require_package("attention", name, module, install,
                        "hardware.attention_backend=sdpa_flash runs the same algorithm from PyTorch")
    return ATTENTION_BACKENDS[name]


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
        qkv = self.wqkv(x).view(B, T, self.n_heads + 2 * self.n_kv, self.d_head)
        return self.rotary.split_heads(qkv, self.n_heads, self.n_kv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x)
        y = self.attend(q, k, v, self.scale)  # (B, nh, T, hs)
        return self.wo(y.transpose(1, 2).reshape(B, T, self.n_heads * self.d_head))
