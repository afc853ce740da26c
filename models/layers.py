"""Small building blocks. Every parameter is created with its role.

RMSNorm, the SwiGLU gate and the rotary head split each have a plain-autograd reference and a
hand-written autograd Function with fewer passes over memory (bit-exact or within 1e-6 of the
reference, tests/test_model.py), which is what runs eagerly. Under torch.compile the reference
runs instead: inductor fuses its elementwise ops itself, and Dynamo cannot trace the Functions'
writes into views of one buffer.
"""
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
        if torch.compiler.is_compiling():
            return rms_norm_reference(x, self.weight, self.eps)
        return _RMSNorm.apply(x, self.weight, self.eps)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The reference: x / rms(x) * weight in fp32, differentiated by autograd."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * weight.float()).to(x.dtype)


class _RMSNorm(torch.autograd.Function):
    """rms_norm_reference with its forward operations (identical output) and the closed-form
    backward, dx = r (g w - x_hat mean(g w x_hat)), dw = sum(g x_hat) with x_hat = x r,
    r = 1/rms(x): a third fewer passes over (..., d) than autograd's graph of six ops, and
    only x and r kept for backward (tests/test_model.py checks both against the reference)."""

    @staticmethod
    def forward(ctx, x, weight, eps: float):
        xf = x.float()
        r = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)  # (..., 1)
        ctx.save_for_backward(x, r, weight)
        return (xf * r * weight.float()).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        x, r, weight = ctx.saved_tensors
        x_hat = x.float() * r
        g = g.float()
        gw = g * weight.float()
        d_weight = (g * x_hat).reshape(-1, x.shape[-1]).sum(0)
        dot = (gw * x_hat).mean(-1, keepdim=True)
        dx = torch.addcmul(gw, x_hat, dot, value=-1).mul_(r)
        return dx.to(x.dtype), d_weight.to(weight.dtype), None


class SwiGLU(nn.Module):
    """Gated MLP (Shazeer 2020): w_out(silu(x W_gate) * x W_up); gate and up fused in w_in."""

    def __init__(self, d_model: int, d_hidden: int, in_role: Role = Role.MLP_IN, out_role: Role = Role.MLP_OUT):
        super().__init__()
        self.w_in = Linear(d_model, 2 * d_hidden, in_role)
        self.w_out = Linear(d_hidden, d_model, out_role)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_out(silu_gate(self.w_in(x)))


def swiglu_reference(h: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of h = [gate | up] (..., 2 d_hidden): the plain-autograd reference."""
    gate, up = h.chunk(2, dim=-1)
    return F.silu(gate) * up


def silu_gate(h: torch.Tensor) -> torch.Tensor:
    """swiglu_reference(h), bit for bit, with one pass less in backward (see _SiluGate)."""
    if torch.compiler.is_compiling():
        return swiglu_reference(h)
    return _SiluGate.apply(h)


class _SiluGate(torch.autograd.Function):
    """swiglu_reference with the same operations forward and backward (bit for bit,
    tests/test_model.py), except that backward writes the gate and up gradients straight
    into the halves of one buffer instead of concatenating them: one pass over (..., 2 d_hidden) less."""

    @staticmethod
    def forward(ctx, h):
        gate, up = h.chunk(2, dim=-1)
        s = F.silu(gate)
        ctx.save_for_backward(h, s)
        return s * up

    @staticmethod
    def backward(ctx, da):
        h, s = ctx.saved_tensors
        gate, up = h.chunk(2, dim=-1)
        dh = torch.empty(h.shape, dtype=h.dtype, device=h.device)
        d_gate, d_up = dh.chunk(2, dim=-1)
        torch.mul(da, s, out=d_up)
        torch.ops.aten.silu_backward.grad_input(da * up, gate, grad_input=d_gate)
        return dh


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
        """Reference: x (B, nh, T, hs) rotated."""
        T = x.shape[-2]
        cos, sin = self.cos[:T].to(x.dtype), self.sin[:T].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)

    def split_heads(self, qkv: torch.Tensor, n_q: int, n_kv: int) -> tuple[torch.Tensor, ...]:
        """qkv (B, T, n_q + 2 n_kv, hs), the fused projection's output, to rotated q (B, n_q, T, hs),
        rotated k and v (B, n_kv, T, hs): bit for bit the reference (split, then forward on q and
        k; tests/test_model.py), with q and k rotated in one pass and their gradients written
        straight into the projection's gradient instead of concatenated and copied after."""
        if torch.compiler.is_compiling():
            q, k, v = qkv.transpose(1, 2).split([n_q, n_kv, n_kv], dim=1)
            return self(q), self(k), v
        T = qkv.shape[1]
        cos, sin = self.cos[:T].to(qkv.dtype), self.sin[:T].to(qkv.dtype)
        return _SplitRotate.apply(qkv, cos, sin, n_q, n_kv)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor, inverse: bool) -> None:
    """out = x rotated by the angles (cos, sin), or by their negatives when inverse (the
    rotation's transpose: its backward). Each half is a product minus/plus a product, rounded
    as the reference's expression is, so results are identical. x, out (..., T, hs)."""
    x1, x2 = x.chunk(2, dim=-1)
    o1, o2 = out.chunk(2, dim=-1)
    torch.mul(x1, cos, out=o1)
    torch.mul(x2, cos, out=o2)
    if inverse:
        o1.add_(x2 * sin)  # x1 * cos + x2 * sin
        o2.sub_(x1 * sin)  # x2 * cos - x1 * sin
    else:
        o1.sub_(x2 * sin)  # x1 * cos - x2 * sin
        o2.add_(x1 * sin)  # x1 * sin + x2 * cos


class _SplitRotate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, cos, sin, n_q: int, n_kv: int):
        B, T, _, hs = qkv.shape
        n_qk = n_q + n_kv
        qk = torch.empty(B, n_qk, T, hs, dtype=qkv.dtype, device=qkv.device)
        _rotate(qkv[:, :, :n_qk].transpose(1, 2), cos, sin, qk, inverse=False)
        ctx.save_for_backward(cos, sin)
        ctx.shape, ctx.dtype, ctx.n_q, ctx.n_qk = qkv.shape, qkv.dtype, n_q, n_qk
        q, k = qk.split([n_q, n_kv], dim=1)
        return q, k, qkv[:, :, n_qk:].transpose(1, 2)  # v: a view, as in the reference

    @staticmethod
    def backward(ctx, dq, dk, dv):
        cos, sin = ctx.saved_tensors
        B, T, n, hs = ctx.shape
        n_q, n_qk = ctx.n_q, ctx.n_qk
        dqkv = torch.empty(B, T, n, hs, dtype=ctx.dtype, device=cos.device)  # (B, T, n_q + 2 n_kv, hs)
        heads = dqkv.transpose(1, 2)                                           # (B, n, T, hs) view of it
        for g, part in ((dq, heads[:, :n_q]), (dk, heads[:, n_q:n_qk])):
            if g is None:
                part.zero_()
            else:
                _rotate(g, cos, sin, part, inverse=True)
        if dv is None:
            heads[:, n_qk:].zero_()
        else:
            heads[:, n_qk:].copy_(dv)
        return dqkv, None, None, None, None
