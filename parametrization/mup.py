"""Maximal-update parametrization (muP) for Adam, width rules of PAPER.md Sec. 3.

Source: Yang et al. 2022, "Tensor Programs V" (arXiv 2203.03466), Table 3, and the
`mup` library's conventions (MuReadout output multiplier, MuAdam LR scaling).
At width multiplier m = 1 every number equals the standard parametrization's.

Role by role (PAPER.md Sec. 3 table), with m = d_model / base_d_model:
  embedding            init sigma, LR eta                    (TP-V Table 3, input weights)
  attn_qkv, attn_out,  init var sigma^2/m, LR eta/m,         (TP-V Table 3, hidden weights)
  mlp_in/out,          Adam eps / m
  expert_in/out        experts are hidden matrices because d_expert scales with d_model
                       (PAPER.md Sec. 3 "Experts"); a fixed model.moe.d_expert breaks that
  router               init sigma (or 0), logits x 1/m, LR eta: output-like (d_model -> E experts, E
                       finite: TP-V Table 3 "output weights"), in the MuReadout form (effective var
                       sigma^2/m^2); PAPER.md cites muP for MoE (arXiv 2508.09752) for the same
                       treatment, whose table we could not read to confirm
  unembedding          init sigma (or 0), logits x 1/m, LR eta (mup's MuReadout)
  norm gains           1, LR eta, no decay
  attention            softmax scale sqrt(base_d_head)/d_head (TP-V Sec. 4: 1/d)
Depth rules and the weight-decay convention are applied on top (standard.py, depth.py).
"""
from __future__ import annotations

import math

from .base import ParamSpec, Role
from .config import ParametrizationConfig
from .standard import StandardParametrization


class MuParametrization(StandardParametrization):
    name = "mup"

    def __init__(self, cfg: ParametrizationConfig, n_layers: int, d_model: int, d_head: int):
        super().__init__(cfg, n_layers, d_model, d_head)
        if cfg.base_d_model <= 0:
            raise ValueError("parametrization.base_d_model must be positive for muP")
        self.m = d_model / cfg.base_d_model
        # Default: the head size at base width with the same head count (heads widen with
        # d_model); the model's own d_head would silently keep SP's 1/sqrt(d_head) at every width.
        self.base_d_head = cfg.base_d_head or cfg.base_d_model / (d_model // d_head)

    @property
    def output_mult(self) -> float:  # type: ignore[override]
        # TP-V Table 3: readout logits x 1/m (mup's MuReadout: output_mult / width_mult).
        return 1.0 / self.m

    @property
    def router_mult(self) -> float:  # type: ignore[override]
        # The router maps width -> E experts (finite): output-like, logits x 1/m
        # (muP for MoE, arXiv 2508.09752, treats width this way).
        return 1.0 / self.m

    def attn_scale(self, d_head: int) -> float:
        # TP-V Sec. 4: 1/d attention; times sqrt(base_d_head) so muP == SP at base width.
        return math.sqrt(self.base_d_head) / d_head

    def width_spec(self, role: Role, shape: tuple[int, ...]) -> ParamSpec:
        base = super().width_spec(role, shape)
        if not role.is_hidden:
            # Embedding, norms, router and unembedding: width-independent init and LR
            # (TP-V Table 3, "input weights & all biases" and "output weights" with
            # the 1/m multiplier moved into the forward pass).
            return base
        m = self.m
        return ParamSpec(
            init_std=base.init_std / math.sqrt(m),   # TP-V Table 3: hidden init var 1/fan_in
            lr_mult=base.lr_mult / m,                # TP-V Table 3: Adam LR 1/fan_in
            wd_mult=base.wd_mult,
            eps_mult=base.eps_mult / m,              # Adam eps x 1/m (Megatron-Core muP; CompleteP, arXiv 2505.01618)
        )

    def describe(self) -> dict:
        d = super().describe()
        d.update(width_mult=self.m, base_d_model=self.cfg.base_d_model, base_d_head=self.base_d_head)
        return d
