"""AdamW groups from the parametrization, and LR schedules as per-group factors."""
from .config import OptimConfig, ScheduleConfig
from .groups import WEIGHT_DECAY_MODES, build_optimizer, build_param_groups, horizon_lr, validate_optim
from .schedules import DECAY_SHAPES, SCHEDULES, GroupLR, build_schedule, validate_schedule, wsd, wsd_decay_steps

__all__ = [
    "DECAY_SHAPES", "SCHEDULES", "WEIGHT_DECAY_MODES", "GroupLR", "OptimConfig", "ScheduleConfig",
    "build_optimizer", "build_param_groups", "build_schedule", "horizon_lr", "validate_optim",
    "validate_schedule", "wsd", "wsd_decay_steps",
]
