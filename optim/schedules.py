"""LR schedules as *factors*: each group's lr = its own initial lr x factor(step).

Never write one absolute LR into every group: that erases per-group parametrization
multipliers (the flaw STYLE.md warns about in nanoGPT).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .config import ScheduleConfig

Factor = Callable[[int], float]

DECAY_SHAPES: dict[str, Callable[[float], float]] = {
    # progress p in [0, 1] through the decay -> remaining fraction in [0, 1]
    "linear": lambda p: 1.0 - p,
    "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * p)),
    "1-sqrt": lambda p: 1.0 - math.sqrt(p),  # Hagele et al., arXiv 2405.18392
}


def _warmup(step: int, warmup: int) -> float:
    return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


def wsd_decay_steps(cfg: ScheduleConfig, total_steps: int) -> int:
    """Length of the WSD decay phase for a run of `total_steps` steps."""
    return max(1, round(cfg.decay_fraction * total_steps))


def wsd(cfg: ScheduleConfig, total_steps: int) -> Factor:
    """Warmup-Stable-Decay (Hu et al., MiniCPM, arXiv 2404.06395)."""
    shape = DECAY_SHAPES[cfg.decay_shape]
    decay_start = total_steps - wsd_decay_steps(cfg, total_steps)
    lo = cfg.final_lr_frac

    def factor(step: int) -> float:
        if step < decay_start:
            return _warmup(step, cfg.warmup_steps)
        p = min(1.0, (step - decay_start + 1) / (total_steps - decay_start))
        return _warmup(step, cfg.warmup_steps) * (lo + (1.0 - lo) * shape(p))

    return factor


def cosine(cfg: ScheduleConfig, total_steps: int) -> Factor:
    lo = cfg.final_lr_frac

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return _warmup(step, cfg.warmup_steps)
        p = min(1.0, (step - cfg.warmup_steps + 1) / max(1, total_steps - cfg.warmup_steps))
        return lo + (1.0 - lo) * DECAY_SHAPES["cosine"](p)

    return factor


def constant(cfg: ScheduleConfig, total_steps: int) -> Factor:
    return lambda step: _warmup(step, cfg.warmup_steps)


SCHEDULES: dict[str, Callable[[ScheduleConfig, int], Factor]] = {
    "wsd": wsd, "cosine": cosine, "constant": constant,
}


def validate_schedule(cfg: ScheduleConfig, total_steps: int | None = None) -> None:
    """The schedule alone (names, ranges); with `total_steps`, also against the run's length."""
    if cfg.name not in SCHEDULES:
        raise ValueError(f"schedule.name='{cfg.name}' is unknown; valid: {', '.join(SCHEDULES)}")
    if cfg.decay_shape not in DECAY_SHAPES:
        raise ValueError(f"schedule.decay_shape='{cfg.decay_shape}' is unknown; valid: {', '.join(DECAY_SHAPES)}")
    if not 0.0 < cfg.decay_fraction <= 1.0:
        raise ValueError(f"schedule.decay_fraction={cfg.decay_fraction} must be in (0, 1]")
    if not 0.0 <= cfg.final_lr_frac <= 1.0:
        raise ValueError(f"schedule.final_lr_frac={cfg.final_lr_frac} must be in [0, 1]")
    if cfg.warmup_steps < 0:
        raise ValueError(f"schedule.warmup_steps={cfg.warmup_steps} must be >= 0")
    if total_steps is not None and cfg.warmup_steps >= total_steps:
        raise ValueError(f"schedule.warmup_steps={cfg.warmup_steps} must be less than train.steps={total_steps}; "
                         "lower schedule.warmup_steps or raise train.steps")
    if cfg.decay_branches and cfg.name != "wsd":
        raise ValueError("schedule.decay_branches needs schedule.name=wsd (branches fork from the stable phase)")


def build_schedule(cfg: ScheduleConfig, total_steps: int) -> Factor:
    validate_schedule(cfg, total_steps)
    return SCHEDULES[cfg.name](cfg, total_steps)


class GroupLR:
    """Sets every group's lr to its own `initial_lr` x factor(step)."""

    def __init__(self, optimizer: torch.optim.Optimizer, factor: Factor):
        self.optimizer, self.factor = optimizer, factor
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])

    def apply(self, step: int) -> float:
        f = self.factor(step)
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * f
        return f
