"""Small building blocks. Every parameter is created with its role."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lrscale.parametrization import Role, role_param


class Linear(nn.Module):
    """Bias-free linear layer whose weight (d_out, d_in) carries a role."""

    def __init__(self, d_in: int, d_out: int, role: Role):
        super().__init__()
        self.weight = role_param(torch.empty(d_out, d_in), role)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019), computed in fp32 for stability under bf16."""

    def __init__(self, d: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = role_param(torch.ones(d), Role.NORM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


class SwiGLU(nn.Module):
    """Gated MLP (Shazeer 2020): w_out(silu(x W_gate) * x W_up); gate and up fused in w_in."""

    def __init__(self, d_model: int, d_hidden: int, in_role: Role = Role.MLP_IN, out_role: Role = Role.MLP_OUT):
        super().__init__()
        self.w_in = Linear(d_model, 2 * d_hidden, in_role)
        self.w_out = Linear(d_hidden, d_model, out_role)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w_in(x).chunk(2, dim=-1)
        return self.w_out(F.silu(gate) * up)


class Rotary(nn.Module):
    """Rotary position embedding (Su et al., arXiv 2104.09864), half-split layout."""

    def __init__(self, d_head: int, max_len: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, d_head, 2, dtype=torch.float64) / d_head))
        angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)  # (T, hs/2)
        # Non-persistent: derived from the config, so never part of a checkpoint.
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, nh, T, hs)
        T = x.shape[-2]
        cos, sin = self.cos[:T].to(x.dtype), self.sin[:T].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
