"""Checkpoints: model, optimizer, data-loader position, train state and RNG.

One format for one process and for many: a `torch.distributed.checkpoint` (DCP)
directory. Model and optimizer state go through `get_state_dict`/`set_state_dict`,
which key everything by parameter name, so a checkpoint written by K ranks (DDP or
FSDP2 shards) loads on any number of ranks, one process without a process group
included. The rest (train state, loader, RNG) is small and the same on every rank:
rank 0 writes it as `meta.pt` inside the same directory.

    <run_dir>/checkpoint/      .metadata  __0_0.distcp  __1_0.distcp ...  meta.pt  manifest.json

Writes are atomic: every rank writes into checkpoint.tmp/, then rank 0 writes
`manifest.json` (size and SHA-256 of every other file) last, moves the old checkpoint
aside, renames the new one into place and deletes the old one. A kill at any moment
leaves a complete `checkpoint/` or (between the two renames) a complete
`checkpoint.old/`, which `find_checkpoint` falls back to. Across nodes, the run
directory must be on a filesystem that all of them share (rank 0 hashes every shard).

Loading verifies the manifest first, so a checkpoint whose bytes changed on disk
(truncated, overwritten, a flipped bit) is never trained from: `CorruptCheckpointError`
names the file. Any other failure to read it, whatever its exception type (DCP's
`CheckpointException` is a BaseException), is the same error. A failed save (full disk,
read-only location) raises `CheckpointWriteError` with one line naming the path and the
fix; the previous checkpoint is untouched, since only a complete new one replaces it.
Checkpoints written before manifests existed (no `format` in meta.pt) load with a warning.

To get one plain file (e.g. for analysis) from a checkpoint:
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    dcp_to_torch_save("runs/<run>/checkpoint", "model.pt")
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from lrscale.data.tokenizer import file_sha256

from . import distributed
from .distributed import World, barrier
from .errors import RunError, interruption, root_cause, write_failure
from .io import save_torch, write_json
from .loop import TrainState

NAME = "checkpoint"
META = "meta.pt"
MANIFEST = "manifest.json"
FORMAT = 2  # 2: the directory carries manifest.json (1: before manifests, not verifiable)


class CorruptCheckpointError(RunError):
    """A checkpoint that fails verification or cannot be read; it is never trained from."""

    def __init__(self, path: Path | str, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"checkpoint {self.path} is unusable: {reason}. It is not trained from: delete it or move "
                         f"it aside (mv {self.path} {self.path}.bad) and rerun to restart this run from step 0")

    def __reduce__(self):  # rank 0's error is re-raised on every rank (distributed.on_main)
        return type(self), (str(self.path), self.reason)


class CheckpointWriteError(RunError):
    """A checkpoint could not be written (full disk, read-only location, ...)."""


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
    """The newest checkpoint of a run, or None. Only complete directories ever get these
    names, so whatever is there is judged by `verify_checkpoint`, never skipped."""
    final, _, old = _paths(run_dir)
    for path in (final, old):
        if path.is_dir():
            return path
    return None


def remove_checkpoint(run_dir: Path) -> None:
    """Delete a run's checkpoints (rank 0 only). Ones moved aside as corrupt are kept."""
    for path in _paths(run_dir):
        shutil.rmtree(path, ignore_errors=True)


def quarantine_checkpoint(path: Path) -> Path:
    """Move a bad checkpoint out of the way, keeping it for inspection; returns where it went."""
    path = Path(path)
    dest = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    if dest.exists():
        dest = dest.with_name(f"{dest.name}-{os.getpid()}")
    path.rename(dest)
    return dest


# ---- manifest ------------------------------------------------------------------------------

def _digests(directory: Path) -> dict[str, dict]:
    """Size and SHA-256 of every file in a checkpoint directory but the manifest."""
    return {p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST}


def write_manifest(directory: Path) -> None:
    """Written last (atomically): a directory with a manifest is a complete checkpoint."""
    write_json(Path(directory) / MANIFEST, {"format": FORMAT, "algorithm": "sha256", "files": _digests(directory)})


def _read_manifest(path: Path) -> dict:
    try:
        files = json.loads((path / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        files = None
    if not isinstance(files, dict) or META not in files or ".metadata" not in files:
        raise CorruptCheckpointError(path, f"{MANIFEST} is unreadable or incomplete")
    return files


def _legacy_unverified(path: Path) -> None:
    """No manifest: fine for a checkpoint written before manifests, corrupt for a newer one."""
    try:
        meta = torch.load(path / META, map_location="cpu", weights_only=False)
    except BaseException as e:  # noqa: BLE001
        if (stop := interruption(e)) is not None:
            raise stop from None
        raise CorruptCheckpointError(path, f"{MANIFEST} is missing and {META} is unreadable ({root_cause(e)})") from e
    if meta.get("format", 1) >= FORMAT:
        raise CorruptCheckpointError(path, f"{MANIFEST} is missing")
    print(f"[train] warning: {path} was written before checkpoints carried a manifest; loading it without "
          "verifying its bytes", file=sys.stderr)


def verify_checkpoint(path: Path) -> None:
    """Raise CorruptCheckpointError unless every file has the size and SHA-256 its manifest records."""
    path = Path(path)
    if not (path / MANIFEST).exists():
        return _legacy_unverified(path)
    for rel, want in _read_manifest(path).items():
        f = path / rel
        if not f.is_file():
            raise CorruptCheckpointError(path, f"{rel} is missing")
        size = f.stat().st_size
        if size != want["bytes"]:
            raise CorruptCheckpointError(path, f"{f} has {size} bytes where {MANIFEST} records {want['bytes']} "
                                               "(truncated or overwritten)")
        if file_sha256(f) != want["sha256"]:
            raise CorruptCheckpointError(path, f"{f} does not match the SHA-256 that {MANIFEST} records "
                                               "(its bytes changed on disk)")


# ---- save and load -------------------------------------------------------------------------

def _no_dist() -> bool:
    return not (dist.is_available() and dist.is_initialized())


@contextlib.contextmanager
def _single_process_is_intended():
    """DCP warns on every save/load without a process group; here that is the plain path."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _fsync_dir(path: Path) -> None:
    """Make a rename durable: the directory entry, not only the file, must reach the disk.
    Best effort: some network filesystems refuse fsync on a directory."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _complete_and_swap(final: Path, tmp: Path, old: Path, meta: dict) -> None:
    """Rank 0, once every rank's shards are in tmp: meta, manifest last, then the renames."""
    save_torch(tmp / META, meta)
    write_manifest(tmp)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(run_dir: Path, core: nn.Module, optimizer, loader, state: TrainState, world: World) -> Path:
    """Collective: every rank calls it and writes its own shards. Returns the checkpoint path.

    Raises CheckpointWriteError on every rank when any part fails; the previous
    checkpoint stays in place and loadable."""
    final, tmp, old = _paths(run_dir)
    try:
        if world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)  # left by a save that was killed
        barrier()
        model_sd, optim_sd = get_state_dict(core, optimizer)
        with _single_process_is_intended():
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp, no_dist=_no_dist())
        meta = {"format": FORMAT, "loader": loader.state_dict(), "state": asdict(state), "rng": rng_state(),
                "world_size": world.size}
        # dcp.save returns after every rank's shards are written; rank 0's errors reach every rank
        distributed.on_main(lambda: _complete_and_swap(final, tmp, old, meta), world)
    except BaseException as e:  # noqa: BLE001 - DCP's CheckpointException is a BaseException
        if (stop := interruption(e)) is not None:
            raise stop from None
        if world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)  # frees the space the partial copy took
        kept = f"; the previous checkpoint {final} is intact" if final.exists() else ""
        raise CheckpointWriteError(f"checkpoint not saved: {write_failure(tmp, e)}{kept}") from e
    return final


def load_checkpoint(path: Path, core: nn.Module, optimizer, loader, world: World | None = None) -> TrainState:
    """Collective: load a checkpoint written by any number of ranks into this world's
    (possibly wrapped or sharded) model and optimizer. Build the optimizer first.

    The manifest is verified (on rank 0) before anything is read; any failure raises
    CorruptCheckpointError on every rank, and the model may then be partly overwritten:
    build a fresh one before training from scratch."""
    path = Path(path)
    try:
        distributed.on_main(lambda: verify_checkpoint(path), world or World())
        meta = torch.load(path / META, map_location="cpu", weights_only=False)
        model_sd, optim_sd = get_state_dict(core, optimizer)
        sd = {"model": model_sd, "optim": optim_sd}
        with _single_process_is_intended():
            dcp.load(sd, checkpoint_id=path, no_dist=_no_dist())  # fills tensors in place, resharding as needed
        set_state_dict(core, optimizer, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
        loader.load_state_dict(meta["loader"])
        set_rng_state(meta["rng"])  # rank 0's streams: ranks share one seed, so they are the same
        return TrainState(**{**meta["state"], "status": "running"})  # a kept final checkpoint continues too
    except CorruptCheckpointError:
        raise
    except BaseException as e:  # noqa: BLE001 - any unreadable checkpoint is the same problem for the user
        if (stop := interruption(e)) is not None:
            raise stop from None
        raise CorruptCheckpointError(path, f"it cannot be loaded ({root_cause(e)})") from e
