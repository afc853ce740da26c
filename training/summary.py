"""summary.json: what a run reports, one schema for every way a run can end.

    completed    trained to train.steps; final_val_loss is the run's end
    diverged     the loss became non-finite or exceeded train.divergence_factor x its first value:
                 a data point (the LR was too high), not a crash
    interrupted  stopped by a signal after a checkpoint: never counts as done, re-running resumes
    failed       the job crashed (sweeps only: the crash becomes a row and the sweep goes on)

`RunSummary.of_run` fills it from a finished run, `RunSummary.of_crash` from whatever can
still be read of a config that crashed; both give every field, so readers never guess.
`finished_summary` decides whether re-running a command has anything left to do.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .rundir import RunIdentity
from .runlock import LOCK

SUMMARY = "summary.json"
STATUSES = ("completed", "diverged", "interrupted", "failed")
NOT_DONE = ("failed", "interrupted")  # re-running retries a crash (maybe transient) and resumes a stop


@dataclass
class RunSummary:
    status: str
    run_dir: str
    config_hash: str
    model: str
    parametrization: str
    n_total: int
    n_active: int
    n_active_nonembed: int
    d_model: int
    n_layers: int
    num_experts: int
    top_k: int
    lr: float                         # the sweep axis (the LR at D0 when the horizon rule is on)
    peak_lr: float                    # the base LR the groups trained at
    seed: int
    batch_tokens: int                 # tokens per optimizer step
    steps: int = 0
    tokens: int = 0                   # of the main run (decay branches not counted)
    planned_steps: list = field(default_factory=list)  # every budget the run was meant to measure
    final_val_loss: float | None = None
    best_val_loss: float | None = None
    flops_per_token: float = 0.0
    flops: float = 0.0                # of the main run
    run_flops: float = 0.0            # main run + decay branches: what the run cost
    wall_time_s: float = 0.0
    branches: list = field(default_factory=list)       # decay-branch results
    data_fingerprint: str | None = None
    error: str | None = None          # failed runs: the exception
    interrupted_by: str | None = None  # interrupted runs: the signal
    stability: dict = field(default_factory=dict)     # training/probes.py summarize_probes
    finished_at: float = field(default_factory=time.time)

    @classmethod
    def of_run(cls, cfg, ident: RunIdentity, state, *, planned_steps: list[int], peak_lr: float,
               tokens_per_step: int, fingerprint: dict) -> RunSummary:
        counts, fpt = cfg.model.param_counts(), cfg.model.flops_per_token()
        return cls(**_describe(ident, cfg.model, cfg.parametrization.name, cfg.optim.lr, cfg.train.seed,
                               tokens_per_step, counts), peak_lr=peak_lr,
                   status=state.status, steps=state.step, tokens=state.tokens, planned_steps=planned_steps,
                   final_val_loss=state.last_val_loss if state.status == "completed" else None,
                   best_val_loss=state.best_val_loss if state.best_val_loss != float("inf") else None,
                   flops_per_token=fpt, flops=fpt * state.tokens, run_flops=fpt * (state.tokens + state.branch_tokens),
                   wall_time_s=state.wall_time_s, branches=list(state.branches),
                   data_fingerprint=fingerprint.get("id"))

    @classmethod
    def of_crash(cls, dcfg, ident: RunIdentity, error: str) -> RunSummary:
        """As much of the config as can still be read: the crash may be the model config itself
        (then N is 0)."""
        from omegaconf import OmegaConf

        from lrscale.models.config import ModelConfig

        m = dcfg.model
        counts, fpt = {"n_total": 0, "n_active": 0, "n_active_nonembed": 0}, 0.0
        try:
            model = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), m))
            counts, fpt = model.param_counts(), model.flops_per_token()
        except Exception:  # noqa: BLE001 - an unreadable model config is what may have crashed
            model = m
        return cls(**_describe(ident, model, dcfg.parametrization.name, dcfg.optim.lr, dcfg.train.seed,
                               dcfg.train.batch_size * m.seq_len, counts),
                   peak_lr=dcfg.optim.lr, status="failed", error=error, flops_per_token=fpt)

    def to_dict(self) -> dict:
        return asdict(self)


def _describe(ident: RunIdentity, model, parametrization: str, lr: float, seed: int, tokens_per_step: int,
              counts: dict) -> dict:
    """The fields every summary has before anything is trained."""
    experts = model.moe.num_experts
    return {"run_dir": str(ident.dir), "config_hash": ident.config_hash, "model": model.name,
            "parametrization": parametrization, **counts, "d_model": model.d_model, "n_layers": model.n_layers,
            "num_experts": experts, "top_k": model.moe.top_k if experts else 0, "lr": lr, "seed": seed,
            "batch_tokens": tokens_per_step}


def finished_summary(ident: RunIdentity, resume: str) -> dict | None:
    """A finished run's summary (so re-running its command is a no-op), or None to start or
    resume it. A summary from another config (possible when run.name is set by hand) is an
    error, never silently reused."""
    run_dir = ident.dir
    if resume == "never" and run_dir.exists() and any(p.name != LOCK for p in run_dir.iterdir()):
        raise FileExistsError(f"run directory {run_dir} exists and run.resume=never; "
                              "pick another run.name or use run.resume=auto")
    path = run_dir / SUMMARY
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError:
        print(f"[train] {path} is corrupt; the run will be resumed or redone", file=sys.stderr)
        return None
    if summary.get("config_hash") not in (None, ident.config_hash):
        raise FileExistsError(f"{run_dir} holds a run of another config (hash {summary.get('config_hash')}, "
                              f"this one {ident.config_hash}); pick another run.name or leave it empty")
    return None if summary.get("status") in NOT_DONE else summary


def write_summary(run_dir: Path, summary: dict) -> None:
    """Atomically: the summary is what marks a run done."""
    from .io import write_json

    write_json(Path(run_dir) / SUMMARY, summary)
