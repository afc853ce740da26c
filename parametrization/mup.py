"""Maximal-update parametrization (muP) for Adam, width rules of PAPER.md Sec. 3.

Source: Yang et al. 2022, "Tensor Programs V" (arXiv 2203.03466), Table 3, and the
`mup` library's conventions (MuReadout output multiplier, MuAdam LR scaling).
At width multiplier m = 1 every number equals the standard parametrization's.

Role by role (PAPER.md Sec. 3 table), with m = d_model / base_d_model and, per hidden matrix,
its own fan-in ratio r = fan_in / fan_in at base shape (TP-V Table 3 and `mup`'s MuAdam scale
each matrix by its fan-in's width multiplier; r = m for fan-in d_model, but the MLP and expert
down-projections have fan-in d_ff or d_expert, rounded to a multiple of 32, so r != m there):
  embedding            init sigma, LR eta                    (TP-V Table 3, input weights)
  attn_qkv, attn_out,  init var sigma^2/r, LR eta/r,         (TP-V Table 3, hidden weights)
  mlp_in/out,          Adam eps / r
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
from dataclasses import replace

from .base import ParamSpec, Role
from .config import ParametrizationConfig
from .standard import StandardParametrization


class MuParametrization(StandardParametrization):
    name = "mup"

    def __init__(self, cfg: ParametrizationConfig, model_cfg):
        super().__init__(cfg, model_cfg)
        if cfg.base_d_model <= 0:
            raise ValueError("parametrization.base_d_model must be positive for muP")
        self.m = model_cfg.d_model / cfg.base_d_model
        # Default: the head size at base width with the same head count (heads widen with
        # d_model); the model's own d_head would silently keep SP's 1/sqrt(d_head) at every width.
        self.base_d_head = cfg.base_d_head or cfg.base_d_model / model_cfg.n_heads
        self.fan_in_ratio = _fan_in_ratios(model_cfg, cfg)

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
        r = self.ratio_of(role, shape)
        return ParamSpec(
            init_std=base.init_std / math.sqrt(r),   # TP-V Table 3: hidden init var 1/fan_in
            lr_mult=base.lr_mult / r,                # TP-V Table 3: Adam LR 1/fan_in
            wd_mult=base.wd_mult,
            eps_mult=base.eps_mult / r,              # Adam eps x 1/r (Megatron-Core muP; CompleteP, arXiv 2505.01618)
        )

    def ratio_of(self, role: Role, shape: tuple[int, ...]) -> float:
        return _ratio_of(self.fan_in_ratio, role, shape)


class MuLRParametrization(StandardParametrization):
    """SP with muP's per-module learning rates and nothing else: SP init, SP forward multipliers
    (logits x 1, attention 1/sqrt(d_head)) and SP Adam eps, but every hidden matrix's LR divided by
    its fan-in ratio as under muP. The middle arm of the module-wise tuning ablation (PAPER.md §1:
    the paper argues per-module LRs buy nothing at scale once modern normalization is in place):
    one global LR (sp) vs per-module LRs only (sp_mup_lr) vs full muP (mup). Equal to SP at base width."""

    name = "sp_mup_lr"

    def __init__(self, cfg: ParametrizationConfig, model_cfg):
        super().__init__(cfg, model_cfg)
        self.fan_in_ratio = _fan_in_ratios(model_cfg, cfg)

    def width_spec(self, role: Role, shape: tuple[int, ...]) -> ParamSpec:
        base = super().width_spec(role, shape)
        if not role.is_hidden:
            return base
        return replace(base, lr_mult=base.lr_mult / _ratio_of(self.fan_in_ratio, role, shape))  # TP-V Table 3 LR only


def _ratio_of(fan_in_ratio: dict[int, float], role: Role, shape: tuple[int, ...]) -> float:
    """Fan-in ratio of a hidden matrix: its fan-in (dim 1 both of a Linear weight (out, in) and
    of stacked expert weights (E, in, out)) over the same matrix's fan-in at base shape."""
    fan_in = shape[1]
    if fan_in not in fan_in_ratio:
        raise ValueError(f"{role.value} matrix of shape {tuple(shape)}: its fan-in {fan_in} is none of the "
                         f"model's widths {sorted(fan_in_ratio)}, so muP cannot scale it")
    return fan_in_ratio[fan_in]


def _fan_in_ratios(model_cfg, cfg: ParametrizationConfig) -> dict[int, float]:
    """{fan-in at this width: its ratio to the same width at base shape}, for d_model, d_ff and
    d_expert (the only fan-ins hidden matrices have; attention's n_heads * d_head is d_model)."""
    here = model_cfg.widths_at(model_cfg.d_model)
    base = model_cfg.widths_at(cfg.base_d_model, cfg.base_d_ff, cfg.base_d_expert)
    ratios: dict[int, float] = {}
    for dim, width in here.items():
        ratio = width / base[dim]
        other = ratios.setdefault(int(width), ratio)
        if other != ratio:
            raise ValueError(
                f"muP base shape is ambiguous: two widths of this model equal {int(width)} but scale "
                f"differently from base width ({other:.4g} vs {ratio:.4g}), so a matrix with that fan-in "
                "could be either; set parametrization.base_d_ff / base_d_expert, or make the widths differ")
    return ratios
