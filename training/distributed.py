"""torchrun support: process group from the environment, data-parallel wrapping, and
the few collectives the loop needs (loss and MoE load all-reduces, rank-0 decisions).

A single process (no WORLD_SIZE > 1 in the environment) never touches a process
group; every helper below is then the identity, so the CPU default path stays plain.

Data parallelism is PyTorch's own: DDP or FSDP2 (`fully_shard`) over one 1-D device
mesh named "dp". MoE experts are replicated (DDP) or sharded like any other weight
(FSDP); expert parallelism is out of scope, see `build_mesh` for where it would go.
"""
from __future__ import annotations

import atexit
import contextlib
import inspect
import os
import sys
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from .config import HardwareConfig

T = TypeVar("T")


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device_type: str = "cpu"          # cuda (NCCL) or cpu (gloo)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init(hw: HardwareConfig) -> World:
    """Join the process group that torchrun describes in the environment (RANK, WORLD_SIZE, ...)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    default_to_ddp(hw, size)
    use_cuda = hw.device in ("cuda", "auto") and torch.cuda.is_available()
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")),
                  "cuda" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(world.local_rank)  # before anything allocates on cuda:0
    if not dist.is_initialized():  # kept for the process's life: Hydra multirun jobs reuse it
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        atexit.register(shutdown)
    return world


def default_to_ddp(hw: HardwareConfig, size: int) -> None:
    """Under more than one rank, data_parallel=none (the default) means DDP: ranks that
    each trained their own copy on their own data are never what is meant."""
    if size > 1 and hw.data_parallel == "none":
        hw.data_parallel = "ddp"
        if os.environ.get("RANK", "0") == "0":
            print(f"[train] {size} ranks and hardware.data_parallel=none: using ddp (set hardware.data_parallel="
                  "fsdp to shard instead)", file=sys.stderr)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def on_main(fn: Callable[[], T], world: World) -> T:
    """fn() evaluated on rank 0 only, its result (or its exception) returned on every rank.

    For decisions that read the shared filesystem (run directory, finished summary,
    checkpoint to resume): one reader means no rank can see a file another rank has
    just written, and an error on rank 0 stops every rank instead of hanging them.
    """
    if not world.distributed:
        return fn()
    box: list = [None]
    if world.is_main:
        try:
            box[0] = (True, fn())
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # noqa: BLE001 - re-raised on every rank below (CheckpointException included)
            box[0] = (False, e)
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise value
    return value


def barrier() -> None:
    if _active():
        dist.barrier()


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def mean_across_ranks(values: Sequence[float]) -> list[float]:
    """Average Python floats over ranks (the train loss for logging and divergence checks:
    every rank must reach the same verdict, or one stops while the others wait)."""
    if not _active():
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


def mean_across_ranks_(t: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of a same-shaped tensor on every rank, kept on the device (no host
    sync); the identity on one process."""
    if not _active():
        return t
    dist.all_reduce(t)
    return t / dist.get_world_size()


def max_across_ranks(value: float) -> float:
    """The largest of one number over ranks (e.g. a stop flag: any rank's signal stops all)."""
    if not _active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


@torch.no_grad()
def sum_across_ranks_(tensors: Sequence[torch.Tensor]) -> None:
    """In-place sum over ranks of same-shaped-on-every-rank tensors, in one all-reduce."""
    if not _active() or not tensors:
        return
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat)
    for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(part.view_as(t))


def rank_rows(batches: list, world: World) -> list:
    """This rank's contiguous slice of the rows of every (x, y) batch, as TokenLoader does
    for training: ranks run the same number of forwards (FSDP all-gathers in lockstep)
    and a mean over ranks of the per-rank means is the mean over the whole batch."""
    if not world.distributed:
        return batches
    for x, _ in batches:
        if x.shape[0] % world.size:
            raise ValueError(f"validation batch of {x.shape[0]} rows does not split over {world.size} ranks; "
                             f"use a train.batch_size divisible by {world.size}")
    return [(x.chunk(world.size)[world.rank], y.chunk(world.size)[world.rank]) for x, y in batches]


def build_mesh(world: World):
    """The data-parallel device mesh.

    Expert parallelism would go here: a 2-D mesh ("dp", "ep") whose "ep" dimension
    places MoE experts on different ranks (all-to-all token dispatch in models/moe.py's
    seam, `get_expert_backend`), while the dense weights use "dp" as below.
    """
    from torch.distributed.device_mesh import init_device_mesh
    return init_device_mesh(world.device_type, (world.size,), mesh_dim_names=("dp",))


def wrap(model: nn.Module, hw: HardwareConfig, world: World) -> nn.Module:
    """Apply the configured data parallelism (after compile, before the optimizer).

    Parameter names are unchanged, so the parametrization's table (and the optimizer's
    per-group LR/WD multipliers built from it) still applies. FSDP2 replaces every
    parameter by a sharded DTensor: build the optimizer from the module *after* this.
    """
    if not world.distributed:
        return model
    if hw.data_parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP
        ids = [world.local_rank] if world.device_type == "cuda" else None
        # No buffer sync in forward: ranks keep identical buffers themselves (the router
        # bias moves with the all-reduced load), and rank 0 must not overwrite the per-rank
        # MoE `load` counters mid-accumulation. (torch 2.13 renamed broadcast_buffers.)
        new = "forward_sync_buffers" in inspect.signature(DDP).parameters
        return DDP(model, device_ids=ids, **{"forward_sync_buffers" if new else "broadcast_buffers": False})
    from torch.distributed.fsdp import fully_shard
    # fp32 parameters are gathered and bf16 comes from autocast, as on one process, so
    # that the fp32 router and loss see the same numbers (no MixedPrecisionPolicy).
    mesh = build_mesh(world)
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)  # the root: embedding, final norm, unembedding
    return model


@contextlib.contextmanager
def unsharded(model: nn.Module):
    """Full parameters on every rank inside the block (FSDP2), for code that reads weights
    directly instead of calling forward (training probes). Collective: all ranks enter."""
    from torch.distributed.fsdp import FSDPModule
    mods = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in mods:
        m.unshard()
    try:
        yield
    finally:
        for m in mods:
            m.reshard()
