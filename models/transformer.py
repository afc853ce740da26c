"""Pre-norm decoder-only transformer (RMSNorm, RoPE, SwiGLU, no biases, untied
embeddings) whose blocks hold either a dense MLP or an MoE layer.

Shapes: B batch, T sequence, d model width, V vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lrscale.parametrization import Parametrization, Role, role_param

from .attention import Attention
from .config import ModelConfig
from .layers import Linear, RMSNorm, SwiGLU
from .moe import MoE


@dataclass
class ModelOutput:
    logits: torch.Tensor          # (B, T, V)
    loss: torch.Tensor | None     # language-model cross-entropy, fp32
    aux_loss: torch.Tensor        # weighted MoE auxiliary losses (0 for dense)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, param: Parametrization, layer: int, attn_backend: str, expert_backend: str):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg, param, attn_backend)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        if cfg.layer_is_moe(layer):
            self.moe: MoE | None = MoE(cfg, param, expert_backend)
            self.mlp: SwiGLU | None = None
        else:
            self.moe, self.mlp = None, SwiGLU(cfg.d_model, cfg.ffn_width)
        # Residual-branch multiplier from the parametrization (depth rules; 1 by default).
        self.branch_mult = param.residual_mult

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x + self.branch_mult * self.attn(self.attn_norm(x))
        h = self.mlp_norm(x)
        if self.moe is not None:
            y, aux = self.moe(h)
        else:
            y, aux = self.mlp(h), x.new_zeros((), dtype=torch.float32)
        return x + self.branch_mult * y, aux


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, param: Parametrization, attn_backend: str = "eager",
                 expert_backend: str = "loop"):
        super().__init__()
        self.cfg = cfg
        self.embed = role_param(torch.empty(cfg.vocab_size, cfg.d_model), Role.EMBEDDING)
        self.blocks = nn.ModuleList(
            Block(cfg, param, i, attn_backend, expert_backend) for i in range(cfg.n_layers)
        )
        self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.unembed = Linear(cfg.d_model, cfg.vocab_size, Role.UNEMBEDDING)
        self.input_mult, self.output_mult = param.input_mult, param.output_mult

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> ModelOutput:
        x = F.embedding(idx, self.embed) * self.input_mult  # (B, T, d)
        aux = x.new_zeros((), dtype=torch.float32)
        for block in self.blocks:
            x, a = block(x)
            aux = aux + a
        logits = self.unembed(self.final_norm(x)) * self.output_mult  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1))
        return ModelOutput(logits, loss, aux)

    def moe_layers(self) -> list[MoE]:
        return [b.moe for b in self.blocks if b.moe is not None]

    def update_router_biases(self) -> None:
        for moe in self.moe_layers():
            moe.update_router_bias()
