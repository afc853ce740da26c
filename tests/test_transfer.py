"""The transfer analysis (analysis/transfer.py) on a synthetic sweep whose optima are known:
SP's optimum halves per width doubling, muP's stays put; diverged runs are kept as data."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from lrscale.analysis.transfer import load_transfer, main, optima, write_transfer

LRS = [1.25e-3, 2.5e-3, 5e-3, 1e-2, 2e-2, 4e-2]


def fake_sweep(sweep_dir):
    rows = []
    for name in ("sp", "mup"):
        for size in (32, 64, 128):
            eta = 1e-2 * (32 / size if name == "sp" else 1.0)   # the optimum this table hides
            for lr in LRS:
                loss = 4.0 + 0.1 * (math.log(lr) - math.log(eta)) ** 2
                status = "diverged" if (name == "sp" and size == 128 and lr == LRS[-1]) else "ok"
                run_id = f"{name}-{size}-{lr:g}"
                rows.append({"run_id": run_id, "config_hash": run_id, "status": status, "model": f"w{size}",
                             "parametrization": name, "n_total": size * 1000, "n_active": size * 900,
                             "n_active_nonembed": size * 500, "d_model": size, "n_layers": 2, "num_experts": 4,
                             "top_k": 2, "lr": lr, "tokens": 1000, "steps": 10, "branch": 0,
                             "val_loss": loss if status == "ok" else None, "flops": 1.0, "run_flops": 1.0,
                             "wall_time_s": 1.0, "batch_tokens": 100, "seed": 0, "error": None,
                             "data_fingerprint": "fp"})
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return sweep_dir


def test_optima_and_drift_recover_the_hidden_optimum(tmp_path):
    df = load_transfer(fake_sweep(tmp_path / "sweep"), axis="d_model")
    assert len(df) == 36 and (df["status"] == "diverged").sum() == 1
    opt = optima(df).set_index(["variant", "size"])
    for size, drift in ((32, 0.0), (64, -1.0), (128, -2.0)):
        assert opt.loc[("sp", size), "drift_eta_star_log2"] == pytest.approx(drift, abs=1e-6)
        assert opt.loc[("sp", size), "drift_best_lr_log2"] == pytest.approx(drift)
        assert opt.loc[("mup", size), "drift_eta_star_log2"] == pytest.approx(0.0, abs=1e-6)
        assert opt.loc[("mup", size), "eta_star"] == pytest.approx(1e-2, rel=1e-6)
    assert opt.loc[("sp", 128), "n_diverged"] == 1


def test_write_transfer_outputs_and_cli(tmp_path, capsys):
    sweep = fake_sweep(tmp_path / "sweep")
    s = write_transfer(sweep, tmp_path / "out", hardware="test")
    for f in ("transfer.png", "transfer.csv", "transfer.md", "transfer.json", "stability.csv"):
        assert (tmp_path / "out" / f).exists(), f
    assert s["n_runs"] == 36 and "hardware: test" in s["caption"]
    assert "| sp | 128 |" in (tmp_path / "out" / "transfer.md").read_text()
    assert main([str(sweep), "--out", str(tmp_path / "cli")]) == 0
    assert "drift log2" in capsys.readouterr().out
    assert main([str(tmp_path / "missing")]) == 2
    assert np.isfinite(json.loads((tmp_path / "out" / "transfer.json").read_text())["optima"][0]["best_lr"])


# ---- generalised axes, variants, intervals (issue #10) ------------------------------------------

from lrscale.analysis.drift import fit_log_linear, log2_drift, welch_dof  # noqa: E402
from lrscale.analysis.results import load_results  # noqa: E402
from lrscale.analysis.run_configs import RUN_CONFIG_FILE, load_runs, read_run_configs, variant_label  # noqa: E402
from lrscale.analysis.synthetic_transfer import lr_grid, planted_transfer, quadratic_loss  # noqa: E402
from lrscale.analysis.transfer import run_analysis  # noqa: E402


def test_planted_drift_interval_covers_the_truth_about_95_percent_of_the_time():
    """Optimum moves 4x (drift -2) between two sizes; Gaussian loss noise. The drift interval
    (delta method, Welch t) must cover -2 in most replicates and be finite."""
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(100):
        rows = [{"variant": "sp", "size": size, "lr": lr, "status": "ok",
                 "val_loss": quadratic_loss(lr, eta) + 0.01 * rng.standard_normal()}
                for size, eta in ((32, 1e-2), (128, 2.5e-3)) for lr in lr_grid(5e-3, 7)]
        o = optima(pd.DataFrame(rows)).set_index("size").loc[128]
        assert np.isfinite(o["drift_eta_star_log2_lo"]) and o["drift_eta_star_log2_lo"] < o["drift_eta_star_log2_hi"]
        covered += o["drift_eta_star_log2_lo"] <= -2.0 <= o["drift_eta_star_log2_hi"]
    assert covered >= 88


def test_planted_drift_recovered_from_a_sweep_directory_with_a_covering_interval(tmp_path):
    sweep = planted_transfer(tmp_path / "s", sizes=(32, 64, 128), drift={"sp": -1.0, "mup": 0.0}, noise=0.005, seed=1)
    opt = optima(load_transfer(sweep)).set_index(["variant", "size"])
    for (variant, size), r in opt.iterrows():
        planted = {"sp": -1.0, "mup": 0.0}[variant] * math.log2(size / 32)
        assert r["drift_eta_star_log2"] == pytest.approx(planted, abs=0.15)
        assert r["drift_eta_star_log2_lo"] <= planted <= r["drift_eta_star_log2_hi"]
        assert r["eta_ci_lo"] < r["eta_star"] < r["eta_ci_hi"]


def test_axis_is_any_dotted_config_key_and_variant_keys_split_variants(tmp_path):
    sweep = planted_transfer(tmp_path / "g", axis="model.moe.d_expert", sizes=(16, 32, 64), n_lrs=5,
                             drift={"sp": 0.5, "mup": 0.0},
                             variant_config={"sp": {"optim.weight_decay_mode": "independent"}})
    df = load_transfer(sweep, "model.moe.d_expert", variant_keys=["optim.weight_decay_mode"])
    assert set(df["variant"]) == {"sp, weight_decay_mode=independent", "mup, weight_decay_mode=coupled"}
    assert sorted(df["size"].unique()) == [16, 32, 64] and df["size"].dtype.kind == "i"
    opt = optima(df).set_index(["variant", "size"])
    assert opt.loc[("sp, weight_decay_mode=independent", 64), "drift_eta_star_log2"] == pytest.approx(1.0, abs=1e-6)
    assert opt.loc[("mup, weight_decay_mode=coupled", 64), "drift_eta_star_log2"] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="dotted config key"):
        load_transfer(sweep, "d_expert")


def test_an_experiment_folder_is_reanalysed_from_results_and_run_config_alone(tmp_path):
    sweep = planted_transfer(tmp_path / "g", axis="model.moe.d_expert", sizes=(16, 32), n_lrs=5)
    s = write_transfer(sweep, tmp_path / "study", axis="model.moe.d_expert", probes=False)
    study = tmp_path / "study"
    assert (study / RUN_CONFIG_FILE).exists() and (study / "results.jsonl").exists()
    assert s["axis"] == "model.moe.d_expert" and s["variant_keys"] == []
    again = write_transfer(study, tmp_path / "again", axis="model.moe.d_expert")
    assert [r["eta_star"] for r in again["optima"]] == pytest.approx([r["eta_star"] for r in s["optima"]])
    first = load_transfer(study, "model.moe.d_expert")["run_id"][0]
    cfg = read_run_configs(study, ["nope", first], ["model.moe.d_expert"])
    assert cfg.attrs["missing"] == ["nope"] and cfg["model.moe.d_expert"].iloc[1] == 16
    (study / RUN_CONFIG_FILE).unlink()
    with pytest.raises(ValueError, match="run_config.csv"):
        load_runs(study, "model.moe.d_expert")


def test_results_csv_export_reads_like_the_jsonl(tmp_path):
    sweep = fake_sweep(tmp_path / "sweep")
    df = load_results(sweep)
    df.to_csv(tmp_path / "results.csv", index=False)
    back = load_results(tmp_path / "results.csv")
    assert len(back) == len(df) and back["val_loss"].isna().sum() == 1
    assert back["error"].isna().all() and back["run_id"].tolist() == df["run_id"].tolist()


def test_variant_labels_name_the_depth_rule_and_extra_keys():
    assert variant_label("mup", 1.0) == "mup + CompleteP depth"
    assert variant_label("mup", 0.5) == "mup + Depth-muP"
    assert variant_label("sp", 0.25) == "sp, depth_alpha=0.25"
    assert variant_label("sp", None) == variant_label("sp", 0.0) == "sp"
    assert variant_label("mup", 0.0, {"optim.weight_decay_mode": "timescale", "optim.weight_decay": 0.1}) == \
        "mup, weight_decay_mode=timescale, weight_decay=0.1"


def test_log2_drift_by_hand():
    d = log2_drift(math.log(4e-3), 0.1, 4, math.log(1e-3), 0.2, 2)
    assert d.log2 == pytest.approx(2.0)
    se = math.hypot(0.1, 0.2) / math.log(2)
    nu = (0.1 ** 2 + 0.2 ** 2) ** 2 / (0.1 ** 4 / 4 + 0.2 ** 4 / 2)
    assert d.se == pytest.approx(se) and d.dof == pytest.approx(nu) == pytest.approx(welch_dof([0.1, 0.2], [4, 2]))
    from scipy import stats
    assert d.hi - d.log2 == pytest.approx(stats.t.ppf(0.975, nu) * se)
    assert math.isnan(log2_drift(0.0, math.nan, 0, 1.0, 0.1, 3).lo)


def test_fit_log_linear_recovers_a_slope_and_ols_standard_errors():
    x = np.log([1.0, 2.0, 4.0, 8.0, 16.0])
    y = 0.3 - 0.35 * x + np.array([0.01, -0.02, 0.015, 0.0, -0.005])
    fit = fit_log_linear(x, y)
    coef, cov = np.polyfit(x, y, 1, cov="unscaled")
    resid = y - np.polyval(coef, x)
    assert fit.slopes[0] == pytest.approx(coef[0])
    assert fit.slope_se[0] == pytest.approx(math.sqrt(cov[0, 0] * resid @ resid / 3))
    assert fit.slope_ci[0, 0] < -0.35 < fit.slope_ci[0, 1]
    # known per-point errors larger than the scatter: the interval comes from them
    wide = fit_log_linear(x, y, se=np.full(5, 0.5))
    assert wide.slope_se[0] > fit.slope_se[0]


def test_cli_routes_analyses_and_accepts_dotted_axes(tmp_path, capsys):
    sweep = planted_transfer(tmp_path / "g", axis="model.moe.d_expert", sizes=(16, 32), n_lrs=5)
    assert main([str(sweep), "--axis", "model.moe.d_expert", "--no-probes", "--out", str(tmp_path / "o")]) == 0
    assert "drift 95% CI" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown"):
        run_analysis("nonsense", sweep)


def test_a_bare_cli_call_redoes_the_analysis_recorded_in_study_json(tmp_path, capsys):
    """A sweep's study.json (written by TransferCallback) picks axis and variants; the output folder gets
    its own copy, so re-analysing a committed folder needs no flags; flags still override."""
    from lrscale.analysis.transfer import STUDY_FILE, read_study, write_study

    sweep = planted_transfer(tmp_path / "g", axis="model.moe.d_expert", sizes=(16, 32), n_lrs=5)
    assert read_study(sweep) == {}
    write_study(sweep, analysis="auto", axis="model.moe.d_expert", variant_keys=[])
    assert main([str(sweep), "--no-probes", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "| model.moe.d_expert |" in out            # not the d_model default, which has one value here
    assert read_study(tmp_path / "o") == {"analysis": "transfer", "axis": "model.moe.d_expert", "variant_keys": []}
    assert main([str(tmp_path / "o"), "--no-probes", "--out", str(tmp_path / "again")]) == 0
    assert "| model.moe.d_expert |" in capsys.readouterr().out
    (sweep / STUDY_FILE).write_text("[1, 2]")
    assert main([str(sweep), "--no-probes"]) == 2
    assert STUDY_FILE in capsys.readouterr().err


def test_transfer_callback_records_the_study_and_analyses_the_sweep_at_its_end(tmp_path, capsys):
    from omegaconf import OmegaConf

    from hydra_plugins.lrscale.callbacks import TransferCallback
    from lrscale.analysis.transfer import read_study
    from lrscale.training.config import HardwareConfig

    sweep = planted_transfer(tmp_path / "g", axis="model.moe.d_expert", sizes=(16, 32), n_lrs=5)
    config = OmegaConf.create({"sweep": {"dir": str(sweep)}, "hardware": OmegaConf.structured(HardwareConfig())})
    cb = TransferCallback(axis="model.moe.d_expert")
    cb.on_multirun_start(config)
    assert read_study(sweep)["axis"] == "model.moe.d_expert"
    cb.on_multirun_end(config)
    assert "transfer analysis written" in capsys.readouterr().err
    assert json.loads((sweep / "transfer.json").read_text())["axis"] == "model.moe.d_expert"
