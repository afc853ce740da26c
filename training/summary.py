"""What a finished run reports: summary.json, and its rows in a sweep's results table."""
from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

from omegaconf import DictConfig

from optim import ScheduleConfig, wsd_decay_steps

from .io import append_jsonl, write_json
from .rundir import config_hash, run_dir_for


def branch_plan(cfg: ScheduleConfig, total_steps: int, tokens_per_step: int) -> list[tuple[int, int]]:
    """(fork step, end step) of each decay branch; budgets at or past the run's end are the main run."""
    plan = []
    for budget in sorted(set(cfg.decay_branches)):
        end = round(budget / tokens_per_step)
        if end < 1:
            raise ValueError(f"schedule.decay_branches: budget {budget} tokens is less than one step "
                             f"({tokens_per_step} tokens)")
        if end >= total_steps:
            continue
        start = end - wsd_decay_steps(cfg, end)
        if start < cfg.warmup_steps:
            raise ValueError(f"schedule.decay_branches: budget {budget} tokens ({end} steps) would fork at "
                             f"step {start}, inside the warmup ({cfg.warmup_steps} steps); use larger budgets")
        plan.append((start, end))
    return plan


def existing_summary(run_dir: Path, resume: str) -> dict | None:
    """A finished run's summary (so re-running is a no-op), or None to (re)start it."""
    if resume not in ("auto", "never"):
        raise ValueError(f"run.resume='{resume}' is unknown; valid: auto, never")
    path = run_dir / "summary.json"
    if resume == "never" and run_dir.exists() and any(run_dir.iterdir()):
        raise FileExistsError(f"run directory {run_dir} exists and run.resume=never; "
                              "pick another run.name or use run.resume=auto")
    if path.exists():
        try:
            summary = json.loads(path.read_text())
        except json.JSONDecodeError:
            print(f"[train] {path} is corrupt; the run will be resumed or redone", file=sys.stderr)
            return None
        # A crash may be transient (out of memory, a killed node): retry it. Diverged is data.
        return None if summary.get("status") == "failed" else summary
    return None


def make_summary(cfg, dcfg: DictConfig, state, counts: dict, flops_per_token: float, tokens_per_step: int,
                 fingerprint: dict, chash: str) -> dict:
    main_tokens = state.tokens
    return {
        "status": state.status,
        "run_dir": str(run_dir_for(dcfg)),
        "config_hash": chash,
        "model": cfg.model.name,
        "parametrization": cfg.parametrization.name,
        **counts,
        "d_model": cfg.model.d_model, "n_layers": cfg.model.n_layers,
        "num_experts": cfg.model.moe.num_experts, "top_k": cfg.model.moe.top_k if cfg.model.moe.num_experts else 0,
        "lr": cfg.optim.lr,
        "seed": cfg.train.seed,
        "batch_tokens": tokens_per_step,
        "steps": state.step,
        "tokens": main_tokens,
        "final_val_loss": state.last_val_loss if state.status == "completed" else None,
        "best_val_loss": state.best_val_loss if state.best_val_loss != float("inf") else None,
        "flops_per_token": flops_per_token,
        "flops": flops_per_token * main_tokens,
        "run_flops": flops_per_token * (main_tokens + state.branch_tokens),
        "wall_time_s": state.wall_time_s,
        "branches": state.branches,
        "data_fingerprint": fingerprint.get("id"),
    }


def summary_rows(summary: dict) -> list[dict]:
    """One results row per measured token budget: every decay branch, then the run's end."""
    base = {k: summary[k] for k in ("config_hash", "model", "parametrization", "n_total", "n_active",
                                    "n_active_nonembed", "d_model", "n_layers", "num_experts", "top_k", "lr",
                                    "seed", "batch_tokens", "run_flops", "wall_time_s", "data_fingerprint")}
    base["run_id"] = Path(summary["run_dir"]).name
    rows = []
    measurements = list(summary.get("branches", []))
    measurements.append({"steps": summary["steps"], "tokens": summary["tokens"],
                         "val_loss": summary["final_val_loss"],
                         "status": "ok" if summary["status"] == "completed" else summary["status"]})
    for i, m in enumerate(sorted(measurements, key=lambda m: m["steps"])):
        rows.append({**base, "branch": i, "steps": m["steps"], "tokens": m["tokens"], "val_loss": m["val_loss"],
                     "status": m["status"], "flops": summary["flops_per_token"] * m["tokens"],
                     "error": summary.get("error")})
    return rows


def record_sweep_rows(sweep_dir: Path, summary: dict) -> None:
    for row in summary_rows(summary):
        append_jsonl(sweep_dir / "results.jsonl", row)


def run_sweep_job(run, dcfg: DictConfig) -> None:
    """Run one sweep job; a crash becomes a `failed` row so the sweep goes on."""
    try:
        run(dcfg)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001 - any crash of one job is data for the sweep
        run_dir = run_dir_for(dcfg)
        err = f"{type(e).__name__}: {e}"
        print(f"[sweep] job {run_dir.name} failed: {err}", file=sys.stderr)
        traceback.print_exc()
        summary = {
            "status": "failed", "error": err, "run_dir": str(run_dir), "config_hash": config_hash(dcfg),
            "model": dcfg.model.name, "parametrization": dcfg.parametrization.name,
            "n_total": None, "n_active": None, "n_active_nonembed": None, "d_model": dcfg.model.d_model,
            "n_layers": dcfg.model.n_layers, "num_experts": dcfg.model.moe.num_experts, "top_k": dcfg.model.moe.top_k,
            "lr": dcfg.optim.lr, "seed": dcfg.train.seed, "batch_tokens": None, "steps": 0, "tokens": 0,
            "final_val_loss": None, "flops_per_token": 0.0, "run_flops": 0.0, "wall_time_s": 0.0, "branches": [],
            "data_fingerprint": None, "finished_at": time.time(),
        }
        write_json(run_dir / "summary.json", summary)
        record_sweep_rows(Path(dcfg.sweep.dir), summary)
