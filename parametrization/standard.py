"""Standard parametrization (SP): one LR and one init std for every matrix."""
from __future__ import annotations

import math

from .base import ParamSpec, Parametrization, Role
from .config import ParametrizationConfig


class StandardParametrization(Parametrization):
    name = "sp"

    def __init__(self, cfg: ParametrizationConfig, n_layers: int, d_model: int, d_head: int):
        self.cfg = cfg
        self.n_layers = n_layers
        self.d_model = d_model
        self.d_head = d_head

    # The base init shared by SP and muP (muP rescales it by width).
    def base_std(self, role: Role) -> float:
        c = self.cfg
        if role == Role.UNEMBEDDING and c.output_zero_init:
            return 0.0
        if role == Role.ROUTER and c.router_zero_init:
            return 0.0
        if role.is_output_projection and c.scale_out_init_by_depth:
            # GPT-2 (Radford et al. 2019): residual writes scaled by 1/sqrt(2L) at init.
            return c.init_std / math.sqrt(2 * self.n_layers)
        return c.init_std

    def spec(self, role: Role, shape: tuple[int, ...]) -> ParamSpec:
        wd = 0.0 if role == Role.NORM else 1.0  # norm gains are never decayed
        return ParamSpec(init_std=self.base_std(role), lr_mult=1.0, wd_mult=wd, eps_mult=1.0)
