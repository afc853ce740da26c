"""The transfer notebooks (analysis/notebooks/transfer_figures.py, stability_figures.py) on a synthetic
study root laid out like experiments/: they rebuild every study, skip missing axes with a note, and
exit non-zero when a committed number does not reproduce."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lrscale.analysis import synthetic_transfer as st
from lrscale.analysis.transfer import run_analysis

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "analysis" / "notebooks"


def run_notebook(name: str, root: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(NOTEBOOKS / name), "--root", str(root), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Study folders as the lead commits them: the analysis outputs plus results and run_config.csv
    (no run directories)."""
    base = tmp_path_factory.mktemp("studies")
    sweeps, root = base / "sweeps", base / "experiments"
    st.planted_transfer(sweeps / "width", sizes=(32, 64, 128), n_lrs=5, noise=0.002, metrics=True, spike=("sp", 64))
    run_analysis("transfer", sweeps / "width", root / "2026-11-99_transfer_width_cpu", hardware="test CPU")
    st.planted_transfer(sweeps / "gran", axis="model.moe.d_expert", sizes=(16, 32, 64), n_lrs=5,
                        drift={"sp": 0.5, "mup": 0.0})
    run_analysis("transfer", sweeps / "gran", root / "2026-11-99_transfer_granularity_cpu",
                 axis="model.moe.d_expert", hardware="test CPU")
    st.planted_horizon(sweeps / "h", n_lrs=7, budgets=(40960, 81920, 163840, 327680))
    run_analysis("horizon", sweeps / "h", root / "2026-11-99_transfer_horizon_cpu", axis="tokens", hardware="test CPU")
    st.planted_wd(sweeps / "wd", widths=(32, 64), budgets=(40960, 81920), n_lrs=4, n_decays=5,
                  variants={"c": {"mode": "coupled", "convention": "mup", "eta0": 1e-2, "eta_slope": 0.0,
                                  "tau0": 4e5, "tau_width_slope": 0.0, "tau_D_slope": 0.5}})
    run_analysis("weight_decay", sweeps / "wd", root / "2026-11-99_transfer_wd_cpu", hardware="test CPU")
    st.planted_ablation(sweeps / "ab")
    run_analysis("modulewise", sweeps / "ab", root / "2026-11-99_transfer_ablation_cpu", hardware="test CPU")
    shutil.rmtree(sweeps)
    return root


def test_transfer_notebook_rebuilds_every_study_and_skips_missing_axes(root, tmp_path):
    r = run_notebook("transfer_figures.py", root, tmp_path / "out")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[skip] depth" in r.stdout and "[skip] experts" in r.stdout
    assert "5 studies recomputed" in r.stdout and "every committed optimum reproduced" in r.stdout
    for study, f in (("width", "transfer.png"), ("granularity", "transfer.png"), ("horizon", "horizon.png"),
                     ("wd", "weight_decay.png"), ("ablation", "modulewise.png")):
        assert (tmp_path / "out" / f"2026-11-99_transfer_{study}_cpu" / f).exists()


def test_stability_notebook_rebuilds_figures_5_and_6(root, tmp_path):
    r = run_notebook("stability_figures.py", root, tmp_path / "out")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 study with probes rebuilt" in r.stdout and "every committed probe number reproduced" in r.stdout
    assert "eps rule is moot" in r.stdout
    out = tmp_path / "out" / "2026-11-99_transfer_width_cpu"
    for f in ("fig5_stability.png", "fig6_feature_learning.png", "spikes.csv", "feature_learning_slopes.csv",
              "monitors.png"):
        assert (out / f).exists(), f


def test_a_committed_number_that_does_not_reproduce_fails_the_notebooks(root, tmp_path):
    bad = tmp_path / "experiments"
    shutil.copytree(root / "2026-11-99_transfer_ablation_cpu", bad / "2026-11-99_transfer_ablation_cpu")
    table = pd.read_csv(bad / "2026-11-99_transfer_ablation_cpu" / "modulewise.csv")
    table.loc[0, "eq2_C"] *= 1.01
    table.to_csv(bad / "2026-11-99_transfer_ablation_cpu" / "modulewise.csv", index=False)
    r = run_notebook("transfer_figures.py", bad, tmp_path / "out")
    assert r.returncode == 1 and "NOT REPRODUCED" in r.stdout and "eq2_C" in r.stdout

    shutil.copytree(root / "2026-11-99_transfer_width_cpu", bad / "2026-11-99_transfer_width_cpu")
    spikes = pd.read_csv(bad / "2026-11-99_transfer_width_cpu" / "spikes.csv")
    spikes["loss_spikes"] = 2
    spikes.to_csv(bad / "2026-11-99_transfer_width_cpu" / "spikes.csv", index=False)
    r = run_notebook("stability_figures.py", bad, tmp_path / "out2")
    assert r.returncode == 1 and "loss_spikes" in r.stdout
