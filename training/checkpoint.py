"""Checkpoints: model, optimizer, data-loader position, train state and RNG.

One format for one process and for many: a `torch.distributed.checkpoint` (DCP)
directory. Model and optimizer state go through `get_state_dict`/`set_state_dict`,
which key everything by parameter name, so a checkpoint written by K ranks (DDP or
FSDP2 shards) loads on any number of ranks, one process without a process group
included. The rest (train state, loader, RNG) is small and the same on every rank:
rank 0 writes it as `meta.pt` inside the same directory.

    <run_dir>/checkpoint/      .metadata  __0_0.distcp  __1_0.distcp ...  meta.pt

Writes are atomic: every rank writes into checkpoint.tmp/, then rank 0 moves the old
checkpoint aside, renames the new one into place and deletes the old one. A kill at
any moment leaves a complete `checkpoint/` or (between the two renames) a complete
`checkpoint.old/`, which `find_checkpoint` falls back to. Across nodes, the run
directory must be on a filesystem that all of them share.

To get one plain file (e.g. for analysis) from a checkpoint:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    dcp_to_torch_save("runs/<run>/checkpoint", "model.pt")
"""
from __future__ import annotations

import contextlib
import random
import shutil
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from .distributed import World, barrier
from .io import save_torch
from .loop import TrainState

NAME = "checkpoint"


def rng_state() -> dict:
    s = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _paths(run_dir: Path) -> tuple[Path, Path, Path]:
    run_dir = Path(run_dir)
    return run_dir / NAME, run_dir / f"{NAME}.tmp", run_dir / f"{NAME}.old"


def find_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    final, _, old = _paths(run_dir)
    for path in (final, old):
        if (path / "meta.pt").exists():
            return path
    return None


def remove_checkpoint(run_dir: Path) -> None:
    """Delete a run's checkpoints (rank 0 only)."""
    for path in _paths(run_dir):
        shutil.rmtree(path, ignore_errors=True)


def _no_dist() -> bool:
    return not (dist.is_available() and dist.is_initialized())


@contextlib.contextmanager
def _single_process_is_intended():
    """DCP warns on every save/load without a process group; here that is the plain path."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def save_checkpoint(run_dir: Path, core: nn.Module, optimizer, loader, state: TrainState, world: World) -> Path:
    """Collective: every rank calls it and writes its own shards. Returns the checkpoint path."""
    final, tmp, old = _paths(run_dir)
    if world.is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a save that was killed
    barrier()
    model_sd, optim_sd = get_state_dict(core, optimizer)
    with _single_process_is_intended():
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp, no_dist=_no_dist())
    if world.is_main:  # dcp.save returns on rank 0 after every rank's shards are written
        save_torch(tmp / "meta.pt", {"loader": loader.state_dict(), "state": asdict(state), "rng": rng_state(),
                                     "world_size": world.size})
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_checkpoint(path: Path, core: nn.Module, optimizer, loader) -> TrainState:
    """Collective: load a checkpoint written by any number of ranks into this world's
    (possibly wrapped or sharded) model and optimizer. Build the optimizer first."""
    try:
        meta = torch.load(Path(path) / "meta.pt", map_location="cpu", weights_only=False)
        model_sd, optim_sd = get_state_dict(core, optimizer)
        sd = {"model": model_sd, "optim": optim_sd}
        with _single_process_is_intended():
            dcp.load(sd, checkpoint_id=path, no_dist=_no_dist())  # fills tensors in place, resharding as needed
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is the same problem for the user
        raise RuntimeError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); "
                           "delete it to restart the run") from e
    set_state_dict(core, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    loader.load_state_dict(meta["loader"])
    set_rng_state(meta["rng"])  # rank 0's streams: ranks share one seed, so they are the same
    return TrainState(**{**meta["state"], "status": "running"})  # a kept final checkpoint continues too
