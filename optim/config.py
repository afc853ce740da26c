"""Optimizer and LR-schedule configs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 3e-3                  # peak base LR; each group gets lr * its parametrization multiplier
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.0         # lambda; what it multiplies depends on weight_decay_mode
    weight_decay_mode: str = "coupled"  # coupled | independent | timescale
    wd_timescale_tokens: float = 0.0  # timescale mode: EMA timescale tau = 1/(eta*lambda), in tokens
    grad_clip: float = 1.0            # max global grad norm; 0 = off
    horizon_beta: float = 0.0         # token-horizon rule lr(D) = lr * (D/D0)^-beta; 0 = off
    horizon_base_tokens: float = 0.0  # D0 of the horizon rule


@dataclass
class ScheduleConfig:
    name: str = "wsd"                 # wsd | cosine | constant
    warmup_steps: int = 50
    decay_fraction: float = 0.2       # wsd: share of the run spent in the decay phase
    decay_shape: str = "linear"       # wsd: linear | cosine | 1-sqrt
    final_lr_frac: float = 0.0        # factor reached at the end of the decay
    decay_branches: List[int] = field(default_factory=list)  # wsd: token budgets with a forked decay
