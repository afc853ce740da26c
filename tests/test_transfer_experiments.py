"""Every Transfer experiment (configs/experiment/transfer_*.yaml) end to end at toy size: the real
config with its sweep, callbacks and analysis, shrunk to a 16-token, 8-step model on a tiny corpus
and to a 2 x 3 grid. Each must finish, write a row for every job, record its study (study.json)
and end with its own analysis written, not failed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (REPO / "configs" / "experiment").glob("transfer_*.yaml"))

# Command-line sweep values replace the experiment's own for the same key (Hydra's basic sweeper).
LRS = "optim.lr=2e-3,4e-3,8e-3"
WD = ["model=transfer_w32,transfer_w64", "optim.lr=4e-3,8e-3", "schedule.decay_branches=[128]"]
SHRINK = {  # experiment -> (its axis and variants at toy size, number of jobs, analysis output)
    "transfer_width": (["model=transfer_w32,transfer_w64", "parametrization=sp,mup", LRS], 12, "transfer.json"),
    "transfer_depth": (["model.n_layers=1,2", "parametrization=sp,completep", LRS], 12, "transfer.json"),
    "transfer_experts": (["model.moe.num_experts=2,4", "parametrization=mup", LRS], 6, "transfer.json"),
    "transfer_granularity": (["model=transfer_gran1,transfer_gran2", "parametrization=mup", LRS], 6,
                             "transfer.json"),
    "transfer_horizon": (["parametrization=mup", LRS, "schedule.decay_branches=[64,128]"], 3, "horizon.json"),
    "transfer_wd": ([*WD, "optim.weight_decay=0.0,1.0"], 8, "weight_decay.json"),
    "transfer_wd_mup": ([*WD, "optim.weight_decay=0.0,1.0"], 8, "weight_decay.json"),
    "transfer_wd_independent": ([*WD, "optim.weight_decay=0.0,0.01"], 8, "weight_decay.json"),
    "transfer_wd_timescale": ([*WD, "optim.wd_timescale_tokens=100,1000"], 8, "weight_decay.json"),
    "transfer_ablation": (["model=transfer_w32", "parametrization=sp_mup_lr,mup", LRS], 6, "modulewise.json"),
    "transfer_ablation_sp": (["model=transfer_w32", LRS], 3, "modulewise.json"),
}


def test_every_transfer_experiment_has_a_toy_setting():
    assert sorted(SHRINK) == EXPERIMENTS


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_transfer_experiment_end_to_end_at_toy_size(experiment, tmp_path, data_cache):
    params, n_jobs, output = SHRINK[experiment]
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "train.py", f"+experiment={experiment}", "hydra/launcher=basic", f"sweep.dir={sweep}",
           "data.max_bytes=400000", "data.val_fraction=0.25", "data.tokenizer.vocab_size=384",
           f"data.cache_dir={data_cache}", "model.seq_len=16", "train.batch_size=2", "train.steps=8",
           "train.eval_every=4", "train.eval_batches=1", "train.ckpt_every=0", "train.probe_every=2",
           "schedule.warmup_steps=1", "logging.progress=false", "logging.print_param_table=false", *params]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [json.loads(line) for line in (sweep / "results.jsonl").read_text().splitlines()]
    assert len({r["run_id"] for r in rows}) == n_jobs
    assert all(r["status"] in ("ok", "diverged") for r in rows), [r["error"] for r in rows if r["error"]]
    study = json.loads((sweep / "study.json").read_text())
    assert study["analysis"] == output.removesuffix(".json")     # the analysis that ran, auto resolved
    assert "analysis failed" not in p.stderr and "analysis written" in p.stderr, p.stderr[-2000:]
    assert (sweep / output).is_file()
