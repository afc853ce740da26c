"""The sweep runner: `python train.py +experiment=fit_grid` as a Hydra multirun whose jobs
are idempotent, whose crashes are data, whose table survives kills, and whose end
writes the fit (training/results_table.py, training/sweep_job.py, hydra_plugins/lrscale/callbacks.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from lrscale.analysis.synthetic import synthetic_rows
from lrscale.training.io import read_jsonl
from lrscale.training.results_table import record_rows, summary_rows
from hydra_plugins.lrscale.callbacks import SweepCallback, job_overrides

REPO = Path(__file__).resolve().parents[1]
FIGURES = ("fig1a_loss_vs_tokens.png", "fig1b_loss_vs_lr.png", "fig2_optimal_lr.png", "fig7_search_cost.png")


def tiny_sweep(sweep_dir: Path, cache: Path) -> list[str]:
    """fit_grid shrunk to 2 LRs x (a valid width, an impossible one: 33 is not a multiple
    of the 2 heads), 8 steps with one decay branch: 2 jobs train, 2 crash."""
    return [
        sys.executable, "train.py", "+experiment=fit_grid", "hydra/launcher=basic", "model=fit_xs",
        "model.d_model=32,33", "optim.lr=1e-3,3e-3", "model.seq_len=32", "model.moe.num_experts=4",
        "train.batch_size=4", "train.steps=8", "train.eval_every=1000", "train.eval_batches=2", "train.ckpt_every=4",
        "schedule.warmup_steps=2", "schedule.decay_branches=[512]",
        "data.max_bytes=400000", "data.val_fraction=0.3", "data.tokenizer.vocab_size=384",
        f"data.cache_dir={cache}", f"sweep.dir={sweep_dir}", "logging.progress=false",
        "hydra.callbacks.sweep.n_boot=20",
    ]


def run_sweep(cmd: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LRSCALE_CACHE"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def keys(rows: list[dict]) -> list[tuple]:
    return [(r["run_id"], r["branch"], r["status"]) for r in rows]


def test_sweep_records_crashes_resumes_and_never_duplicates(tmp_path, data_cache):
    sweep_dir = tmp_path / "sweep"
    cmd = tiny_sweep(sweep_dir, data_cache)
    first = run_sweep(cmd)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "[sweep] job 4/4" in first.stderr

    rows = read_jsonl(sweep_dir / "results.jsonl")
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(ok) == 2 * 2 and {r["tokens"] for r in ok} == {512, 1024}  # 2 runs x (branch + end)
    assert len(failed) == 2 and all("n_heads" in r["error"] for r in failed)
    assert len(set(keys(rows))) == len(rows)
    assert (sweep_dir / "results.csv").exists()  # the fit itself needs >= 3 LRs: reported, not fatal

    # A kill lost one run's rows after its summary.json was written, and cut the last line short.
    finished = {r["run_id"] for r in ok}
    lost = sorted(finished)[0]
    kept = [json.dumps(r) for r in rows if r["run_id"] != lost]
    (sweep_dir / "results.jsonl").write_text("\n".join(kept[:-1]) + "\n" + kept[-1][:25])
    mtimes = {p: p.stat().st_mtime_ns for p in (sweep_dir / "runs").glob("*/metrics.jsonl")}

    second = run_sweep(cmd)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stderr.count("already finished") == 2
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # nothing trained again
    again = read_jsonl(sweep_dir / "results.jsonl")
    assert sorted(keys(again)) == sorted(keys(rows))  # lost rows re-recorded, none twice
    for line in (sweep_dir / "results.jsonl").read_text().splitlines():
        json.loads(line)  # the cut line is gone, not buried in the middle


def test_record_rows_drops_a_cut_last_line_and_is_idempotent(tmp_path):
    summary = {"status": "completed", "run_dir": "runs/a", "config_hash": "h", "model": "m", "parametrization": "sp",
               "n_total": 10, "n_active": 8, "n_active_nonembed": 4, "d_model": 8, "n_layers": 1, "num_experts": 0,
               "top_k": 0, "lr": 1e-3, "seed": 0, "batch_tokens": 16, "run_flops": 1.0, "wall_time_s": 1.0,
               "data_fingerprint": "f", "flops_per_token": 6.0, "steps": 4, "tokens": 64, "final_val_loss": 2.0,
               "branches": [{"steps": 2, "tokens": 32, "val_loss": 3.0, "status": "ok"}]}
    path = tmp_path / "results.jsonl"
    path.write_text('{"run_id": "other", "branch": 0, "status": "ok"}\n{"run_id": "cut", "bra')
    assert record_rows(tmp_path, summary) == 2
    assert record_rows(tmp_path, summary) == 0
    assert keys(read_jsonl(path)) == [("other", 0, "ok"), *keys(summary_rows(summary))]


def test_job_count_combines_sweeper_params_and_command_line():
    cfg = OmegaConf.create({"hydra": {
        "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                    "params": {"model": "a,b,c", "optim.lr": "1,2,3,4"}},
        "overrides": {"task": ["optim.lr=5,6", "train.steps=3"]}}})
    jobs = job_overrides(cfg)
    assert len(jobs) == 3 * 2 and ["model=a", "optim.lr=5", "train.steps=3"] in jobs


def test_sweep_end_writes_results_csv_fit_and_figures(tmp_path):
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()
    rows = synthetic_rows((2e6, 6e6, 2e7, 6e7), (1e8, 3e8, 9e8), lr_steps=(-2, -1, 0, 1, 2), seed=0)
    (sweep_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = OmegaConf.create({"sweep": {"dir": str(sweep_dir), "fit": True, "extrapolate_tokens": []},
                            "hardware": {"num_threads": 1, "dtype": "float32"}})
    SweepCallback(n_boot=50).on_multirun_end(cfg)
    fit = json.loads((sweep_dir / "fit.json").read_text())
    assert fit["law"]["alpha"] < 0 and fit["meta"]["hardware"].endswith("float32")
    for name in ("results.csv", "report.md", *FIGURES):
        assert (sweep_dir / name).stat().st_size > 0, name
