"""A run is reproducible from its own directory: resolved config, git state,
environment, data fingerprint, parameter table, metrics and summary."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .io import write_json, write_text

# Config sections that do not change what is computed: excluded from the run's hash.
NON_SEMANTIC = ("logging", "run", "sweep", "experiment")
NON_SEMANTIC_HARDWARE = ("num_threads", "data_parallel")  # same numbers on 1 or K ranks

REPO = Path(__file__).resolve().parents[1]


def config_hash(cfg: DictConfig) -> str:
    """Stable 10-hex-digit hash of the semantic part of a resolved config."""
    d = OmegaConf.to_container(cfg, resolve=True)
    for k in NON_SEMANTIC:
        d.pop(k, None)
    for k in NON_SEMANTIC_HARDWARE:
        d.get("hardware", {}).pop(k, None)
    d.get("data", {}).pop("cache_dir", None)  # where tokens are cached, not which tokens
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class RunIdentity:
    """Which run a config describes: its directory and the hash of what it computes. The same
    command always maps to the same directory, which is what makes re-running it resume."""
    dir: Path
    config_hash: str

    @property
    def name(self) -> str:
        return self.dir.name


def identify(cfg: DictConfig) -> RunIdentity:
    """The run of a composed config: runs/<model>-<parametrization>-lr<lr>-<hash> (or run.name)."""
    chash = config_hash(cfg)
    name = cfg.run.name or f"{cfg.model.name}-{cfg.parametrization.name}-lr{cfg.optim.lr:.3g}-{chash}"
    return RunIdentity(Path(cfg.run.root) / name, chash)


def git_state() -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""
    commit = git("rev-parse", "HEAD").strip()
    status = git("status", "--porcelain").splitlines()
    return {"commit": commit or None, "dirty": bool(status), "diff": git("diff", "HEAD"),
            # untracked files are not in the diff: name them so the record is honest about it
            "untracked": [line[3:] for line in status if line.startswith("??")]}


def environment() -> dict:
    env = {
        "python": sys.version, "platform": platform.platform(), "torch": torch.__version__,
        "cpu_count": os.cpu_count(), "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "argv": sys.argv,
    }
    return env


def write_run_metadata(run_dir: Path, cfg: DictConfig, fingerprint: dict, table: list[dict]) -> None:
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    g = git_state()
    write_text(run_dir / "git.diff", g.pop("diff"))
    write_json(run_dir / "git.json", g)
    write_json(run_dir / "environment.json", environment())
    write_json(run_dir / "data_fingerprint.json", fingerprint)
    write_json(run_dir / "param_table.json", table)
