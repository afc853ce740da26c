"""A sweep's results table, `<sweep.dir>/results.jsonl`: one row per measurement, i.e. a
(run, token budget) pair: the validation loss at the end of one WSD decay branch or of the run
itself (PAPER.md §2, "decay branches"). `COLUMNS` is its schema; analysis/results.py reads it.

Rows are appended under a file lock, one fsync'ed line each, and only if that (run, branch,
status) is not in the table yet, so re-running a job (or a whole sweep) never duplicates a
measurement and re-records one that a kill lost.
"""
from __future__ import annotations

import fcntl
import json
import os
import sys
from pathlib import Path

from .io import dumps, read_jsonl, write_text

RESULTS_FILE = "results.jsonl"

N_KINDS = ("n_total", "n_active", "n_active_nonembed")  # the three ways N is counted (PAPER.md §2)

COLUMNS = (
    "run_id", "config_hash", "status", "model", "parametrization",
    *N_KINDS, "d_model", "n_layers", "num_experts", "top_k",
    "lr", "tokens", "steps", "branch", "val_loss", "flops", "run_flops",
    "wall_time_s", "batch_tokens", "seed", "error", "data_fingerprint",
)
ROW_STATUSES = ("ok", "diverged", "failed")  # an interrupted run measured nothing: it has no rows

_FROM_SUMMARY = ("config_hash", "model", "parametrization", *N_KINDS, "d_model", "n_layers", "num_experts",
                 "top_k", "lr", "peak_lr", "seed", "batch_tokens", "run_flops", "wall_time_s", "data_fingerprint",
                 "error")


def summary_rows(summary: dict) -> list[dict]:
    """One row per measured token budget of a run's summary: every decay branch, then the
    run's end. A diverged run also gets a `diverged` row (no loss) at each budget it never
    reached, so the table says at which (N, η, D) the LR was too high, not only where it broke."""
    base = {k: summary.get(k) for k in _FROM_SUMMARY}
    base["peak_lr"] = summary.get("peak_lr") or summary["lr"]
    base["run_id"] = Path(summary["run_dir"]).name
    tokens_per_step = summary["batch_tokens"] or 0
    measurements = list(summary.get("branches", []))
    status = "ok" if summary["status"] == "completed" else summary["status"]
    if status == "diverged" and summary.get("planned_steps"):
        reached = {m["steps"] for m in measurements}
        measurements += [{"steps": s, "tokens": s * tokens_per_step, "val_loss": None, "status": "diverged"}
                         for s in summary["planned_steps"] if s not in reached]
    else:
        measurements.append({"steps": summary["steps"], "tokens": summary["tokens"],
                             "val_loss": summary["final_val_loss"], "status": status})
    return [{**base, "branch": i, "steps": m["steps"], "tokens": m["tokens"], "val_loss": m["val_loss"],
             "status": m["status"], "flops": summary["flops_per_token"] * m["tokens"]}
            for i, m in enumerate(sorted(measurements, key=lambda m: m["steps"]))]


def _row_key(row: dict) -> tuple:
    return row.get("run_id"), row.get("branch"), row.get("status")


def record_rows(sweep_dir: Path, summary: dict) -> int:
    """Append the summary's rows that the table lacks; returns how many were written.

    Holds an exclusive lock on the table while it reads and appends (parallel local jobs,
    Slurm array tasks). A last line cut short by a kill is dropped first: appending behind it
    would turn it into a corrupt middle line, and the run it belonged to is re-recorded here
    when its job runs again."""
    path = Path(sweep_dir) / RESULTS_FILE
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
                        continue  # analysis/results.py reports corrupt middle lines
            new = [r for r in summary_rows(summary) if _row_key(r) not in have]
            if new:
                f.seek(0, os.SEEK_END)
                f.write("".join(dumps(r) + "\n" for r in new).encode())
                f.flush()
                os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
    return len(new)


def export_csv(sweep_dir: Path) -> Path | None:
    """results.jsonl -> results.csv (the last row per (run, branch), as the fits see it)."""
    import pandas as pd

    rows = read_jsonl(Path(sweep_dir) / RESULTS_FILE)
    if not rows:
        return None
    df = pd.DataFrame.from_records(rows).drop_duplicates(subset=["run_id", "branch"], keep="last")
    path = Path(sweep_dir) / "results.csv"
    write_text(path, df.to_csv(index=False))
    return path
