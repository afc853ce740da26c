"""One job of a sweep (a Hydra multirun with sweep.enabled=true): run it, and make sure the
sweep's results table holds its rows, whatever happened.

A crash of one job is data for the sweep, never the end of it: every exception type becomes a
`failed` row with the error (DCP's CheckpointException is a BaseException), except the ones that
stop the process: Ctrl-C, SystemExit and a clean interruption (interrupt.Interrupted), which
writes no row since an interrupted run measured nothing. A checkpoint that fails verification
is moved aside (kept) and the run restarted without it. A job whose run directory another
process holds is skipped: that process records it.
"""
from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .checkpoint import CorruptCheckpointError, quarantine_checkpoint
from .errors import interruption
from .results_table import record_rows
from .rundir import identify
from .runlock import RunLockedError
from .summary import RunSummary, write_summary

if TYPE_CHECKING:
    from omegaconf import DictConfig


def run_sweep_job(run: Callable[[DictConfig], dict], dcfg: DictConfig) -> dict:
    """run(dcfg) as a sweep job; returns its summary (or {"status": "skipped"})."""
    ident = identify(dcfg)
    try:
        summary = _run_past_bad_checkpoints(run, dcfg, ident.name)
    except RunLockedError as e:
        print(f"[sweep] job {ident.name} skipped: {e}", file=sys.stderr)
        return {"status": "skipped", "error": str(e), "wall_time_s": 0.0}
    except BaseException as e:  # noqa: BLE001 - any crash of one job is data for the sweep
        if (stop := interruption(e)) is not None:
            raise stop from None
        err = f"{type(e).__name__}: {e}"
        print(f"[sweep] job {ident.name} failed: {err}", file=sys.stderr)
        traceback.print_exc()
        summary = RunSummary.of_crash(dcfg, ident, err).to_dict()
        if is_main_rank():
            write_summary(ident.dir, summary)
    # A finished run that is skipped still has its rows: re-recorded if a kill lost them.
    if is_main_rank():
        record_rows(Path(dcfg.sweep.dir), summary)
    return summary


def _run_past_bad_checkpoints(run, dcfg: DictConfig, name: str, attempts: int = 3) -> dict:
    """run(dcfg); a checkpoint that fails verification is moved aside (kept) and the run restarts
    from the one before it or from scratch, with a warning, instead of failing this job on every
    rerun of the sweep."""
    for _ in range(attempts):
        try:
            return run(dcfg)
        except CorruptCheckpointError as e:
            if is_main_rank():  # every rank raised it; one moves the directory
                moved = quarantine_checkpoint(e.path)
                print(f"[sweep] warning: job {name}: {e.reason}; moved {e.path} to {moved} (kept for inspection) "
                      "and restarting the run without it", file=sys.stderr)
    return run(dcfg)


def is_main_rank() -> bool:
    """Rank 0 under torchrun (which sets RANK), or the only process."""
    return int(os.environ.get("RANK", "0")) == 0
