"""The sweep's Hydra side: a progress line per job, and the fit when the sweep ends.

A sweep is a Hydra multirun over model presets x learning rates (configs/experiment/
fit_grid.yaml); each job is one `train.run` with WSD decay branches, idempotent and
recorded in `<sweep.dir>/results.jsonl` (training/summary.py). `SweepCallback`, listed
under `hydra.callbacks`, adds what no single job can do:

    on_multirun_start  refuse keys outside the schema; write <sweep.dir>/sweep_plan.json (the job
                       list), print its size
    on_job_start       "[sweep] job k/n model=... optim.lr=... | elapsed ..."
    on_job_end         "[sweep] job k/n done: completed, val loss ..., 42 s"
    on_multirun_end    results.csv, then the fit: fit.json, report.md, figures (analysis/)

The job-side hooks run where the job runs (a joblib worker, a Slurm node), so they read
the plan from the sweep directory instead of from memory.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .config import check_known_keys
from .io import read_jsonl, write_json, write_text

PLAN = "sweep_plan.json"


def job_overrides(config: DictConfig) -> list[list[str]] | None:
    """The jobs the basic sweeper will launch: hydra.sweeper.params x command-line sweeps.

    None for another sweeper (its job list is not a fixed product)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not str(config.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    params = config.hydra.sweeper.get("params") or {}
    args = [f"{k}={v}" for k, v in params.items()]
    args += OmegaConf.to_container(config.hydra.overrides.task, resolve=False)
    overrides = OverridesParser.create().parse_overrides(args)
    return BasicSweeper.split_arguments(overrides, None)[0]


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _read_plan(sweep_dir: Path) -> dict:
    try:
        return json.loads((sweep_dir / PLAN).read_text())
    except (OSError, ValueError):
        return {}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.machine()} CPU"


def hardware_line(sweep_dir: Path, hw: Any) -> str:
    """Where the jobs ran, for every figure's caption: a run's environment.json (GPU name,
    core count) and the hardware config. The CPU model is this machine's: right for
    local sweeps; on Slurm the GPU name is what tells."""
    env = {}
    for path in sorted((sweep_dir / "runs").glob("*/environment.json"))[:1]:
        env = json.loads(path.read_text())
    if env.get("gpu"):
        where = env["gpu"]
    else:
        cores = env.get("cpu_count") or os.cpu_count()
        threads = hw.num_threads if hw.num_threads else "default"
        where = f"{_cpu_model()}, {cores} cores, {threads} torch thread(s) per job"
    return f"{where}, {hw.dtype}"


def export_csv(sweep_dir: Path) -> Path | None:
    """results.jsonl -> results.csv (the last row per (run, branch), as the fits see it)."""
    import pandas as pd

    rows = read_jsonl(sweep_dir / "results.jsonl")
    if not rows:
        return None
    df = pd.DataFrame.from_records(rows).drop_duplicates(subset=["run_id", "branch"], keep="last")
    path = sweep_dir / "results.csv"
    write_text(path, df.to_csv(index=False))
    return path


def fit_sweep_dir(sweep_dir: Path, hardware: str, *, n_boot: int = 1000, window: int | None = None,
                  extrapolate_tokens: list[float] | None = None) -> int:
    """Export results.csv and fit the LR law (`python -m analysis.fit`); returns its exit code.

    0: fitted; 3: Eq. 6 not fitted but the partial report was written; 2: nothing to fit.
    """
    from lrscale.analysis.fit import main as fit_main

    if export_csv(sweep_dir) is None:
        print(f"[sweep] {sweep_dir}/results.jsonl has no rows: nothing to fit", file=sys.stderr)
        return 2
    argv = [str(sweep_dir), "--all-n-kinds", "--hardware", hardware, "--n-boot", str(n_boot)]
    if window:
        argv += ["--window", str(window)]
    if extrapolate_tokens:
        argv += ["--extrapolate-tokens", *(str(int(d)) for d in extrapolate_tokens)]
    print(f"[sweep] fitting: python -m analysis.fit {shlex.join(argv)}", file=sys.stderr)
    return fit_main(argv)


class SweepCallback(Callback):
    """Registered in an experiment's `hydra.callbacks`. `fit=false` skips the fit; `n_boot`:
    bootstrap resamples of Eq. 6's intervals; `window`: fit Eq. 2 on the K LRs nearest
    each curve's lowest loss (None: all LRs, as the paper)."""

    def __init__(self, fit: bool = True, n_boot: int = 1000, window: int | None = None):
        self.fit, self.n_boot, self.window = fit, n_boot, window
        self.t0 = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        check_known_keys(config)  # a '+' typo would fail every job the same way: refuse it once, up front
        sweep_dir = Path(config.sweep.dir)
        jobs = job_overrides(config)
        self.t0 = time.time()
        write_json(sweep_dir / PLAN, {"started_at": self.t0, "n_jobs": len(jobs) if jobs else None, "jobs": jobs})
        done = len({r.get("run_id") for r in read_jsonl(sweep_dir / "results.jsonl") if r.get("status") != "failed"})
        print(f"[sweep] {sweep_dir}: {len(jobs) if jobs else '?'} jobs; results.jsonl already holds {done} "
              f"finished run(s), whose jobs are skipped", file=sys.stderr)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        plan = _read_plan(Path(config.sweep.dir))
        k, n = config.hydra.job.num + 1, plan.get("n_jobs") or "?"
        elapsed = time.time() - plan.get("started_at", time.time())
        what = " ".join(config.hydra.overrides.task)
        print(f"[sweep] job {k}/{n} {what} | sweep elapsed {_duration(elapsed)}", file=sys.stderr, flush=True)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        plan = _read_plan(Path(config.sweep.dir))
        k, n = config.hydra.job.num + 1, plan.get("n_jobs") or "?"
        try:
            s = job_return.return_value or {}
        except Exception as e:  # noqa: BLE001 - the job raised: say so, Hydra reports it
            s = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        loss = s.get("final_val_loss")
        loss_txt = f", final val loss {loss:.4f}" if isinstance(loss, float) else ""
        err = f" ({s['error']})" if s.get("error") else ""
        print(f"[sweep] job {k}/{n} done: {s.get('status', '?')}{loss_txt}{err}, "
              f"{s.get('wall_time_s', 0.0):.0f} s of training", file=sys.stderr, flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.sweep.dir)
        print(f"[sweep] all jobs returned after {_duration(time.time() - self.t0)}", file=sys.stderr)
        if not (self.fit and config.sweep.fit):
            export_csv(sweep_dir)
            return
        try:  # the sweep's data is safe on disk: a failed fit must not fail the sweep
            rc = fit_sweep_dir(sweep_dir, hardware_line(sweep_dir, config.hardware), n_boot=self.n_boot,
                               window=self.window, extrapolate_tokens=list(config.sweep.extrapolate_tokens))
        except Exception as e:  # noqa: BLE001
            print(f"[sweep] the fit failed ({type(e).__name__}: {e}); refit with "
                  f"`python -m analysis.fit {sweep_dir}`", file=sys.stderr)
            return
        if rc == 0:
            print(f"[sweep] fit.json, report.md and figures written to {sweep_dir}", file=sys.stderr)
        else:
            print(f"[sweep] the fit is incomplete (analysis.fit exit {rc}); see {sweep_dir}/report.md if "
                  "written, add sizes/LRs and re-run the same command (finished jobs are skipped)",
                  file=sys.stderr)
