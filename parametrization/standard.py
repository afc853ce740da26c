"""Standard parametrization (SP): one LR and one init std for every matrix.

`spec` is composed in three steps shared by every parametrization, so depth rules and the
weight-decay convention compose with any width rule set:
  width_spec   SP here; muP overrides it (mup.py)
  depth rules  residual multiplier, in-block LR and eps factors (depth.py; off when depth_alpha=0)
  wd rule      wd_convention=mup: wd_mult = 1/lr_mult for decayed params (eta*lambda fixed)
"""
from __future__ import annotations

import math
from dataclasses import replace

from .base import ParamSpec, Parametrization, Role
from .config import ParametrizationConfig
from .depth import DepthRules


class StandardParametrization(Parametrization):
    name = "sp"

    def __init__(self, cfg: ParametrizationConfig, model_cfg):
        """`model_cfg`: the model's config (models.ModelConfig): depth, widths and head size."""
        self.cfg = cfg
        self.n_layers = model_cfg.n_layers
        self.depth = DepthRules(cfg, model_cfg.n_layers)
        self.wd_convention = cfg.wd_convention

    @property
    def residual_mult(self) -> float:  # type: ignore[override]
        return self.depth.residual_mult

    # The base init shared by SP and muP (muP rescales it by width).
    def base_std(self, role: Role) -> float:
        c = self.cfg
        if role == Role.UNEMBEDDING and c.output_zero_init:
            return 0.0
        if role == Role.ROUTER and c.router_zero_init:
            return 0.0
        if role.is_output_projection and c.scale_out_init_by_depth:
            # GPT-2 (Radford et al. 2019): residual writes scaled by 1/sqrt(2L) at init; under
            # depth rules L = L0, so init does not change with depth (CompleteP, arXiv 2505.01618).
            return c.init_std / math.sqrt(2 * self.depth.init_layers(self.n_layers))
        return c.init_std

    def width_spec(self, role: Role, shape: tuple[int, ...]) -> ParamSpec:
        wd = 0.0 if role == Role.NORM else 1.0  # norm gains are never decayed
        return ParamSpec(init_std=self.base_std(role), lr_mult=1.0, wd_mult=wd, eps_mult=1.0)

    def spec(self, role: Role, shape: tuple[int, ...]) -> ParamSpec:
        s = self.width_spec(role, shape)
        s = replace(s, lr_mult=s.lr_mult * self.depth.lr_factor(role),     # CompleteP Table 1
                    eps_mult=s.eps_mult * self.depth.eps_factor(role))     # CompleteP Eq. 40
        if self.wd_convention == "mup" and s.wd_mult != 0.0:
            # mup's MuAdamW (mup/optim.py): weight_decay *= width_mult where lr /= width_mult, so
            # the coupled per-step decay eta*lambda is what it is at base shape (PAPER.md Sec. 3).
            s = replace(s, wd_mult=s.wd_mult / s.lr_mult)
        return s
