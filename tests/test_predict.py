"""Tests of `python -m analysis.predict` ("what LR for my run?") and of the pieces it adds
to the fitting library: Eq. 6 prediction intervals, the curved alternative law, CSV and
fit.json inputs, Transfer numbers worked out by hand, and every bad input's message."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import special

from lrscale.analysis.fitting import (
    InsufficientDataError,
    LawFit,
    fit_curved_lr_law,
    fit_lr_law,
    fit_sweep,
)
from lrscale.analysis.predict import (
    PredictInputError,
    compare_law_forms,
    fit_source_from_fit_json,
    fit_source_from_sweep,
    load_model_config,
    main,
    recommend,
    recommend_transfer,
)
from lrscale.analysis.report import build_fit_json
from lrscale.analysis.synthetic import SyntheticTruth, synthetic_rows

REPO = Path(__file__).resolve().parents[1]
GRID = REPO / "experiments" / "2026-11-22_fit_grid_cpu"
TRUTH = SyntheticTruth(alpha=-0.25, beta=-0.35)
SIZES = (2e6, 6e6, 2e7, 6e7)
BUDGETS = (1e8, 3e8, 9e8)
LR_STEPS = (-2, -1, 0, 1, 2)
# A target 2.5× beyond the largest size and 3× beyond the longest budget.
TARGET_N, TARGET_D = 1.5e8, 2.7e9


def law_points(sizes, budgets):
    N = np.repeat(np.asarray(sizes, float), len(budgets))
    D = np.tile(np.asarray(budgets, float), len(sizes))
    return N, D


def noisy_optima(N, D, *, gamma_N=0.0, sigma=0.03, seed=0):
    """η* from TRUTH, times exp(γ_N·(ln N − mean)²) (planted curvature), times log-normal scatter."""
    rng = np.random.default_rng(seed)
    u = np.log(N) - np.log(N).mean()
    return TRUTH.eta_star(N, D) * np.exp(gamma_N * u * u + sigma * rng.standard_normal(N.size))


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    rows = synthetic_rows(SIZES, BUDGETS, lr_steps=LR_STEPS, noise=0.002, seed=0, truth=TRUTH)
    (d / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return d


def sweep_csv(path: Path, rows=None, *, header=("N", "D", "lr", "loss")) -> Path:
    rows = rows if rows is not None else synthetic_rows(SIZES, BUDGETS, lr_steps=LR_STEPS,
                                                        diverge_steps=(4,), noise=0.002,
                                                        seed=0, truth=TRUTH)
    df = pd.DataFrame({header[0]: [r["n_active_nonembed"] for r in rows],
                       header[1]: [r["tokens"] for r in rows], header[2]: [r["lr"] for r in rows],
                       header[3]: [r["val_loss"] for r in rows]})
    df.to_csv(path, index=False)  # diverged rows: blank loss
    return path


# --- LawFit intervals (analysis/fitting.py, Eq. 6) ----------------------------------

def test_predict_interval_matches_textbook_formula_on_uncentred_design():
    N, D = law_points((1e6, 3e6, 1e7, 3e7), (1e8, 3e8, 1e9))
    eta = noisy_optima(N, D, sigma=0.1, seed=3)
    fit = fit_lr_law(N, D, eta, n_boot=0)
    # Textbook OLS on the raw (uncentred) design: ŷ0 ± t·s·sqrt(1 + x0ᵀ(XᵀX)⁻¹x0).
    X = np.column_stack([np.ones_like(N), np.log(N), np.log(D)])
    y = np.log(eta)
    b = np.linalg.solve(X.T @ X, X.T @ y)
    s2 = np.sum((y - X @ b) ** 2) / (len(y) - 3)
    x0 = np.array([1.0, math.log(TARGET_N), math.log(TARGET_D)])
    t = special.stdtrit(len(y) - 3, 0.975)
    lev = x0 @ np.linalg.solve(X.T @ X, x0)
    for new_point, method in ((1.0, fit.predict_interval), (0.0, fit.mean_interval)):
        half = t * math.sqrt(s2 * (new_point + lev))
        lo, hi = method(TARGET_N, TARGET_D, level=0.95)
        assert lo == pytest.approx(math.exp(x0 @ b - half), rel=1e-9)
        assert hi == pytest.approx(math.exp(x0 @ b + half), rel=1e-9)


def test_predict_interval_covers_new_optima_at_nominal_rate():
    N, D = law_points((1e6, 3e6, 1e7, 3e7), (1e8, 3e8, 1e9))
    rng = np.random.default_rng(0)
    target = (1e8, 1e10)  # 3× beyond in N, 10× in D
    reps, hits = 400, 0
    for _ in range(reps):
        fit = fit_lr_law(N, D, TRUTH.eta_star(N, D) * np.exp(0.1 * rng.standard_normal(N.size)),
                         n_boot=0)
        lo, hi = fit.predict_interval(*target)
        hits += lo < TRUTH.eta_star(*target) * math.exp(0.1 * rng.standard_normal()) < hi
    assert 0.92 <= hits / reps <= 0.98  # 95% nominal; binomial s.e. 1.1%


def test_bootstrap_and_mean_intervals_nest_inside_prediction_interval():
    N, D = law_points((1e6, 3e6, 1e7, 3e7), (1e8, 3e8, 1e9))
    fit = fit_lr_law(N, D, noisy_optima(N, D, sigma=0.05), n_boot=500, seed=1)
    eta = float(fit.predict(TARGET_N, TARGET_D))
    p_lo, p_hi = fit.predict_interval(TARGET_N, TARGET_D)
    m_lo, m_hi = fit.mean_interval(TARGET_N, TARGET_D)
    b_lo, b_hi = fit.bootstrap_interval(TARGET_N, TARGET_D)
    assert p_lo < m_lo < eta < m_hi < p_hi
    assert b_lo < eta < b_hi
    assert fit.boot_draws.shape == (fit.n_boot_used, 3)
    # Arrays broadcast; the 99% interval is wider than the 95% one.
    lo, hi = fit.predict_interval(np.array([TARGET_N, 2 * TARGET_N]), TARGET_D, level=0.99)
    assert lo.shape == (2,) and lo[0] < p_lo and hi[0] > p_hi


def test_interval_methods_say_what_is_missing():
    N, D = law_points((1e6, 3e6, 1e7, 3e7), (1e8, 3e8, 1e9))
    fit = fit_lr_law(N, D, noisy_optima(N, D), n_boot=0)
    with pytest.raises(ValueError, match="no bootstrap draws"):
        fit.bootstrap_interval(TARGET_N, TARGET_D)
    by_hand = LawFit(**{k: getattr(fit, k) for k in (
        "c", "alpha", "beta", "c_ci", "alpha_ci", "beta_ci", "se", "r2", "residual_std_ln",
        "n_points", "n_boot", "n_boot_used", "seed", "ci_level")})
    with pytest.raises(ValueError, match="no covariance"):
        by_hand.predict_interval(TARGET_N, TARGET_D)


def test_fit_lr_law_json_output_is_unchanged():
    N, D = law_points((1e6, 3e6, 1e7, 3e7), (1e8, 3e8, 1e9))
    keys = set(fit_lr_law(N, D, noisy_optima(N, D), n_boot=50).to_json())
    assert keys == {"equation", "c", "alpha", "beta", "c_ci", "alpha_ci", "beta_ci", "se", "r2",
                    "residual_std_ln_eta", "n_points", "n_boot", "n_boot_used", "seed",
                    "ci_level"}


# --- the curved alternative -------------------------------------------------------

def test_curved_law_preferred_on_planted_curvature():
    N, D = law_points((1e6, 2e6, 4e6, 8e6, 1.6e7, 3.2e7), (1e8, 2e8, 4e8, 8e8))
    cmp_ = compare_law_forms(N, D, noisy_optima(N, D, gamma_N=0.1))
    assert cmp_.preferred == "curved"
    assert cmp_.loso_curved < 0.5 * cmp_.loso_loglinear
    assert cmp_.curved.gamma_N == pytest.approx(0.1, abs=0.02)
    assert abs(cmp_.curved.gamma_D) < 0.03
    assert cmp_.n_folds == 6


def test_log_linear_preferred_or_tie_without_curvature():
    N, D = law_points((1e6, 2e6, 4e6, 8e6, 1.6e7, 3.2e7), (1e8, 2e8, 4e8, 8e8))
    cmps = [compare_law_forms(N, D, noisy_optima(N, D, seed=s)) for s in range(20)]
    verdicts = [c.preferred for c in cmps]
    assert verdicts[0] in ("log-linear", "tie")
    assert verdicts.count("curved") <= 3  # the tie margin keeps chance wins rare (~1 in 100)
    # On average the two extra parameters only fit noise: worse out of sample.
    assert np.mean([c.loso_curved / c.loso_loglinear for c in cmps]) > 1.0


def test_curved_law_exact_on_noiseless_curved_points():
    N, D = law_points((1e6, 3e6, 1e7, 3e7), (1e8, 3e8, 1e9))
    u, v = np.log(N) - np.log(N).mean(), np.log(D) - np.log(D).mean()
    eta = TRUTH.eta_star(N, D) * np.exp(0.08 * u * u - 0.05 * v * v)
    fit = fit_curved_lr_law(N, D, eta)
    assert (fit.gamma_N, fit.gamma_D) == pytest.approx((0.08, -0.05), abs=1e-9)
    assert (fit.alpha, fit.beta) == pytest.approx((TRUTH.alpha, TRUTH.beta), abs=1e-9)
    assert fit.predict(N, D) == pytest.approx(eta, rel=1e-9)


def test_curved_law_drops_a_quadratic_it_cannot_identify():
    N, D = law_points((1e6, 3e6, 1e7, 3e7), (1e8, 1e9))
    fit = fit_curved_lr_law(N, D, noisy_optima(N, D))
    assert fit.terms == ("1", "lnN", "lnD", "lnN^2") and fit.gamma_D == 0.0
    assert fit.dropped == ("lnD^2 dropped: only 2 distinct token budgets (a quadratic needs >= 3)",)
    with pytest.raises(InsufficientDataError, match="needs more than 3 optima"):
        fit_curved_lr_law(N[:3], D[:3], noisy_optima(N[:3], D[:3]))  # 2 sizes, 2 budgets


def test_curved_comparison_undetermined_with_two_sizes():
    N, D = law_points((1e6, 1e7), (1e8, 3e8, 1e9))
    cmp_ = compare_law_forms(N, D, noisy_optima(N, D))
    assert cmp_.preferred == "undetermined" and cmp_.n_folds == 0
    assert any("lnN^2 dropped" in n for n in cmp_.notes)


# --- Fitting mode through the CLI -------------------------------------------------

def test_sweep_recovers_known_law_and_interval_covers_it(sweep_dir, tmp_path, capsys):
    out_json = tmp_path / "rec.json"
    rc, out, err = run(["--sweep", sweep_dir, "--n", TARGET_N, "--tokens", "2.7B",
                        "--n-boot", 300, "--json", out_json], capsys)
    assert rc == 0, err
    rec = json.loads(out_json.read_text())
    f = rec["fitting"]
    truth = float(TRUTH.eta_star(TARGET_N, TARGET_D))
    assert f["eta"] == pytest.approx(truth, rel=0.03)
    assert f["prediction_interval"][0] < truth < f["prediction_interval"][1]
    assert f["bootstrap_interval"][0] < f["eta"] < f["bootstrap_interval"][1]
    assert f["law"]["alpha"] == pytest.approx(TRUTH.alpha, abs=0.02)
    assert f["range"]["factor_N"] == pytest.approx(2.5) and f["range"]["factor_D"] == pytest.approx(3)
    assert not f["range"]["far"] and rec["warnings"] == []
    assert f["comparison"]["preferred"] in ("log-linear", "tie")  # the truth is log-linear
    assert f"Recommended peak LR: {f['eta']:.2e}" in out
    assert "N is 2.5× the largest fitted size" in out and "D is 3× the largest" in out
    assert "Zhou et al. 2026" in out and "pinned" in out


def test_far_target_warns_with_factor(sweep_dir, capsys):
    rc, out, _ = run(["--sweep", sweep_dir, "--n", 1.2e9, "--tokens", "1e9", "--n-boot", 0],
                     capsys)
    assert rc == 0
    assert "N is 20× the largest fitted size" in out
    assert "WARNING: the target is 20× beyond the fitted range (more than 10×)" in out
    rc, out, _ = run(["--sweep", sweep_dir, "--n", 1e7, "--tokens", "3e8", "--n-boot", 0], capsys)
    assert "inside the fitted range" in out and "WARNING" not in out


def test_csv_input_fits_like_the_sweep(sweep_dir, tmp_path, capsys):
    csv = sweep_csv(tmp_path / "theirs.csv", header=("n", "d", "LR", "Loss"))  # any case
    assert pd.read_csv(csv)["Loss"].isna().sum() == len(SIZES) * len(BUDGETS)  # diverged: blank
    out_json = tmp_path / "rec.json"
    rc, out, err = run(["--csv", csv, "--n", TARGET_N, "--tokens", TARGET_D, "--n-boot", 0,
                        "--json", out_json], capsys)
    assert rc == 0, err
    f = json.loads(out_json.read_text())["fitting"]
    assert f["source"]["kind"] == "csv" and f["source"]["n_sizes"] == len(SIZES)
    truth = float(TRUTH.eta_star(TARGET_N, TARGET_D))
    assert f["eta"] == pytest.approx(truth, rel=0.03)
    assert f["prediction_interval"][0] < truth < f["prediction_interval"][1]
    assert "N (as given in the CSV)" in out
    # The same rows as a sweep give the same law.
    rc, _, _ = run(["--sweep", sweep_dir, "--n", TARGET_N, "--tokens", TARGET_D, "--n-boot", 0,
                    "--json", tmp_path / "sweep.json"], capsys)
    assert json.loads((tmp_path / "sweep.json").read_text())["fitting"]["eta"] == pytest.approx(
        f["eta"], rel=1e-3)


def test_csv_with_several_parametrizations_needs_a_choice(tmp_path, capsys):
    rows = synthetic_rows(SIZES, BUDGETS, lr_steps=LR_STEPS, noise=0.002, seed=0, truth=TRUTH)
    df = pd.DataFrame({"N": [r["n_active_nonembed"] for r in rows],
                       "D": [r["tokens"] for r in rows], "lr": [r["lr"] for r in rows],
                       "loss": [r["val_loss"] for r in rows]})
    both = pd.concat([df.assign(parametrization="sp"),
                      df.assign(parametrization="mup", loss=df["loss"] + 1.0)])
    both.to_csv(tmp_path / "both.csv", index=False)
    argv = ["--csv", tmp_path / "both.csv", "--n", TARGET_N, "--tokens", TARGET_D, "--n-boot", 0]
    rc, _, err = run(argv, capsys)
    assert rc == 2 and "mixes parametrizations ['mup', 'sp']" in err
    assert "--fit-parametrization" in err
    rc, out, err = run(argv + ["--fit-parametrization", "sp"], capsys)
    assert rc == 0, err
    assert "parametrization sp; 12 of 12 optima" in out


def test_fit_json_input_gives_the_sweep_law(sweep_dir, tmp_path, capsys):
    from lrscale.analysis.results import load_results

    sf = fit_sweep(load_results(sweep_dir), n_boot=200, seed=0)
    fit_json = tmp_path / "fit.json"
    fit_json.write_text(json.dumps(build_fit_json(sf, {"hardware": "test"})))
    src = fit_source_from_fit_json(fit_json)
    assert (src.law.c, src.law.alpha, src.law.beta) == pytest.approx(
        (sf.law.c, sf.law.alpha, sf.law.beta), rel=1e-12)
    assert src.law.alpha_ci == pytest.approx(sf.law.alpha_ci)  # same bootstrap settings
    rc, out, err = run(["--fit", fit_json, "--n", TARGET_N, "--tokens", TARGET_D], capsys)
    assert rc == 0, err
    assert f"Recommended peak LR: {float(sf.law.predict(TARGET_N, TARGET_D)):.2e}" in out


def test_committed_fit_grid_fit_json(capsys, tmp_path):
    doc = json.loads((GRID / "fit.json").read_text())
    law = doc["law"]
    rc, out, err = run(["--fit", GRID / "fit.json", "--n", 1e6, "--tokens", "1M",
                        "--json", tmp_path / "r.json"], capsys)
    assert rc == 0, err
    f = json.loads((tmp_path / "r.json").read_text())["fitting"]
    by_hand = law["c"] * 1e6 ** law["alpha"] * 1e6 ** law["beta"]
    assert f["eta"] == pytest.approx(by_hand, rel=1e-9)
    assert f["prediction_interval"][0] < by_hand < f["prediction_interval"][1]
    # Our Eq. 6 leave-one-size-out error is the one analysis.fit recorded.
    assert f["comparison"]["loso_loglinear"] == pytest.approx(doc["loso"]["mean_abs_err_ln_eta"])
    assert "N is 2.49× the largest fitted size" in out


def test_published_laws_raw_and_pinned(sweep_dir):
    src = fit_source_from_sweep(sweep_dir, n_boot=0)
    rec = recommend(TARGET_N, TARGET_D, source=src)
    laws = {r["key"]: r for r in rec.published["laws"]}
    assert laws["zhou2026"]["raw"] == pytest.approx(
        38.4588 * TARGET_N ** -0.2219 * TARGET_D ** -0.3509)
    assert laws["bjorck"]["raw"] is None
    refp = rec.published["reference_point"]
    # Pinned laws pass through the reference optimum: evaluated there they return it.
    at_ref = recommend(refp["N"], refp["D"], source=src).published["laws"]
    for r in at_ref:
        if r["key"] != "bjorck":
            assert r["pinned"] == pytest.approx(refp["eta_star"], rel=1e-9)
    # Bjorck et al. (a D slope only) is anchored at our Eq. 6 at (N, D_ref).
    bjorck = {r["key"]: r for r in at_ref}["bjorck"]
    assert bjorck["pinned"] == pytest.approx(float(src.law.predict(refp["N"], refp["D"])))


# --- Transfer mode: numbers by hand -------------------------------------------------

def test_transfer_mup_by_hand():
    proxy, target = load_model_config("transfer_w32"), load_model_config("transfer_w128")
    # base = 4e-3 · (8e6 / 1e6)^(−1/3) = 2e-3; width m = 128 / 32 = 4.
    t = recommend_transfer(4e-3, proxy, target, 8e6, parametrization="mup", proxy_tokens=1e6,
                           horizon_beta=1 / 3)
    assert t.base_lr_no_horizon == 4e-3
    assert t.base_lr_horizon == pytest.approx(2e-3, rel=1e-12) and t.base_lr == t.base_lr_horizon
    by_role = {g["role"]: g for g in t.groups}
    assert set(by_role) == {"embedding", "norm", "attn_qkv", "attn_out", "expert_in",
                            "expert_out", "router", "unembedding"}
    for role in ("attn_qkv", "attn_out", "expert_in", "expert_out"):  # hidden: LR / m, ε / m
        assert by_role[role]["lr"] == pytest.approx(5e-4) and by_role[role]["eps_mult"] == 0.25
    for role in ("embedding", "norm", "router", "unembedding"):
        assert by_role[role]["lr"] == pytest.approx(2e-3) and by_role[role]["eps_mult"] == 1.0
    assert sum(g["params"] for g in t.groups) == target.param_counts()["n_total"]
    assert by_role["attn_qkv"]["tensors"] == target.n_layers


@pytest.mark.parametrize("name, hidden_lr, hidden_eps, router_lr, router_eps", [
    # m = 4, L/L0 = 8/2 = 4. CompleteP (α = 1): hidden LR × 4^0, ε × 4^-1; router LR 1, ε 4^-1.
    ("completep", 1 / 4, 1 / 16, 1.0, 1 / 4),
    # Depth-μP (α = ½): hidden LR × 4^-½, ε × 4^-½; router LR and ε × 4^-½.
    ("depth_mup", 1 / 8, 1 / 8, 1 / 2, 1 / 2),
])
def test_transfer_depth_rules_by_hand(name, hidden_lr, hidden_eps, router_lr, router_eps):
    proxy = load_model_config("transfer_w32")
    target = load_model_config("transfer_w128", ["n_layers=8"])
    t = recommend_transfer(1e-2, proxy, target, 1e6, parametrization=name, horizon_beta=0)
    assert t.base_lr == 1e-2 and t.base_lr_horizon is None
    by_role = {g["role"]: g for g in t.groups}
    assert by_role["expert_in"]["lr"] == pytest.approx(1e-2 * hidden_lr)
    assert by_role["expert_in"]["eps_mult"] == pytest.approx(hidden_eps)
    assert by_role["router"]["lr"] == pytest.approx(1e-2 * router_lr)
    assert by_role["router"]["eps_mult"] == pytest.approx(router_eps)
    assert by_role["embedding"]["lr"] == 1e-2


def test_both_modes_report_the_ratio(sweep_dir, capsys, tmp_path):
    rc, out, err = run(["--sweep", sweep_dir, "--n-boot", 0, "--proxy-lr", 1e-2,
                        "--proxy-model", "transfer_w32", "--proxy-tokens", "1M",
                        "--target-model", "transfer_w128", "--tokens", "8M",
                        "--horizon-beta", 1 / 3, "--json", tmp_path / "r.json"], capsys)
    assert rc == 0, err
    rec = json.loads((tmp_path / "r.json").read_text())
    assert rec["transfer"]["base_lr"] == pytest.approx(5e-3)
    target = load_model_config("transfer_w128")
    assert rec["target"]["N"] == target.param_counts()["n_active_nonembed"]
    assert rec["transfer_over_fitting"] == pytest.approx(5e-3 / rec["fitting"]["eta"])
    assert "Transfer / Fitting =" in out and "expert_in" in out
    assert "base LR with the horizon rule:    5.00e-03" in out


# --- entry points -------------------------------------------------------------------

@pytest.mark.parametrize("module", ["analysis.predict", "lrscale.analysis.predict"])
def test_module_entry_points(module):
    res = subprocess.run([sys.executable, "-m", module, "--fit", str(GRID / "fit.json"),
                          "--n", "1e6", "--tokens", "1M", "--n-boot", "0"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Recommended peak LR: 1.30e-03" in res.stdout


# --- bad inputs ---------------------------------------------------------------------

def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("make_argv, message", [
    (lambda t: [], "give a fit input (--sweep DIR, --fit fit.json or --csv FILE)"),
    (lambda t: ["--fit", t / "nope.json", "--n", "1e6", "--tokens", "1e6"],
     "nope.json: no such file"),
    (lambda t: ["--fit", _write(t / "x.json", "{oops"), "--n", "1e6", "--tokens", "1e6"],
     "not valid JSON"),
    (lambda t: ["--fit", _write(t / "x.json", '{"a": 1}'), "--n", "1e6", "--tokens", "1e6"],
     "missing key(s) ['n_kind', 'law', 'optima']"),
    (lambda t: ["--fit", _write(t / "x.json", '{"n_kind": "n_total", "law": null, "optima": []}'),
                "--n", "1e6", "--tokens", "1e6"], "'law' is None: that sweep had too few optima"),
    (lambda t: ["--fit", _write(t / "x.json", json.dumps(
        {"n_kind": "n_total", "law": {"c": 1, "alpha": -0.2, "beta": -0.3},
         "optima": [{"N": 1, "D": 2}]})), "--n", "1e6", "--tokens", "1e6"],
     "optima[0] lacks ['eta_star', 'used_in_law']"),
    (lambda t: ["--fit", GRID / "fit.json", "--n-kind", "n_total", "--n", "1e6", "--tokens", "1e6"],
     "fitted with N counted as 'n_active_nonembed', not 'n_total'"),
    (lambda t: ["--fit", GRID / "fit.json", "--window", "5", "--n", "1e6", "--tokens", "1e6"],
     "--window change(s) how optima are fitted, but a fit.json holds its optima already"),
    (lambda t: ["--sweep", t / "nodir", "--n", "1e6", "--tokens", "1e6"], "no such directory"),
    (lambda t: ["--sweep", t, "--n", "1e6", "--tokens", "1e6"], "no results file"),
    (lambda t: ["--csv", t / "nope.csv", "--n", "1e6", "--tokens", "1e6"], "nope.csv: no such file"),
    (lambda t: ["--csv", _write(t / "x.csv", ""), "--n", "1e6", "--tokens", "1e6"],
     "the file is empty"),
    (lambda t: ["--csv", _write(t / "x.csv", "N,D,lr\n1,2,3\n"), "--n", "1e6", "--tokens", "1e6"],
     "missing column(s) ['loss']; found ['N', 'D', 'lr']"),
    (lambda t: ["--csv", _write(t / "x.csv", "N,D,lr,loss\n"), "--n", "1e6", "--tokens", "1e6"],
     "a header but no data rows"),
    (lambda t: ["--csv", _write(t / "x.csv", "N,D,lr,loss\n1e6,1e8,1e-3,3\n1e6,1e8,abc,3\n"),
                "--n", "1e6", "--tokens", "1e6"],
     "column lr must be a finite number on every row; bad value(s) line 3: 'abc'"),
    (lambda t: ["--csv", _write(t / "x.csv", "N,D,lr,loss\n-5,1e8,1e-3,3\n"),
                "--n", "1e6", "--tokens", "1e6"], "column N must be positive"),
    (lambda t: ["--csv", _write(t / "x.csv", "N,D,lr,loss\n5,0.1,1e-3,3\n"),
                "--n", "1e6", "--tokens", "1e6"], "column D counts training tokens"),
    (lambda t: ["--csv", _write(t / "x.csv", "N,D,lr,loss\n1e6,1e8,1e-3,diverged\n"),
                "--n", "1e6", "--tokens", "1e6"],
     "column loss must be a number, or blank/nan for a diverged run; bad value(s) line 2"),
    (lambda t: ["--csv", _write(t / "x.csv", "N,D,lr,loss\n1e6,1e8,1e-3,3\n1e6,1e8,2e-3,2.9\n"),
                "--n", "1e6", "--tokens", "1e6"],
     "no (N, D) group has finite losses at >= 3 distinct LRs"),
    (lambda t: ["--csv", _write(t / "x.csv", "N,D,lr,loss\n" + "".join(
        f"1e6,1e8,{lr},{3 + (math.log(lr) + 7) ** 2}\n" for lr in (1e-4, 1e-3, 1e-2))),
        "--n", "1e6", "--tokens", "1e6"], "Eq. 6 could not be fitted"),
    (lambda t: ["--fit", GRID / "fit.json", "--n", "1e6"], "needs its training tokens: --tokens"),
    (lambda t: ["--fit", GRID / "fit.json", "--tokens", "1e6"], "needs a size: --n N or --target-model"),
    (lambda t: ["--fit", GRID / "fit.json", "--n", "lots", "--tokens", "1e6"],
     "--n must be a positive count like 2e9, 2B or 500M, got 'lots'"),
    (lambda t: ["--fit", GRID / "fit.json", "--n", "1e6", "--target-model", "fit_l",
                "--tokens", "1e6"], "not allowed with argument --n"),
    (lambda t: ["--fit", GRID / "fit.json", "--target-model", "fit_xxl", "--tokens", "1e6"],
     "--target-model fit_xxl: no such model preset; valid: dense_tiny"),
    (lambda t: ["--fit", GRID / "fit.json", "--target-model", "fit_l", "--target-set", "dmodel=3",
                "--tokens", "1e6"], "no field 'dmodel'; valid: name, d_model"),
    (lambda t: ["--fit", GRID / "fit.json", "--target-model", "fit_l", "--target-set", "d_model",
                "--tokens", "1e6"], "'d_model' is not key=value"),
    (lambda t: ["--fit", GRID / "fit.json", "--target-model", "fit_l", "--target-set", "n_heads=7",
                "--tokens", "1e6"], "model.n_heads=7 must divide model.d_model=80"),
    (lambda t: ["--fit", GRID / "fit.json", "--n", "1e6", "--target-set", "d_model=64",
                "--tokens", "1e6"], "--target-set needs --target-model"),
    (lambda t: ["--proxy-lr", "5e-3", "--target-model", "fit_l", "--tokens", "1e6"],
     "Transfer needs --proxy-model PRESET and --target-model PRESET"),
    (lambda t: ["--proxy-lr", "0", "--proxy-model", "fit_xs", "--target-model", "fit_l",
                "--tokens", "1e6"], "argument --proxy-lr: must be a positive number, got '0'"),
    (lambda t: ["--proxy-lr", "5e-3", "--proxy-model", "fit_xs", "--target-model", "fit_l",
                "--tokens", "1e6"], "needs the proxy's token count D0: pass --proxy-tokens"),
    (lambda t: ["--fit", GRID / "fit.json", "--n", "1e6", "--tokens", "1e6", "--proxy-model",
                "fit_xs"], "also pass --proxy-lr"),
    (lambda t: ["--proxy-lr", "5e-3", "--proxy-model", "fit_xs", "--target-model", "fit_l",
                "--tokens", "1e6", "--parametrization", "sp"],
     "argument --parametrization: invalid choice: 'sp'"),
])
def test_bad_inputs_exit_2_with_a_clear_message(make_argv, message, tmp_path, capsys):
    rc, out, err = run(make_argv(tmp_path), capsys)
    assert rc == 2
    assert message in err, err
    assert err.startswith("error: ") and "Traceback" not in err and out == ""


def test_edited_fit_json_is_refused(tmp_path, capsys):
    doc = json.loads((GRID / "fit.json").read_text())
    doc["law"]["alpha"] = -0.5
    bad = _write(tmp_path / "fit.json", json.dumps(doc))
    with pytest.raises(PredictInputError, match=r"does not match a refit of its own used_in_law"):
        fit_source_from_fit_json(bad)
