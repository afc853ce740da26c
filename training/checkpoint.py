"""Checkpoints: model, optimizer, data-loader position, train state and RNG, written
atomically so a kill at any moment leaves the previous checkpoint intact."""
from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .io import save_torch
from .loop import TrainState


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


def save_checkpoint(path: Path, core: nn.Module, optimizer, loader, state: TrainState) -> None:
    save_torch(path, {
        "model": core.state_dict(), "optimizer": optimizer.state_dict(),
        "loader": loader.state_dict(), "state": asdict(state), "rng": rng_state(),
    })


def load_checkpoint(path: Path, core: nn.Module, optimizer, loader) -> TrainState:
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same problem for the user
        raise RuntimeError(f"checkpoint {path} is unreadable ({e}); delete it to restart the run") from e
    core.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    loader.load_state_dict(ck["loader"])
    set_rng_state(ck["rng"])
    return TrainState(**ck["state"])


