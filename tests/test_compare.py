"""Fitting vs Transfer at a held-out target (analysis/compare.py and the staged sweeper).

The arithmetic of the verdict (regret, error ratio, seed spread, head-to-head margin, compute)
is checked on synthetic sweep tables whose answers are written out by hand; the predictions on
tables drawn from a planted law; the whole pipeline end to end at toy size, including a re-run
that repeats nothing and a job lost to a kill that is redone.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lrscale.analysis import compare as cmp
from lrscale.analysis.results import load_results
from lrscale.analysis.synthetic import SyntheticTruth, synthetic_rows

REPO = Path(__file__).resolve().parents[1]


def write_table(path: Path, runs: list[dict], *, parametrization: str = "sp", tokens: int = 1000,
                model: str = "target") -> Path:
    """A results.jsonl of single-budget runs: each run dict gives lr, loss (None = diverged),
    seed and run_flops."""
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "results.jsonl", "w") as f:
        for i, r in enumerate(runs):
            loss = r["loss"]
            f.write(json.dumps({
                "run_id": f"{model}-{parametrization}-{i}", "config_hash": f"h{i}", "model": model,
                "parametrization": parametrization, "status": "ok" if loss is not None else "diverged",
                "n_total": 1000, "n_active": 800, "n_active_nonembed": 500, "d_model": 64, "n_layers": 2,
                "num_experts": 0, "top_k": 0, "lr": r["lr"], "tokens": tokens, "steps": 10, "branch": 0,
                "val_loss": loss, "flops": r.get("run_flops", 1.0), "run_flops": r.get("run_flops", 1.0),
                "wall_time_s": 1.0, "batch_tokens": 100, "seed": r.get("seed", 0), "error": None,
                "data_fingerprint": "fp"}) + "\n")
    return path


# ---- the LR lattice ------------------------------------------------------------------------

def test_lattice_points_brackets_and_extensions():
    lat = cmp.Lattice(1e-3, 2 ** 0.5)
    assert lat.index(2e-3) == 2 and lat.index(2.828e-3) == 3 and lat.index(7.071e-4) == -1
    assert lat.lr(3) == 2.828e-3 and lat.lr(-1) == 7.071e-4  # 4 significant digits
    # 7 points centred on one prediction: k = -1 .. 5 around k = 2
    assert lat.around([2.1e-3], 7) == [7.071e-4, 1e-3, 1.414e-3, 2e-3, 2.828e-3, 4e-3, 5.657e-3]
    # two predictions 6 steps apart: the span (7 points) already exceeds 6
    assert lat.around([1e-3, 8e-3], 6) == [1e-3, 1.414e-3, 2e-3, 2.828e-3, 4e-3, 5.657e-3, 8e-3]
    # span k = 0..2 (3 points), 6 wanted: 3 more, 1 below and 2 above
    assert lat.around([1e-3, 2e-3], 6) == [7.071e-4, 1e-3, 1.414e-3, 2e-3, 2.828e-3, 4e-3]
    assert lat.beyond([1e-3, 2e-3], "below") == [7.071e-4, 5e-4]
    assert lat.beyond([1e-3, 2e-3], "above", 1) == [2.828e-3]


# ---- verdict arithmetic, by hand -----------------------------------------------------------------

def test_seed_spread_is_the_pooled_unbiased_standard_deviation(tmp_path):
    a = write_table(tmp_path / "a", [{"lr": 1e-3, "loss": 5.00}, {"lr": 1e-3, "loss": 5.02, "seed": 1},
                                     {"lr": 2e-3, "loss": 4.90}, {"lr": 2e-3, "loss": 4.94, "seed": 1},
                                     {"lr": 4e-3, "loss": 5.10}])  # one seed: no information
    sigma, dof = cmp.seed_spread(load_results(a))
    # per-LR unbiased variances 0.0002 and 0.0008 (1 dof each): pooled 0.0005
    assert dof == 2 and sigma == pytest.approx(math.sqrt(0.0005), rel=1e-9)
    assert cmp.seed_spread(load_results(write_table(tmp_path / "b", [{"lr": 1e-3, "loss": 5.0}]))) == (
        pytest.approx(math.nan, nan_ok=True), 0)


def test_ground_truth_verdict_and_head_to_head_by_hand(tmp_path):
    root = tmp_path / "cmp"
    base = root / "targets" / "t"
    # SP direct sweep: best seed mean at 2e-3, (4.90 + 4.94) / 2 = 4.92; a diverged run at 1.6e-2.
    write_table(base / "sp", [{"lr": 1e-3, "loss": 5.00, "run_flops": 10}, {"lr": 1e-3, "loss": 5.02, "seed": 1},
                              {"lr": 2e-3, "loss": 4.90, "run_flops": 10}, {"lr": 2e-3, "loss": 4.94, "seed": 1},
                              {"lr": 4e-3, "loss": 4.96, "run_flops": 10}, {"lr": 8e-3, "loss": 5.20, "run_flops": 10},
                              {"lr": 1.6e-2, "loss": None, "run_flops": 4}])
    write_table(base / "mup", [{"lr": 1e-3, "loss": 4.95}, {"lr": 2e-3, "loss": 4.85}, {"lr": 2e-3, "loss": 4.87, "seed": 1},
                               {"lr": 4e-3, "loss": 4.90}, {"lr": 8e-3, "loss": 5.00}], parametrization="completep")
    write_table(base / "verdict_fitting", [{"lr": 3e-3, "loss": 4.95}, {"lr": 3e-3, "loss": 4.97, "seed": 1}])
    write_table(base / "verdict_transfer", [{"lr": 2.5e-3, "loss": 4.86}, {"lr": 2.5e-3, "loss": 4.88, "seed": 1}],
                parametrization="completep")
    preds = [cmp.Prediction("fitting", "sp", 3e-3, 1.5e-3, 6e-3, "PI"),
             cmp.Prediction("transfer", "completep", 2.5e-3, 2e-3, 3e-3, "CI")]
    r = cmp.compare_target(root, "t", preds, window=None, flops={"fitting": 7.0, "transfer": 2.0})

    sp = r["truth"]["sp"]
    assert sp["best_lr"] == 2e-3 and sp["best_loss"] == pytest.approx(4.92) and sp["best_n_seeds"] == 2
    assert sp["n_diverged"] == 1
    # seed pairs: sp (5.00, 5.02), (4.90, 4.94); mup (4.85, 4.87); verdicts (4.95, 4.97), (4.86, 4.88)
    # unbiased variances 2e-4, 8e-4, 2e-4, 2e-4, 2e-4 -> pooled 3.2e-4 over 5 dof
    sigma = math.sqrt(3.2e-4)
    assert r["seed_sigma"] == pytest.approx(sigma, rel=1e-9) and r["seed_sigma_dof"] == 5

    f = r["verdicts"]["fitting"]
    assert f["loss"] == pytest.approx(4.96) and f["n_seeds"] == 2
    assert f["regret"] == pytest.approx(0.04)
    assert f["regret_pct"] == pytest.approx(100 * 0.04 / 4.92)
    assert f["regret_sigmas"] == pytest.approx(0.04 / sigma)
    assert f["error_ratio_vs_best_lr"] == pytest.approx(1.5)
    assert f["error_ratio_vs_eta_star"] == pytest.approx(3e-3 / sp["eta_star"])
    # piecewise linear in ln η between 2e-3 (4.92) and 4e-3 (4.96): at 3e-3 the weight is log(1.5)/log(2)
    w = math.log(1.5) / math.log(2)
    assert f["loss_interpolated"] == pytest.approx(4.92 + w * 0.04)

    t = r["verdicts"]["transfer"]
    mu_best = (4.85 + 4.87) / 2
    assert t["loss"] == pytest.approx(4.87) and t["regret"] == pytest.approx(4.87 - mu_best)
    h = r["head_to_head"]
    assert h["fitting_minus_transfer"] == pytest.approx(4.96 - 4.87)
    assert h["margin_se"] == pytest.approx(sigma * math.sqrt(1 / 2 + 1 / 2))
    assert h["winner"] == "transfer" and h["beyond_seed_noise"] is True  # 0.09 / 0.0179 = 5 SE
    assert r["sp_best_minus_mup_best"] == pytest.approx(4.92 - mu_best)
    # compute: run_flops of seed-0 direct runs (10 + 10 + 10 + 10 + 4), plus the given searches
    assert r["compute"]["direct_sp"] == pytest.approx(44.0)
    assert r["compute"]["fitting"] == 7.0 and r["compute"]["transfer"] == 2.0


def test_a_diverged_verdict_run_has_no_mean_loss(tmp_path):
    root = tmp_path / "cmp"
    write_table(root / "targets/t/sp", [{"lr": x, "loss": y} for x, y in ((1e-3, 5.0), (2e-3, 4.9), (4e-3, 5.0))])
    write_table(root / "targets/t/verdict_fitting", [{"lr": 4e-2, "loss": 5.5}, {"lr": 4e-2, "loss": None, "seed": 1}])
    r = cmp.compare_target(root, "t", [cmp.Prediction("fitting", "sp", 4e-2, 3e-2, 5e-2, "PI")], window=None)
    v = r["verdicts"]["fitting"]
    assert v["n_diverged"] == 1 and math.isnan(v["loss"]) and math.isnan(v["regret_pct"])
    assert math.isnan(v["loss_interpolated"])  # outside the sweep: no extrapolation


def test_plan_extension_and_replicates(tmp_path):
    lat = cmp.Lattice(1e-3, 2.0)
    edge = load_results(write_table(tmp_path / "e", [{"lr": 1e-3, "loss": 4.8}, {"lr": 2e-3, "loss": 4.9},
                                                      {"lr": 4e-3, "loss": 5.0}]))
    assert cmp.plan_extension(edge, lat) == [5e-4, 2.5e-4]
    inside = load_results(write_table(tmp_path / "i", [{"lr": 1e-3, "loss": 5.0}, {"lr": 2e-3, "loss": 4.8},
                                                        {"lr": 4e-3, "loss": 4.85}, {"lr": 8e-3, "loss": 5.3}]))
    assert cmp.plan_extension(inside, lat) == []
    assert cmp.plan_replicates(inside, 2) == [2e-3, 4e-3]   # the best and its better neighbour
    assert cmp.plan_replicates(inside, 1) == [2e-3]


# ---- predictions on planted laws ---------------------------------------------------------------

def test_transfer_predictions_recover_a_planted_proxy_optimum_and_horizon_slope(tmp_path):
    """Noise-free quadratics in ln η with η*(D) = 0.01·(D/1e5)^-0.3: Eq. 2 is exact, so the
    proxy optimum, the carried LRs and the fitted β come out as planted."""
    lat = cmp.Lattice(1e-3, 2 ** 0.5)
    lrs = [lat.lr(k) for k in range(2, 13)]
    eta = lambda D: 0.01 * (D / 1e5) ** -0.3  # noqa: E731
    rows = []
    path = tmp_path / "proxy"
    path.mkdir()
    with open(path / "results.jsonl", "w") as f:
        for i, lr in enumerate(lrs):
            for b, D in enumerate((100_000, 200_000, 400_000)):
                rows.append({"run_id": f"p{i}", "config_hash": f"h{i}", "model": "xs", "parametrization": "completep",
                             "status": "ok", "n_total": 1, "n_active": 1, "n_active_nonembed": 1, "d_model": 32,
                             "n_layers": 2, "num_experts": 8, "top_k": 2, "lr": lr, "tokens": D, "steps": D // 100,
                             "branch": b, "val_loss": 4.0 + 0.05 * math.log(lr / eta(D)) ** 2, "flops": 1.0,
                             "run_flops": 3.0, "wall_time_s": 1.0, "batch_tokens": 100, "seed": 0, "error": None,
                             "data_fingerprint": "fp"})
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    preds = {p.paradigm: p for p in cmp.transfer_predictions(load_results(path), 1.6e6, parametrization="completep",
                                                             beta=0.3509, window=5)}
    eta_p = eta(400_000)
    assert preds["transfer_nohorizon"].lr == pytest.approx(eta_p, rel=1e-6)
    assert preds["transfer"].lr == pytest.approx(eta_p * 4 ** -0.3509, rel=1e-6)   # (1.6e6 / 4e5)^-β
    assert preds["transfer_fitted_beta"].details["beta"] == pytest.approx(0.3, rel=1e-6)
    assert preds["transfer_fitted_beta"].lr == pytest.approx(eta(1.6e6), rel=1e-6)
    assert all(p.parametrization == "completep" for p in preds.values())


def test_fitting_prediction_recovers_a_planted_law_within_its_interval():
    truth = SyntheticTruth()
    import pandas as pd
    df = pd.DataFrame(synthetic_rows(truth=truth, noise=0.002, lr_steps=(-2, -1, 0, 1, 2)))
    N_t, D_t = 3e8, 3.2e9   # 4x the largest size, 4x the largest budget
    pred, sf = cmp.fitting_prediction(df, N_t, D_t, window=None, n_boot=200)
    true = float(truth.eta_star(N_t, D_t))
    assert pred.lo < true < pred.hi
    assert pred.lr == pytest.approx(true, rel=0.1)
    assert pred.details["extrapolation"]["N"] == pytest.approx(N_t / 7e7)
    assert sf.law.alpha == pytest.approx(truth.alpha, abs=0.03)


def test_a_proxy_without_an_optimum_is_a_clear_error(tmp_path):
    path = write_table(tmp_path / "proxy", [{"lr": 1e-3, "loss": 5.0}, {"lr": 2e-3, "loss": 4.9}])
    with pytest.raises(cmp.ComparisonError, match="proxy.lrs"):
        cmp.transfer_predictions(load_results(path), 1e6, parametrization="completep")


# ---- the whole pipeline at toy size ---------------------------------------------------------------

TOY_LRS = "[0.004,0.008,0.016,0.032,0.064,0.128]"


def toy_command(sweep_dir: Path, cache: Path) -> list[str]:
    """`python train.py +experiment=compare` shrunk: 1-block models, 16-token sequences, 16-step
    fitted runs, a 32-step target, a x2 lattice, one job at a time in this process's launcher."""
    return [sys.executable, "train.py", "+experiment=compare", "hydra/launcher=basic", f"sweep.dir={sweep_dir}",
            "data.max_bytes=400000", "data.val_fraction=0.25", "data.tokenizer.vocab_size=384",
            f"data.cache_dir={cache}", "model.seq_len=16", "model.n_layers=1", "train.batch_size=4",
            "train.eval_batches=2", "train.eval_every=8", "train.ckpt_every=0", "schedule.warmup_steps=1",
            "logging.progress=false", f"hydra.sweeper.fitting.lrs={TOY_LRS}", f"hydra.sweeper.proxy.lrs={TOY_LRS}",
            "hydra.sweeper.fitting.tokens=[256,512,1024]", "hydra.sweeper.proxy.tokens=[256,512,1024]",
            "hydra.sweeper.targets=[{name:t,model:fit_target,tokens:2048}]", "hydra.sweeper.target_lrs=6",
            "hydra.sweeper.max_extensions=1", "hydra.sweeper.replicate_lrs=1", "hydra.sweeper.n_boot=20",
            "hydra.sweeper.lr_spacing=2"]


def test_toy_comparison_end_to_end_then_rerun_repeats_nothing_and_redoes_a_lost_job(tmp_path, data_cache):
    sweep = tmp_path / "compare"
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    p = subprocess.run(toy_command(sweep, data_cache), cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    c = json.loads((sweep / "comparison.json").read_text())
    assert (sweep / "report.md").exists() and (sweep / "fig4_t.png").stat().st_size > 10_000
    assert (sweep / "fitting" / "fit.json").exists()
    t = c["targets"][0]
    assert t["N"] == pytest.approx(t["N"]) and t["D"] == 2048
    for paradigm in ("fitting", "transfer", "transfer_nohorizon"):
        v = t["verdicts"][paradigm]
        assert v["n_seeds"] + v["n_diverged"] == 2, paradigm       # two seeds at each predicted LR
    assert set(t["truth"]) == {"sp", "mup"}
    for panel in ("sp", "mup"):
        lrs = load_results(sweep / "targets" / "t" / panel)["lr"].nunique()
        assert lrs >= 6
    assert "Head to head" in (sweep / "report.md").read_text()

    # A job lost to a kill (no summary, no rows) is redone; nothing else is.
    verdict = sweep / "targets" / "t" / "verdict_transfer"
    runs = sorted((verdict / "runs").iterdir())
    lost = runs[-1].name
    shutil.rmtree(runs[-1])
    lines = (verdict / "results.jsonl").read_text().splitlines()
    (verdict / "results.jsonl").write_text("".join(ln + "\n" for ln in lines if lost not in ln))
    p2 = subprocess.run(toy_command(sweep, data_cache), cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert p2.returncode == 0, p2.stderr[-3000:]
    trained = [ln for ln in p2.stderr.splitlines() if "[train]" in ln and "completed:" in ln]
    assert len(trained) == 1 and lost in trained[0] or lost in p2.stderr
    assert p2.stderr.count("already finished") >= 40
    c2 = json.loads((sweep / "comparison.json").read_text())
    assert c2["predictions"] == c["predictions"]
    assert c2["targets"][0]["truth"] == c["targets"][0]["truth"]
