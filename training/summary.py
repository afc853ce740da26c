"""What a finished run reports: summary.json, and its rows in a sweep's results table.

A sweep's table, `<sweep.dir>/results.jsonl`, has one row per measurement: a (run, token
budget) pair, i.e. the validation loss at the end of one WSD decay branch or of the run
itself (PAPER.md §2, "decay branches"). `analysis.results.REQUIRED_COLUMNS` is its
schema. Rows are appended under a file lock, one fsync'ed line each, and only if that
(run, branch, status) is not in the table yet, so re-running a job (or a whole sweep)
never duplicates a measurement and re-records one that a kill lost.
"""
from __future__ import annotations

import fcntl
import json
import os
import sys
import time
import traceback
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lrscale.optim import ScheduleConfig, horizon_lr, wsd_decay_steps

from .checkpoint import CorruptCheckpointError, quarantine_checkpoint
from .errors import interruption
from .io import dumps, write_json
from .rundir import config_hash, run_dir_for
from .runlock import LOCK, RunLockedError

RESULTS = "results.jsonl"


def branch_plan(cfg: ScheduleConfig, total_steps: int, tokens_per_step: int) -> list[tuple[int, int]]:
    """(fork step, end step) of each decay branch; a budget at the run's end is the main run.

    A branch to `end` forks where a separate WSD run of `end` steps would start its decay,
    so it measures L(N, η, D=end·tokens_per_step) without that run (PAPER.md §2).
    """
    plan, ends = [], set()
    for budget in sorted(set(cfg.decay_branches)):
        end = round(budget / tokens_per_step)
        if end in ends:
            print(f"[train] schedule.decay_branches: budget {budget} tokens rounds to step {end} like an "
                  "earlier budget; measured once", file=sys.stderr)
            continue
        ends.add(end)
        if end < 1:
            raise ValueError(f"schedule.decay_branches: budget {budget} tokens is less than one step "
                             f"({tokens_per_step} tokens)")
        if end > total_steps:
            print(f"[train] schedule.decay_branches: budget {budget} tokens ({end} steps) is past the run's "
                  f"end ({total_steps} steps) and is not measured; raise train.steps to include it",
                  file=sys.stderr)
            continue
        if end == total_steps:
            continue
        start = end - wsd_decay_steps(cfg, end)
        if start < cfg.warmup_steps:
            raise ValueError(f"schedule.decay_branches: budget {budget} tokens ({end} steps) would fork at "
                             f"step {start}, inside the warmup ({cfg.warmup_steps} steps); use larger budgets")
        plan.append((start, end))
    return plan


def existing_summary(run_dir: Path, resume: str, chash: str | None = None) -> dict | None:
    """A finished run's summary (so re-running is a no-op), or None to (re)start it.

    A summary from another config (possible when run.name is set by hand) is an error,
    never silently reused."""
    if resume not in ("auto", "never"):
        raise ValueError(f"run.resume='{resume}' is unknown; valid: auto, never")
    path = run_dir / "summary.json"
    if resume == "never" and run_dir.exists() and any(p.name != LOCK for p in run_dir.iterdir()):
        raise FileExistsError(f"run directory {run_dir} exists and run.resume=never; "
                              "pick another run.name or use run.resume=auto")
    if path.exists():
        try:
            summary = json.loads(path.read_text())
        except json.JSONDecodeError:
            print(f"[train] {path} is corrupt; the run will be resumed or redone", file=sys.stderr)
            return None
        if chash and summary.get("config_hash") not in (None, chash):
            raise FileExistsError(f"{run_dir} holds a run of another config (hash {summary.get('config_hash')}, "
                                  f"this one {chash}); pick another run.name or leave it empty")
        # A crash may be transient (out of memory, a killed node): retry it. An interrupted run
        # resumes. Diverged is data.
        return None if summary.get("status") in ("failed", "interrupted") else summary
    return None


def make_summary(cfg, dcfg: DictConfig, state, counts: dict, flops_per_token: float, tokens_per_step: int,
                 fingerprint: dict, chash: str) -> dict:
    main_tokens = state.tokens
    # Every budget this run was meant to measure: a diverged run reports the ones it never reached.
    planned = [end for _, end in branch_plan(cfg.schedule, cfg.train.steps, tokens_per_step)] + [cfg.train.steps]
    return {
        "status": state.status,
        "run_dir": str(run_dir_for(dcfg)),
        "config_hash": chash,
        "model": cfg.model.name,
        "parametrization": cfg.parametrization.name,
        **counts,
        "d_model": cfg.model.d_model, "n_layers": cfg.model.n_layers,
        "num_experts": cfg.model.moe.num_experts, "top_k": cfg.model.moe.top_k if cfg.model.moe.num_experts else 0,
        "lr": cfg.optim.lr,           # the sweep axis (the LR at D0 when the horizon rule is on)
        "peak_lr": horizon_lr(cfg.optim, cfg.train.steps * tokens_per_step),  # what the groups trained at
        "seed": cfg.train.seed,
        "batch_tokens": tokens_per_step,
        "steps": state.step,
        "tokens": main_tokens,
        "planned_steps": planned,
        "final_val_loss": state.last_val_loss if state.status == "completed" else None,
        "best_val_loss": state.best_val_loss if state.best_val_loss != float("inf") else None,
        "flops_per_token": flops_per_token,
        "flops": flops_per_token * main_tokens,
        "run_flops": flops_per_token * (main_tokens + state.branch_tokens),
        "wall_time_s": state.wall_time_s,
        "branches": state.branches,
        "data_fingerprint": fingerprint.get("id"),
        "error": None,
    }


def failed_summary(dcfg: DictConfig, error: str) -> dict:
    """The summary of a job that crashed: as much of the config as can be read, and the error."""
    counts = {"n_total": 0, "n_active": 0, "n_active_nonembed": 0}
    flops_per_token = 0.0
    try:  # the crash may be the model config itself (then N is unknown: 0)
        from lrscale.models.config import ModelConfig
        model = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), dcfg.model))
        counts, flops_per_token = model.param_counts(), model.flops_per_token()
    except Exception:  # noqa: BLE001
        pass
    m = dcfg.model
    return {
        "status": "failed", "error": error, "run_dir": str(run_dir_for(dcfg)), "config_hash": config_hash(dcfg),
        "model": m.name, "parametrization": dcfg.parametrization.name, **counts,
        "d_model": m.d_model, "n_layers": m.n_layers, "num_experts": m.moe.num_experts,
        "top_k": m.moe.top_k if m.moe.num_experts else 0, "lr": dcfg.optim.lr, "seed": dcfg.train.seed,
        "batch_tokens": dcfg.train.batch_size * m.seq_len, "steps": 0, "tokens": 0, "planned_steps": [],
        "final_val_loss": None, "best_val_loss": None, "flops_per_token": flops_per_token, "flops": 0.0,
        "run_flops": 0.0, "wall_time_s": 0.0, "branches": [], "data_fingerprint": None,
        "finished_at": time.time(),
    }


def summary_rows(summary: dict) -> list[dict]:
    """One results row per measured token budget: every decay branch, then the run's end.

    A diverged run also gets a `diverged` row (no loss) at each budget it never reached,
    so the table says at which (N, η, D) the LR was too high, not only where it broke.
    """
    base = {k: summary[k] for k in ("config_hash", "model", "parametrization", "n_total", "n_active",
                                    "n_active_nonembed", "d_model", "n_layers", "num_experts", "top_k", "lr",
                                    "seed", "batch_tokens", "run_flops", "wall_time_s", "data_fingerprint")}
    base["peak_lr"] = summary.get("peak_lr", summary["lr"])  # absent in summaries older than the field
    base["run_id"] = Path(summary["run_dir"]).name
    tokens_per_step = summary["batch_tokens"] or 0
    measurements = list(summary.get("branches", []))
    status = "ok" if summary["status"] == "completed" else summary["status"]
    if status == "diverged" and summary.get("planned_steps"):
        reached = {m["steps"] for m in measurements}
        measurements += [{"steps": s, "tokens": s * tokens_per_step, "val_loss": None, "status": "diverged"}
                         for s in summary.get("planned_steps", []) if s not in reached]
    else:
        measurements.append({"steps": summary["steps"], "tokens": summary["tokens"],
                             "val_loss": summary["final_val_loss"], "status": status})
    rows = []
    for i, m in enumerate(sorted(measurements, key=lambda m: m["steps"])):
        rows.append({**base, "branch": i, "steps": m["steps"], "tokens": m["tokens"], "val_loss": m["val_loss"],
                     "status": m["status"], "flops": summary["flops_per_token"] * m["tokens"],
                     "error": summary.get("error")})
    return rows


def _row_key(row: dict) -> tuple:
    return row.get("run_id"), row.get("branch"), row.get("status")


def record_sweep_rows(sweep_dir: Path, summary: dict) -> int:
    """Append the summary's rows that the table lacks; returns how many were written.

    Holds an exclusive lock on the table while it reads and appends (parallel local jobs,
    Slurm array tasks). A last line cut short by a kill is dropped first: appending
    behind it would turn it into a corrupt middle line, and the run it belonged to is
    re-recorded here when its job runs again.
    """
    path = Path(sweep_dir) / RESULTS
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.seek(0)
            lines = f.read().split(b"\n")
            if lines[-1].strip():  # no newline at the end: the writer was killed mid-line
                try:
                    json.loads(lines[-1])
                    f.write(b"\n")  # complete, only the newline is missing
                except ValueError:
                    f.truncate(f.tell() - len(lines[-1]))
                    print(f"[sweep] {path}: dropped a last line cut short by a kill", file=sys.stderr)
                    lines = lines[:-1]
            have = set()
            for line in lines:
                if line.strip():
                    try:
                        have.add(_row_key(json.loads(line)))
                    except ValueError:
                        continue  # analysis.results reports corrupt middle lines
            new = [r for r in summary_rows(summary) if _row_key(r) not in have]
            if new:
                f.seek(0, os.SEEK_END)
                f.write("".join(dumps(r) + "\n" for r in new).encode())
                f.flush()
                os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
    return len(new)


def run_sweep_job(run, dcfg: DictConfig) -> dict:
    """Run one sweep job and make sure the table holds its rows; a crash becomes a `failed`
    row (with the error) so the sweep goes on. Returns the job's summary.

    Every exception type counts as a crash (DCP's CheckpointException is a BaseException),
    except the ones that stop the process: Ctrl-C, SystemExit and a clean interruption
    (interrupt.Interrupted), which writes no row since an interrupted run measured nothing.
    A job whose run directory another process holds is skipped: that process records it."""
    try:
        summary = _run_past_bad_checkpoints(run, dcfg)
    except RunLockedError as e:
        print(f"[sweep] job {run_dir_for(dcfg).name} skipped: {e}", file=sys.stderr)
        return {"status": "skipped", "error": str(e), "wall_time_s": 0.0}
    except BaseException as e:  # noqa: BLE001 - any crash of one job is data for the sweep
        if (stop := interruption(e)) is not None:
            raise stop from None
        err = f"{type(e).__name__}: {e}"
        print(f"[sweep] job {run_dir_for(dcfg).name} failed: {err}", file=sys.stderr)
        traceback.print_exc()
        summary = failed_summary(dcfg, err)
        if _is_main_rank():
            write_json(Path(summary["run_dir"]) / "summary.json", summary)
    # A finished run that is skipped still has its rows: re-recorded if a kill lost them.
    if _is_main_rank():
        record_sweep_rows(Path(dcfg.sweep.dir), summary)
    return summary


def _run_past_bad_checkpoints(run, dcfg: DictConfig, attempts: int = 3) -> dict:
    """run(dcfg); a checkpoint that fails verification is moved aside (kept) and the run
    restarts from the one before it or from scratch, with a warning, instead of failing
    this job on every rerun of the sweep."""
    for _ in range(attempts):
        try:
            return run(dcfg)
        except CorruptCheckpointError as e:
            if _is_main_rank():  # every rank raised it; one moves the directory
                moved = quarantine_checkpoint(e.path)
                print(f"[sweep] warning: job {run_dir_for(dcfg).name}: {e.reason}; moved {e.path} to {moved} "
                      "(kept for inspection) and restarting the run without it", file=sys.stderr)
    return run(dcfg)


def _is_main_rank() -> bool:
    """Rank 0 under torchrun (which sets RANK), or the only process."""
    return int(os.environ.get("RANK", "0")) == 0
