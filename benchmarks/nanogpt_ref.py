"""A small nanoGPT-style decoder, the plain-PyTorch peer of the CPU benchmark: what a
careful engineer writes in one file with no project machinery. Same shapes and parameter
count as models.Transformer (pre-norm RMSNorm with gains, RoPE, SwiGLU, fused qkv and
gate/up projections, untied embedding, no biases), SDPA causal attention, F.cross_entropy.
Shapes: B batch, T sequence, C width, nh heads, hs head size, V vocabulary.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, C: int, nh: int, d_ff: int, T: int, theta: float, eps: float):
        super().__init__()
        self.nh, self.eps = nh, eps
        self.norm1, self.norm2 = nn.Parameter(torch.ones(C)), nn.Parameter(torch.ones(C))
        self.qkv, self.proj = nn.Linear(C, 3 * C, bias=False), nn.Linear(C, C, bias=False)
        self.fc, self.out = nn.Linear(C, 2 * d_ff, bias=False), nn.Linear(d_ff, C, bias=False)
        hs = C // nh
        angles = torch.outer(torch.arange(T).double(), theta ** (-torch.arange(0, hs, 2).double() / hs))
        self.register_buffer("cos", angles.cos().float(), persistent=False)  # (T, hs/2)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def rope(self, x):  # x: (B, nh, T, hs), rotate the two halves
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * self.cos - x2 * self.sin, x1 * self.sin + x2 * self.cos), dim=-1)

    def forward(self, x):  # (B, T, C)
        B, T, C = x.shape
        q, k, v = self.qkv(F.rms_norm(x, (C,), self.norm1, self.eps)).view(B, T, 3, self.nh, -1).unbind(2)
        q, k, v = self.rope(q.transpose(1, 2)), self.rope(k.transpose(1, 2)), v.transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        gate, up = self.fc(F.rms_norm(x, (C,), self.norm2, self.eps)).chunk(2, dim=-1)
        return x + self.out(F.silu(gate) * up)


class NanoGPT(nn.Module):
    def __init__(self, vocab: int, C: int, n_layers: int, nh: int, d_ff: int, T: int,
                 theta: float = 10000.0, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.wte = nn.Embedding(vocab, C)
        self.blocks = nn.ModuleList(Block(C, nh, d_ff, T, theta, eps) for _ in range(n_layers))
        self.norm_f = nn.Parameter(torch.ones(C))
        self.lm_head = nn.Linear(C, vocab, bias=False)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx, targets=None):  # idx: (B, T) -> logits (B, T, V), loss
        x = self.wte(idx)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(F.rms_norm(x, (x.shape[-1],), self.norm_f, self.eps))
        loss = None if targets is None else F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))
        return logits, loss
