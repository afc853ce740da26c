"""Pre-norm decoder-only transformer (RMSNorm, RoPE, SwiGLU, no biases, untied
embeddings) whose blocks hold either a dense MLP or an MoE layer.

Shapes: B batch, T sequence, d model width, V vocabulary.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lrscale.parametrization import Parametrization, Role, role_param

from .attention import Attention
from .config import ModelConfig
from .layers import Linear, RMSNorm, SwiGLU
from .loss import get_loss_backend
from .moe import MoE


class ModelOutput:
    """loss: language-model cross-entropy, fp32 (None without targets); aux_loss: weighted
    MoE auxiliary losses (0 for dense); logits (B, T, V); moe_stats: each MoE layer's routing
    statistics (models/moe.py), which the training step records (Transformer.record_load).

    With targets, the chunked loss never makes the full logits; `logits` then computes them
    on first read from the final hidden state, under the forward's autocast and grad mode,
    so they equal what the forward would have made. Read them before the weights change:
    a later read raises instead of returning logits of other weights.
    """

    def __init__(self, loss: torch.Tensor | None, aux_loss: torch.Tensor, logits: torch.Tensor | None = None,
                 make_logits=None, weight: torch.Tensor | None = None, moe_stats: list | None = None):
        self.loss, self.aux_loss = loss, aux_loss
        self.moe_stats = moe_stats or []
        self._logits, self._make_logits = logits, make_logits
        self._weight, self._version = weight, weight._version if weight is not None else None

    @property
    def logits(self) -> torch.Tensor:
        if self._logits is None:
            if self._weight._version != self._version:
                raise RuntimeError("ModelOutput.logits read after the unembedding weight changed (an optimizer "
                                   "step?): read them before, or call the model without targets for logits")
            self._logits = self._make_logits()
        return self._logits


def _scaled(x: torch.Tensor, mult: float) -> torch.Tensor:
    """x * mult, without the extra pass (and its backward) when mult is exactly 1 (x * 1.0 == x)."""
    return x if mult == 1.0 else x * mult


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

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict | None]:
        """x (B, T, d) -> (x after the block, weighted MoE auxiliary loss, MoE routing statistics
        or None). Pure: no module state changes, so a compiled, checkpointed block is one graph."""
        x = x + _scaled(self.attn(self.attn_norm(x)), self.branch_mult)
        h = self.mlp_norm(x)
        if self.moe is not None:
            y, aux, stats = self.moe(h)
        else:
            y, aux, stats = self.mlp(h), x.new_zeros((), dtype=torch.float32), None
        return x + _scaled(y, self.branch_mult), aux, stats


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, param: Parametrization, attn_backend: str = "eager",
                 expert_backend: str = "loop", loss_backend: str = "chunked"):
        super().__init__()
        self.cfg = cfg
        self.embed = role_param(torch.empty(cfg.vocab_size, cfg.d_model), Role.EMBEDDING)
        self.blocks = nn.ModuleList(
            Block(cfg, param, i, attn_backend, expert_backend) for i in range(cfg.n_layers)
        )
        self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.unembed = Linear(cfg.d_model, cfg.vocab_size, Role.UNEMBEDDING)
        self.input_mult, self.output_mult = param.input_mult, param.output_mult
        # The loss kernel (models/loss.py): "chunked" runs everywhere and equals the
        # "reference" (tests/test_model.py), so it is the default, unlike attention/experts.
        self.loss_backend = loss_backend
        self.lm_loss = get_loss_backend(loss_backend)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) of the final normalised hidden state h (B, T, d)."""
        return _scaled(self.unembed(h), self.output_mult)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> ModelOutput:
        x = _scaled(F.embedding(idx, self.embed), self.input_mult)  # (B, T, d)
        aux = x.new_zeros((), dtype=torch.float32)
        stats = []
        for block in self.blocks:
            x, a, s = block(x)
            aux = aux + a
            if s is not None:
                stats.append(s)
        h = self.final_norm(x)
        if targets is None:
            return ModelOutput(None, aux, logits=self.logits(h), moe_stats=stats)
        d = h.shape[-1]
        loss = self.lm_loss(h.reshape(-1, d), self.unembed.weight, targets.reshape(-1), self.output_mult)
        return ModelOutput(loss, aux, make_logits=_replay(self.logits, h), weight=self.unembed.weight, moe_stats=stats)

    def moe_layers(self) -> list[MoE]:
        return [b.moe for b in self.blocks if b.moe is not None]

    def record_load(self, moe_stats: list[dict]) -> None:
        """A training forward's expert assignments, towards the next bias update (aux_free balancing)."""
        for moe, stats in zip(self.moe_layers(), moe_stats):
            moe.record_load(stats)

    def update_router_biases(self) -> None:
        for moe in self.moe_layers():
            moe.update_router_bias()


def _replay(fn, *args):
    """fn(*args) later, under the autocast and grad mode in force now."""
    device_type = args[0].device.type
    amp = torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    grad = torch.is_grad_enabled()

    def call():
        with torch.autocast(device_type, dtype=amp[1], enabled=amp[0]), torch.set_grad_enabled(grad):
            return fn(*args)
    return call
