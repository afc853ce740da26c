"""Parametrization config: which rule set, and its base shapes.

Defaults reproduce plain SP (name=sp) and plain muP (name=mup): depth rules off
(depth_alpha=0) and weight decay not rescaled (wd_convention=none). Depth rules compose
with either width rule set (sp + depth_alpha=1 is SP width with CompleteP depth; mup +
depth_alpha=1 is CompleteP). Invalid values are refused when the config is built.
"""
from __future__ import annotations

from dataclasses import dataclass

WD_CONVENTIONS = ("none", "mup")


@dataclass
class ParametrizationConfig:
    name: str = "sp"                 # registry: sp | mup
    init_std: float = 0.02           # sigma: the base init std of every matrix
    base_d_model: int = 128          # muP width base: m = d_model / base_d_model
    base_d_head: int = 0             # muP attention base head size; 0 = base_d_model / n_heads (d_head at base width)
    base_d_ff: int = 0               # muP: the MLP width at base shape; 0 = the model's own rule there (a derived
                                     # d_ff is derived again, a d_ff set by hand grows in proportion to d_model)
    base_d_expert: int = 0           # muP: the expert width at base shape; 0 = likewise (follows base_d_ff if derived)
    scale_out_init_by_depth: bool = True  # output projections init x 1/sqrt(2L) (GPT-2, Radford et al. 2019)
    output_zero_init: bool = False   # unembedding starts at zero (muP option, Yang et al. 2022 Sec. D.2)
    router_zero_init: bool = False   # router starts at zero (uniform routing at step 0)
    depth_alpha: float = 0.0         # residual branches x (L0/L)^alpha: 1 CompleteP, 0.5 Depth-muP, 0 = no depth rules
    base_n_layers: int = 4           # L0, the depth the LR was tuned at (used only when depth_alpha > 0)
    wd_convention: str = "none"      # none | mup: decayed params get wd_mult = 1/lr_mult so eta*lambda is fixed
                                     # (mup's MuAdamW; needs optim.weight_decay_mode=coupled)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Reject impossible values at config time, naming the field and how to fix it."""
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        from . import PARAMETRIZATIONS  # the registry of rule sets lives with them

        need(self.name in PARAMETRIZATIONS, f"parametrization.name='{self.name}' is unknown; valid: "
             f"{', '.join(PARAMETRIZATIONS)}")
        need(self.init_std > 0, f"parametrization.init_std={self.init_std} must be positive (sigma of the init)")
        need(self.base_d_model > 0, f"parametrization.base_d_model={self.base_d_model} must be positive "
             "(the width the LR was tuned at)")
        need(self.base_d_head >= 0, f"parametrization.base_d_head={self.base_d_head} must be >= 0 "
             "(0 = base_d_model / n_heads)")
        for f in ("base_d_ff", "base_d_expert"):
            need(getattr(self, f) >= 0, f"parametrization.{f}={getattr(self, f)} must be >= 0 "
                 "(0 = the model's own rule at base width)")
        need(0.0 <= self.depth_alpha <= 1.0, f"parametrization.depth_alpha={self.depth_alpha} must be in [0, 1] "
             "(1 = CompleteP, 0.5 = Depth-muP, 0 = no depth rules)")
        need(self.base_n_layers > 0, f"parametrization.base_n_layers={self.base_n_layers} must be positive "
             "(the depth L0 the LR was tuned at)")
        need(self.wd_convention in WD_CONVENTIONS, f"parametrization.wd_convention='{self.wd_convention}' is "
             f"unknown; valid: {', '.join(WD_CONVENTIONS)}")
