"""Weight-decay transfer (analysis/weight_decay.py): the 2-D Eq. 2 fit, and planted optimal lambda /
tau recovered per decay mode (coupled, independent, timescale) across width and horizon."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lrscale.analysis.fitting import InsufficientDataError
from lrscale.analysis.synthetic_transfer import BATCH_TOKENS, planted_wd, write_sweep
from lrscale.analysis.weight_decay import (fit_quadratic_2d, load_weight_decay, log_maps, measured_tau,
                                           weight_decay_optima, weight_decay_summary, write_weight_decay)

VARIANTS = {
    # coupled: tau* doubles per doubling of D (so lambda* halves per doubling of D at fixed eta*)
    "coupled": {"mode": "coupled", "convention": "none", "eta0": 1e-2, "eta_slope": 0.0,
                "tau0": 4e5, "tau_width_slope": 0.0, "tau_D_slope": 1.0},
    # independent: tau* fixed, eta* halves per doubling of width
    "independent": {"mode": "independent", "convention": "none", "eta0": 1e-2, "eta_slope": -1.0,
                    "tau0": 2e5, "tau_width_slope": 0.0, "tau_D_slope": 0.0},
    # timescale: tau* grows like sqrt(width)
    "timescale": {"mode": "timescale", "convention": "mup", "eta0": 5e-3, "eta_slope": 0.0,
                  "tau0": 3e5, "tau_width_slope": 0.5, "tau_D_slope": 0.0},
}


def test_quadratic_2d_recovers_a_tilted_bowl_and_flags_problems():
    x, y = np.meshgrid(np.linspace(-2, 2, 5), np.linspace(-1, 3, 5))
    x, y = x.ravel(), y.ravel()
    u, v = x - 0.3, y - 1.2
    loss = 4 + 0.2 * u * u + 0.1 * u * v + 0.15 * v * v
    fit = fit_quadratic_2d(x, y, loss)
    assert fit.convex and fit.edge == "" and fit.dof == 19
    assert (fit.x_star, fit.y_star, fit.loss_min) == pytest.approx((0.3, 1.2, 4.0), abs=1e-9)
    assert np.allclose(fit.cov, 0, atol=1e-12)
    assert fit_quadratic_2d(x, y, 4 - 0.2 * u * u + 0.15 * v * v).edge == "not convex"
    shifted = fit_quadratic_2d(x, y, 4 + 0.2 * (x - 3) ** 2 + 0.15 * v * v)
    assert shifted.edge == "lr above" and shifted.x_star == pytest.approx(3.0)
    with pytest.raises(InsufficientDataError):
        fit_quadratic_2d(x[:5], y[:5], loss[:5])


def test_log_maps_are_the_optimizer_formulas():
    eta, lam, B = 1e-2, 0.1, BATCH_TOKENS
    z = np.log([eta, lam])
    tau = {m: math.exp(log_maps(m, B)["tau_tokens"][0] @ z + log_maps(m, B)["tau_tokens"][1])
           for m in ("coupled", "independent")}
    assert tau["coupled"] == pytest.approx(B / (eta * lam)) and tau["independent"] == pytest.approx(B / lam)
    c, k = log_maps("timescale", B)["lambda"]
    assert math.exp(c @ np.log([eta, 3e5]) + k) == pytest.approx(1 / (eta * 3e5 / B))
    with pytest.raises(ValueError, match="unknown"):
        log_maps("sgd", B)


def test_planted_optimal_lambda_and_tau_recovered_per_mode(tmp_path):
    sweep = planted_wd(tmp_path / "wd", variants=VARIANTS, widths=(32, 64), budgets=(40960, 81920), n_lrs=5,
                       n_decays=6)
    df = load_weight_decay(sweep)
    assert set(df["mode"]) == {"coupled", "independent", "timescale"}
    opt = weight_decay_optima(df)
    assert (opt["fit_edge"] == "").all() and len(opt) == 3 * 2 * 2
    for r in opt.to_dict("records"):
        v = next(p for name, p in VARIANTS.items() if f"weight_decay_mode={p['mode']}" in r["variant"])
        w, D = r["width"] / 32, r["tokens"] / 40960
        eta = v["eta0"] * w ** v["eta_slope"]
        tau = v["tau0"] * w ** v["tau_width_slope"] * D ** v["tau_D_slope"]
        lam = {"coupled": BATCH_TOKENS / (eta * tau), "independent": BATCH_TOKENS / tau,
               "timescale": BATCH_TOKENS / (eta * tau)}[v["mode"]]
        assert r["eta_star"] == pytest.approx(eta, rel=1e-6)
        assert r["tau_tokens_star"] == pytest.approx(tau, rel=1e-6)
        assert r["lambda_star"] == pytest.approx(lam, rel=1e-6)
        assert r["tau_steps_star"] == pytest.approx(tau / BATCH_TOKENS, rel=1e-6)
    summary = weight_decay_summary(opt).set_index(["variant", "quantity"])
    coupled = next(v for v in summary.index.get_level_values(0) if "coupled" in v)
    timescale = next(v for v in summary.index.get_level_values(0) if "timescale" in v)
    assert summary.loc[(coupled, "tau_tokens"), "slope_tokens"] == pytest.approx(1.0, abs=1e-6)
    assert summary.loc[(coupled, "lambda"), "slope_tokens"] == pytest.approx(-1.0, abs=1e-6)
    assert summary.loc[(coupled, "tau_tokens"), "slope_width"] == pytest.approx(0.0, abs=1e-6)
    assert summary.loc[(timescale, "tau_tokens"), "slope_width"] == pytest.approx(0.5, abs=1e-6)
    d = opt[opt["variant"] == coupled].set_index(["width", "tokens"])
    assert d.loc[(64, 81920), "drift_tau_tokens_log2"] == pytest.approx(1.0, abs=1e-6)
    assert d.loc[(64, 81920), "drift_lambda_log2"] == pytest.approx(-1.0, abs=1e-6)


def test_noisy_planted_tau_inside_its_interval(tmp_path):
    sweep = planted_wd(tmp_path / "wd", variants={"coupled": VARIANTS["coupled"]}, widths=(32,), budgets=(40960,),
                       n_lrs=6, n_decays=6, noise=0.003, seed=2)
    r = weight_decay_optima(load_weight_decay(sweep)).iloc[0]
    assert r["tau_tokens_ci_lo"] < 4e5 < r["tau_tokens_ci_hi"]
    assert r["lambda_ci_lo"] < BATCH_TOKENS / (1e-2 * 4e5) < r["lambda_ci_hi"]


def test_measured_tau_of_a_hidden_role_rescales_tau_star(tmp_path):
    """muP hidden weights under coupled decay without the wd convention: tau = m / (eta lambda).
    A run that logged that tau makes tau_role_tokens_star = factor x the nominal tau*."""
    sweep = planted_wd(tmp_path / "wd", variants={"coupled": VARIANTS["coupled"]}, widths=(64,), budgets=(40960,),
                       n_lrs=4, n_decays=4)
    df = load_weight_decay(sweep)
    metrics = {}
    for r in df.drop_duplicates("run_id").to_dict("records"):
        nominal = BATCH_TOKENS / (r["eta"] * r["decay"])
        metrics[r["run_id"]] = [{"step": s, f"probe/wd_tau_tokens/expert_in": 2 * nominal / f}
                                for s, f in ((10, 0.5), (20, 1.0), (30, 0.25))]
    rows = [json.loads(line) for line in (sweep / "results.jsonl").read_text().splitlines()]
    write_sweep(sweep, rows, metrics=metrics)
    tau = measured_tau(sweep, df["run_id"].unique())
    assert len(tau) == df["run_id"].nunique() and set(tau["role"]) == {"expert_in"}
    out = write_weight_decay(sweep, tmp_path / "out")
    r = out["optima"][0]
    assert r["tau_role"] == "expert_in" and r["tau_role_factor"] == pytest.approx(2.0)
    assert r["tau_role_tokens_star"] == pytest.approx(2 * r["tau_tokens_star"])
    for f in ("weight_decay.png", "weight_decay.csv", "weight_decay.md", "weight_decay_summary.csv",
              "run_config.csv", "wd_tau.csv"):
        assert (tmp_path / "out" / f).exists(), f
    # the committed folder answers the same without run directories
    again = load_weight_decay(tmp_path / "out")
    assert np.allclose(again["tau_factor"].astype(float), 2.0)


def test_a_folder_without_decay_values_is_refused(tmp_path):
    from lrscale.analysis.synthetic_transfer import result_row
    write_sweep(tmp_path / "s", [result_row(f"r{i}", parametrization="mup", lr=1e-2, val_loss=4.0) for i in range(3)])
    with pytest.raises(ValueError, match="run_config.csv"):
        load_weight_decay(tmp_path / "s")


def test_one_sweep_per_convention_is_merged_into_one_study_folder(tmp_path, capsys):
    """Each convention swept on its own (as the campaigns do) and analysed together: the same optima
    as one sweep holding them all, and the merged folder is analysed again without the sweeps."""
    from lrscale.analysis.transfer import main

    one = {name: planted_wd(tmp_path / name, variants={name: v}, widths=(32, 64), budgets=(40960, 81920),
                            n_lrs=5, n_decays=6) for name, v in VARIANTS.items()}
    both = planted_wd(tmp_path / "all", variants=VARIANTS, widths=(32, 64), budgets=(40960, 81920), n_lrs=5,
                      n_decays=6)
    merged = write_weight_decay(list(one.values()), tmp_path / "merged")
    expected = weight_decay_optima(load_weight_decay(both))
    got = weight_decay_optima(load_weight_decay(tmp_path / "merged"))
    assert len(got) == len(expected) == 12
    cols = ["variant", "width", "tokens", "eta_star", "lambda_star", "tau_tokens_star"]
    assert np.allclose(got[cols[3:]].to_numpy(float), expected[cols[3:]].to_numpy(float), rtol=1e-9)
    assert list(got["variant"]) == list(expected["variant"])
    assert len(merged["optima"]) == 12
    runs = sum(load_weight_decay(s)["run_id"].nunique() for s in one.values())
    assert load_weight_decay(tmp_path / "merged")["run_id"].nunique() == runs
    with pytest.raises(ValueError, match="--out"):
        write_weight_decay(list(one.values()))
    # the CLI: several sources for the weight_decay analysis only
    assert main([*map(str, one.values()), "--analysis", "weight_decay", "--out", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "weight_decay.png").is_file()
    capsys.readouterr()
    assert main([*map(str, one.values()), "--analysis", "transfer", "--out", str(tmp_path / "x")]) == 2
    assert "only the weight_decay analysis" in capsys.readouterr().err


def test_sweeps_of_different_corpora_are_not_merged(tmp_path):
    one = planted_wd(tmp_path / "a", variants={"coupled": VARIANTS["coupled"]}, widths=(32,), budgets=(40960,))
    two = planted_wd(tmp_path / "b", variants={"independent": VARIANTS["independent"]}, widths=(32,),
                     budgets=(40960,))
    path = two / "results.jsonl"
    path.write_text(path.read_text().replace('"data_fingerprint": "synthetic"', '"data_fingerprint": "other"'))
    with pytest.raises(ValueError, match="different data"):
        write_weight_decay([one, two], tmp_path / "merged")
