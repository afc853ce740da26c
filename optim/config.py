"""Optimizer and LR-schedule configs; each validates itself when it is built (at composition
time, through training/config.py `to_object`), naming the field, the value and the fix."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

WEIGHT_DECAY_MODES = ("coupled", "independent", "timescale")


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

    def __post_init__(self) -> None:
        validate_optim(self)


@dataclass
class ScheduleConfig:
    name: str = "wsd"                 # wsd | cosine | constant
    warmup_steps: int = 50
    decay_fraction: float = 0.2       # wsd: share of the run spent in the decay phase
    decay_shape: str = "linear"       # wsd: linear | cosine | 1-sqrt
    final_lr_frac: float = 0.0        # factor reached at the end of the decay
    decay_branches: List[int] = field(default_factory=list)  # wsd: token budgets with a forked decay

    def __post_init__(self) -> None:
        from .schedules import validate_schedule  # the schedule registry lives with the schedules

        validate_schedule(self)


def validate_optim(cfg: OptimConfig) -> None:
    if cfg.name != "adamw":
        raise ValueError(f"optim.name='{cfg.name}' is unknown; valid: adamw")
    if cfg.weight_decay_mode not in WEIGHT_DECAY_MODES:
        raise ValueError(f"optim.weight_decay_mode='{cfg.weight_decay_mode}' is unknown; valid: "
                         f"{', '.join(WEIGHT_DECAY_MODES)}")
    if cfg.weight_decay_mode == "timescale" and cfg.wd_timescale_tokens <= 0:
        raise ValueError("optim.weight_decay_mode=timescale needs optim.wd_timescale_tokens > 0 (tau in tokens)")
    if not cfg.lr > 0:
        raise ValueError(f"optim.lr={cfg.lr} must be positive (the peak learning rate, e.g. optim.lr=3e-3)")
    if len(cfg.betas) != 2 or not all(0.0 <= b < 1.0 for b in cfg.betas):
        raise ValueError(f"optim.betas={list(cfg.betas)} must be two numbers in [0, 1), e.g. optim.betas=[0.9,0.95]")
    if not cfg.eps > 0:
        raise ValueError(f"optim.eps={cfg.eps} must be positive (Adam's epsilon, e.g. 1e-8)")
    if not cfg.weight_decay >= 0:
        raise ValueError(f"optim.weight_decay={cfg.weight_decay} must be >= 0 (0 = off)")
    if not cfg.grad_clip >= 0:
        raise ValueError(f"optim.grad_clip={cfg.grad_clip} must be >= 0 (max global grad norm; 0 = off)")
    if cfg.horizon_beta and cfg.horizon_base_tokens <= 0:
        raise ValueError("optim.horizon_beta is set: also set optim.horizon_base_tokens (D0, the tokens the lr was "
                         "tuned at)")
