"""Parametrization config: which rule set, and its base shapes."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ParametrizationConfig:
    name: str = "sp"                 # registry: sp | mup
    init_std: float = 0.02           # sigma: the base init std of every matrix
    base_d_model: int = 128          # muP width base: m = d_model / base_d_model
    base_d_head: int = 0             # muP attention base head size; 0 = base_d_model / n_heads (d_head at base width)
    scale_out_init_by_depth: bool = True  # output projections init x 1/sqrt(2L) (GPT-2, Radford et al. 2019)
    output_zero_init: bool = False   # unembedding starts at zero (muP option, Yang et al. 2022 Sec. D.2)
    router_zero_init: bool = False   # router starts at zero (uniform routing at step 0)
