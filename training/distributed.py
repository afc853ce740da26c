"""torchrun support: process group from the environment, data-parallel wrapping.

A single process (no RANK/WORLD_SIZE in the environment) never touches
torch.distributed, so the CPU default path stays plain.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .config import HardwareConfig


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init(hw: HardwareConfig) -> World:
    """Join the process group that torchrun describes in the environment (if any)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        use_cuda = hw.device in ("cuda", "auto") and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return world


def agree_on_path(path: Path, world: World) -> Path:
    """Every rank uses rank 0's run directory (never each rank's own clock or state)."""
    if not world.distributed:
        return Path(path)
    obj = [str(path)]
    dist.broadcast_object_list(obj, src=0)
    return Path(obj[0])


def wrap(model: nn.Module, hw: HardwareConfig, world: World) -> nn.Module:
    """Apply the configured data parallelism. Parameter names (and so the optimizer's
    per-group multipliers, built from names before wrapping) are unchanged."""
    if hw.data_parallel == "none" or not world.distributed:
        return model
    if hw.data_parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP
        ids = [world.local_rank] if next(model.parameters()).is_cuda else None
        return DDP(model, device_ids=ids)
    from torch.distributed.fsdp import fully_shard
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    return model
