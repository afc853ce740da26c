"""What a sweep does around its jobs (Hydra callbacks, listed under `hydra.callbacks` in
configs/experiment/*.yaml). These are entry points: they call the training and analysis
libraries, and neither library knows about them.

    SweepCallback     sweep_plan.json and a progress line per job; when the multirun ends,
                      results.csv and (fit=true) the Fitting paradigm's fit: fit.json, report.md,
                      figures (analysis.report.fit_and_report)
    TransferCallback  the transfer analyses (analysis.transfer.run_analysis) into sweep.dir

The job-side hooks run where the job runs (a joblib worker, a Slurm node), so they read the plan
from the sweep directory instead of from memory. A failing analysis never fails the sweep: the
runs are on disk and the CLIs (python -m analysis.fit / analysis.transfer) redo it.
"""
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Iterable, List, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

PLAN = "sweep_plan.json"


def job_overrides(config: DictConfig) -> Optional[List[List[str]]]:
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


def hardware_line(sweep_dir: Path, hw: Any) -> str:
    """Where the jobs ran, for every figure's caption: a run's environment.json (GPU name, core
    count) and the hardware config. The CPU model is this machine's: right for local sweeps; on
    Slurm the GPU name is what tells."""
    env = {}
    for path in sorted((Path(sweep_dir) / "runs").glob("*/environment.json"))[:1]:
        env = json.loads(path.read_text())
    if env.get("gpu"):
        where = env["gpu"]
    else:
        cores = env.get("cpu_count") or os.cpu_count()
        threads = hw.num_threads if hw.num_threads else "default"
        where = f"{_cpu_model()}, {cores} cores, {threads} torch thread(s) per job"
    return f"{where}, {hw.dtype}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.machine()} CPU"


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _read_plan(sweep_dir: Path) -> dict:
    try:
        return json.loads((sweep_dir / PLAN).read_text())
    except (OSError, ValueError):
        return {}


class SweepCallback(Callback):
    """`fit=false` skips the fit; `n_boot`: bootstrap resamples of Eq. 6's intervals; `window`: fit
    Eq. 2 on the K LRs nearest each curve's lowest loss (None: all LRs, as the paper)."""

    def __init__(self, fit: bool = True, n_boot: int = 1000, window: Optional[int] = None):
        self.fit, self.n_boot, self.window = fit, n_boot, window
        self.t0 = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from lrscale.training.config import check_known_keys
        from lrscale.training.io import read_jsonl, write_json
        from lrscale.training.results_table import RESULTS_FILE

        check_known_keys(config)  # a '+' typo would fail every job the same way: refuse it once, up front
        sweep_dir = Path(config.sweep.dir)
        jobs = job_overrides(config)
        self.t0 = time.time()
        write_json(sweep_dir / PLAN, {"started_at": self.t0, "n_jobs": len(jobs) if jobs else None, "jobs": jobs})
        done = len({r.get("run_id") for r in read_jsonl(sweep_dir / RESULTS_FILE) if r.get("status") != "failed"})
        print(f"[sweep] {sweep_dir}: {len(jobs) if jobs else '?'} jobs; {RESULTS_FILE} already holds {done} "
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
        from lrscale.training.results_table import export_csv

        sweep_dir = Path(config.sweep.dir)
        print(f"[sweep] all jobs returned after {_duration(time.time() - self.t0)}", file=sys.stderr)
        if export_csv(sweep_dir) is None:
            print(f"[sweep] {sweep_dir} has no results yet: nothing to fit", file=sys.stderr)
            return
        if self.fit and config.sweep.fit:
            fit_sweep_dir(sweep_dir, hardware_line(sweep_dir, config.hardware), n_boot=self.n_boot,
                          window=self.window, extrapolate_tokens=list(config.sweep.extrapolate_tokens))


def fit_sweep_dir(sweep_dir: Path, hardware: str, *, n_boot: int = 1000, window: Optional[int] = None,
                  extrapolate_tokens: Optional[List[float]] = None) -> bool:
    """The Fitting paradigm's fit of a sweep directory, with all three N counts; True when Eq. 6
    was fitted. A failure is printed with the command that redoes it, never raised."""
    from lrscale.analysis.report import fit_and_report

    ext = [int(d) for d in (extrapolate_tokens or [])] or None
    again = f"python -m analysis.fit {sweep_dir} --all-n-kinds"
    try:
        sf, _ = fit_and_report(sweep_dir, hardware=hardware, n_boot=n_boot, window=window, extrapolate_tokens=ext,
                               command=f"{again} --n-boot {n_boot}" + (f" --window {window}" if window else ""))
    except Exception as e:  # noqa: BLE001 - the sweep's data is safe on disk: a failed fit must not fail it
        print(f"[sweep] the fit failed ({type(e).__name__}: {e}); refit with `{again}`", file=sys.stderr)
        return False
    if sf.law is None:
        print(f"[sweep] Eq. 6 could not be fitted (too few bracketed optima); see {sweep_dir}/report.md, add sizes "
              "or LRs and re-run the same command (finished jobs are skipped)", file=sys.stderr)
        return False
    print(f"[sweep] fit.json, report.md and figures written to {sweep_dir}", file=sys.stderr)
    return True


class TransferCallback(Callback):
    """The transfer analyses into sweep.dir when the multirun ends. `analysis`: auto | transfer |
    horizon | weight_decay | modulewise (analysis/transfer.py)."""

    def __init__(self, axis: str = "d_model", variant_keys: Iterable[str] = (), analysis: str = "auto"):
        self.axis = axis
        self.variant_keys = list(variant_keys or ())
        self.analysis = analysis

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from lrscale.analysis.transfer import write_study

        write_study(config.sweep.dir, analysis=self.analysis, axis=self.axis, variant_keys=self.variant_keys)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from lrscale.analysis.transfer import resolve_analysis, run_analysis

        sweep_dir = Path(config.sweep.dir)
        again = f"python -m analysis.transfer {sweep_dir}"   # study.json (on_multirun_start) holds the flags
        try:
            run_analysis(self.analysis, sweep_dir, axis=self.axis, variant_keys=self.variant_keys,
                         hardware=hardware_line(sweep_dir, config.hardware))
            name = resolve_analysis(self.analysis, self.axis)
            print(f"[transfer] {name} analysis written to {sweep_dir}", file=sys.stderr)
        except Exception as e:  # noqa: BLE001 - the sweep's data is safe; re-plot by hand
            print(f"[transfer] analysis failed ({type(e).__name__}: {e}); re-run `{again}`", file=sys.stderr)
