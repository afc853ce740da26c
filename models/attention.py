"""Causal self-attention with pluggable kernels.

`eager` is the plain PyTorch reference; every other backend must match it forward and
backward (tests/test_model.py, tests/test_backends.py). The softmax scale always comes
from the parametrization. Each kernel's record (`ATTENTION_KERNELS`, models/kernels.py)
says what it runs on; training/hardware.py checks that against the device before building.

    eager       fp32 softmax(q k^T * scale) v with an explicit causal mask (reference)
    sdpa        F.scaled_dot_product_attention, PyTorch picks the kernel
    sdpa_flash  SDPA pinned to FlashAttention-2 (CUDA, fp16/bf16, head size <= 256)
    sdpa_cudnn  SDPA pinned to cuDNN attention (CUDA sm80+, fp16/bf16)
    flash_attn  the flash-attn package's flash_attn_func, layout (B, T, H, D)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from lrscale.parametrization import Parametrization, Role

from .kernels import Kernel, lookup
from .config import ModelConfig
from .layers import Linear, Rotary


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Reference: softmax(q k^T * scale + causal mask) v, in fp32 (also inside a bf16 autocast
    region, which would otherwise run both matmuls in bf16). q: (B, nh, T, hs); k, v: (B, nkv, T, hs)."""
    rep = q.shape[1] // k.shape[1]
    if rep > 1:  # grouped-query attention: each kv head serves `rep` query heads
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    T = q.shape[-2]
    with torch.autocast(device_type=q.device.type, enabled=False):
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


# Runtime checks that depend on the torch build (PyTorch's SDPA dispatch rules,
# aten/src/ATen/native/transformers/cuda/sdp_utils.cpp).

def _flash_built(device: torch.device, dtype: torch.dtype) -> str | None:
    if not torch.backends.cuda.is_flash_attention_available():
        return f"needs FlashAttention kernels, which this torch build ({torch.__version__}) lacks"
    return None


def _cudnn_usable(device: torch.device, dtype: torch.dtype) -> str | None:
    if not torch.backends.cudnn.is_available():
        return "needs cuDNN, which this torch build lacks"
    if torch.are_deterministic_algorithms_enabled():
        return "is not deterministic, and torch.use_deterministic_algorithms is on"
    return None


def _cudnn_head_size(d: int) -> bool:
    """Multiples of 8 up to 128; 256 too on sm90/sm100 with cuDNN > 9.22 (its backward's rule)."""
    if d % 8:
        return False
    if d <= 128:
        return True
    if d == 256 and torch.cuda.is_available():
        cap, version = torch.cuda.get_device_capability(), torch.backends.cudnn.version() or 0
        return (cap == (9, 0) or cap[0] == 10) and version > 92200
    return False


_HALF = (torch.float16, torch.bfloat16)
ATTENTION_KERNELS: dict[str, Kernel] = {k.name: k for k in (
    Kernel("eager", eager_attention, "attention", "fp32 softmax with an explicit causal mask (the reference)"),
    Kernel("sdpa", sdpa_attention, "attention", "F.scaled_dot_product_attention; PyTorch picks the kernel "
           "(its math kernel where no fused one fits)"),
    Kernel("sdpa_flash", sdpa_flash_attention, "attention", "SDPA pinned to FlashAttention-2", devices=("cuda",),
           cuda_dtypes=_HALF, min_capability=(8, 0), head_sizes=lambda d: d <= 256 and d % 8 == 0,
           head_rule="<= 256 and a multiple of 8", runtime=_flash_built),
    Kernel("sdpa_cudnn", sdpa_cudnn_attention, "attention", "SDPA pinned to cuDNN attention", devices=("cuda",),
           cuda_dtypes=_HALF, min_capability=(8, 0), head_sizes=_cudnn_head_size,
           head_rule="that is a multiple of 8 and <= 128 (256 on sm90/sm100 with cuDNN > 9.22)",
           runtime=_cudnn_usable),
    Kernel("flash_attn", flash_attn_attention, "attention", "the flash-attn package's flash_attn_func",
           package="flash_attn", install="pip install flash-attn --no-build-isolation",
           alternatives="hardware.attention_backend=sdpa_flash runs the same algorithm from PyTorch",
           devices=("cuda",), cuda_dtypes=_HALF, min_capability=(8, 0),
           head_sizes=lambda d: d <= 256 and d % 8 == 0, head_rule="<= 256 and a multiple of 8"),
)}


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, param: Parametrization, backend: str):
        super().__init__()
        self.n_heads, self.n_kv, self.d_head = cfg.n_heads, cfg.kv_heads, cfg.d_head
        self.wqkv = Linear(cfg.d_model, (self.n_heads + 2 * self.n_kv) * self.d_head, Role.ATTN_QKV)
        self.wo = Linear(self.n_heads * self.d_head, cfg.d_model, Role.ATTN_OUT)
        self.rotary = Rotary(self.d_head, cfg.seq_len, cfg.rope_theta)
        self.scale = param.attn_scale(self.d_head)
        self.attend = lookup(ATTENTION_KERNELS, "attention", backend).fn

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
