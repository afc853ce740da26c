"""Property tests for analysis.fitting / analysis.laws: the fits recover what a known
law put into synthetic data, flag what they cannot trust, and fail clearly."""

import math

import numpy as np
import pandas as pd
import pytest

from lrscale.analysis.fitting import (
    FitWarning,
    InsufficientDataError,
    fit_loss_vs_tokens,
    fit_lr_curve,
    fit_lr_law,
    fit_sweep,
    leave_one_size_out,
    search_cost,
)
from lrscale.analysis.laws import (
    BJORCK_2024,
    DEEPSEEK_LLM,
    PUBLISHED_LAWS,
    STEP_LAW,
    ZHOU_2026,
    bjorck_law,
    compare_exponents,
    rescale_law,
)
from lrscale.analysis.synthetic import SyntheticTruth, synthetic_rows

# Exponent tolerance for the noisy pipeline. With loss noise σ = 0.002 and curvature
# C = 0.05 the bootstrap s.e. of α, β is ~0.002 (see the CI widths), so 0.02 is ~10 s.e.:
# never flaky, yet a swapped or mis-signed term (|α − β| = 0.1) fails it.
EXPONENT_TOL = 0.02
TRUTH = SyntheticTruth(alpha=-0.25, beta=-0.35)
LR_GRID = 1e-3 * 2.0 ** np.arange(-3, 4)  # 7 LRs, factor-2 spacing (PAPER.md §2)


def quadratic_losses(lrs, eta_star, C=0.05, l_min=3.0):
    return l_min + C * (np.log(lrs) - math.log(eta_star)) ** 2


@pytest.fixture(scope="module")
def synthetic_fit():
    df = pd.DataFrame(synthetic_rows(noise=0.002, seed=0, truth=TRUTH))
    return fit_sweep(df, "n_active_nonembed", n_boot=1000, seed=0)


# --- Eq. 2 -------------------------------------------------------------------

def test_lr_curve_recovers_known_optimum_noiseless():
    fit = fit_lr_curve(LR_GRID, quadratic_losses(LR_GRID, 1.3e-3, C=0.07, l_min=3.1))
    assert fit.eta_star == pytest.approx(1.3e-3, rel=1e-9)
    assert fit.C == pytest.approx(0.07, rel=1e-9)
    assert fit.loss_min == pytest.approx(3.1, rel=1e-12)
    assert fit.edge is None and fit.suggest_lrs == [] and fit.convex
    assert fit.r2 == pytest.approx(1.0)


def test_lr_curve_ci_covers_truth_with_noise():
    rng = np.random.default_rng(1)
    losses = quadratic_losses(LR_GRID, 1.3e-3) + 0.002 * rng.standard_normal(LR_GRID.size)
    fit = fit_lr_curve(LR_GRID, losses)
    lo, hi = fit.eta_ci
    assert lo < 1.3e-3 < hi
    assert fit.eta_star == pytest.approx(1.3e-3, rel=0.05)


def test_lr_curve_three_points_has_no_ci():
    fit = fit_lr_curve(LR_GRID[2:5], quadratic_losses(LR_GRID[2:5], 1e-3))
    assert fit.eta_star == pytest.approx(1e-3, rel=1e-9)
    assert all(math.isnan(v) for v in fit.eta_ci)


@pytest.mark.parametrize("eta_true, edge, expected", [
    (3 * LR_GRID[-1], "above", [LR_GRID[-1] * 2, LR_GRID[-1] * 4]),
    (LR_GRID[0] / 3, "below", [LR_GRID[0] / 2, LR_GRID[0] / 4]),
])
def test_lr_curve_flags_optimum_outside_grid(eta_true, edge, expected):
    with pytest.warns(FitWarning, match="add lr"):
        fit = fit_lr_curve(LR_GRID, quadratic_losses(LR_GRID, eta_true))
    assert fit.edge == edge
    assert fit.suggest_lrs[:2] == pytest.approx(expected)
    # The fitted optimum lies past the grid: suggestions reach one step beyond it.
    beyond = fit.suggest_lrs[-1]
    assert beyond > eta_true if edge == "above" else beyond < eta_true


def test_lr_curve_flags_optimum_at_grid_end():
    # Vertex just inside the largest LR but the lowest measured loss is at that end.
    eta_true = LR_GRID[-1] * 0.9
    with pytest.warns(FitWarning):
        fit = fit_lr_curve(LR_GRID, quadratic_losses(LR_GRID, eta_true))
    assert fit.edge == "above"


def test_lr_curve_window_ignores_far_points():
    losses = quadratic_losses(LR_GRID, 1e-3)
    losses[-1] += 1.0  # an LR near divergence: far from quadratic
    full = fit_lr_curve(LR_GRID, losses)
    windowed = fit_lr_curve(LR_GRID, losses, window=5)
    assert windowed.n_points == 5
    assert windowed.eta_star == pytest.approx(1e-3, rel=1e-9)
    assert abs(math.log(full.eta_star / 1e-3)) > 0.05  # the far point biases the full fit


def test_lr_curve_non_convex_is_flagged_not_raised():
    losses = 3.0 - 0.05 * (np.log(LR_GRID) - math.log(1e-3)) ** 2
    with pytest.warns(FitWarning, match="not convex"):
        fit = fit_lr_curve(LR_GRID, losses)
    assert not fit.convex and fit.C < 0
    assert math.isnan(fit.eta_star)


def test_lr_curve_too_few_lrs_raises_clearly():
    with pytest.raises(InsufficientDataError, match=">= 3 distinct learning rates"):
        fit_lr_curve([1e-3, 1e-3, 2e-3], [3.0, 3.01, 2.9])
    with pytest.raises(InsufficientDataError):  # diverged (inf) points do not count
        fit_lr_curve([1e-3, 2e-3, 4e-3], [3.0, 2.9, np.inf])


# --- Eq. 4 -------------------------------------------------------------------

def test_loss_vs_tokens_recovers_noiseless():
    D = np.geomspace(1e8, 3.2e9, 6)
    fit = fit_loss_vs_tokens(D, 2.5 + 50.0 * D ** -0.3)
    assert fit.L0 == pytest.approx(2.5, rel=1e-4)
    assert fit.A == pytest.approx(50.0, rel=1e-3)
    assert fit.gamma == pytest.approx(0.3, rel=1e-4)
    assert fit.predict(1e11) == pytest.approx(2.5 + 50.0 * 1e11 ** -0.3, rel=1e-6)
    assert fit.at_bound == ()


def test_loss_vs_tokens_three_points_interpolates():
    D = np.array([1e8, 4e8, 1.6e9])
    losses = 2.2 + 80.0 * D ** -0.35
    fit = fit_loss_vs_tokens(D, losses)
    np.testing.assert_allclose(fit.predict(D), losses, rtol=1e-9)
    assert fit.gamma == pytest.approx(0.35, rel=1e-3)
    assert fit.L0 == pytest.approx(2.2, rel=1e-3)


def test_loss_vs_tokens_flags_non_decreasing_and_needs_three_budgets():
    with pytest.warns(FitWarning, match="bound"):
        fit = fit_loss_vs_tokens([1e8, 2e8, 4e8], [3.0, 3.1, 3.2])
    assert fit.at_bound  # e.g. L0 pinned at min(loss), γ at its lower bound
    with pytest.raises(InsufficientDataError, match="3 distinct token budgets"):
        fit_loss_vs_tokens([1e8, 2e8, 2e8], [3.0, 2.9, 2.9])


# --- Eq. 6 -------------------------------------------------------------------

def test_lr_law_exact_on_noiseless_points():
    N, D = np.meshgrid([1e6, 4e6, 1.6e7, 6.4e7], [1e8, 4e8, 1.6e9])
    eta = TRUTH.eta_star(N, D)
    fit = fit_lr_law(N.ravel(), D.ravel(), eta.ravel(), n_boot=200, seed=0)
    assert fit.alpha == pytest.approx(-0.25, abs=1e-10)
    assert fit.beta == pytest.approx(-0.35, abs=1e-10)
    assert fit.c == pytest.approx(TRUTH.c, rel=1e-8)
    assert fit.r2 == pytest.approx(1.0)
    assert fit.predict(1e9, 1e11) == pytest.approx(TRUTH.eta_star(1e9, 1e11), rel=1e-8)


def test_pipeline_recovers_exponents_within_tolerance_and_ci(synthetic_fit):
    law = synthetic_fit.law
    assert abs(law.alpha - TRUTH.alpha) < EXPONENT_TOL
    assert abs(law.beta - TRUTH.beta) < EXPONENT_TOL
    assert law.alpha_ci[0] < TRUTH.alpha < law.alpha_ci[1]
    assert law.beta_ci[0] < TRUTH.beta < law.beta_ci[1]
    assert law.c_ci[0] < TRUTH.c < law.c_ci[1]
    assert law.r2 > 0.99
    assert law.n_boot_used == 1000
    assert not synthetic_fit.optima["edge"].notna().any()


def test_pipeline_bootstrap_is_seeded():
    df = pd.DataFrame(synthetic_rows(sizes=(2e6, 8e6, 3.2e7), budgets=(1e8, 4e8, 1.6e9)))
    a = fit_sweep(df, n_boot=300, seed=3).law
    b = fit_sweep(df, n_boot=300, seed=3).law
    assert a.alpha_ci == b.alpha_ci and a.beta_ci == b.beta_ci


def test_pipeline_eq4_extrapolation_adds_long_horizon_optima():
    df = pd.DataFrame(synthetic_rows(noise=0.0))
    sf = fit_sweep(df, extrapolate_tokens=[3.2e9], n_boot=100)
    ext = sf.optima[sf.optima["source"] == "eq4"]
    assert len(ext) == 5 and (ext["D"] == 3.2e9).all()
    # Eq. 4 is only an approximation of the synthetic loss surface: within 10 %.
    rel = ext["eta_star"] / TRUTH.eta_star(ext["N"], ext["D"]) - 1
    assert rel.abs().max() < 0.10
    assert abs(sf.law.beta - TRUTH.beta) < EXPONENT_TOL


def test_leave_one_size_out_is_small_on_noiseless_points():
    N, D = np.meshgrid([1e6, 4e6, 1.6e7, 6.4e7], [1e8, 4e8])
    loso = leave_one_size_out(N.ravel(), D.ravel(), TRUTH.eta_star(N, D).ravel())
    assert sorted(loso["N_held_out"].unique()) == [1e6, 4e6, 1.6e7, 6.4e7]
    assert loso["rel_err_eta"].abs().max() < 1e-9
    assert loso["err_ln_eta"].abs().max() < 1e-9


def test_lr_law_too_few_points_raises_clearly():
    with pytest.raises(InsufficientDataError, match="2 model sizes"):
        fit_lr_law([1e6, 1e6, 1e6, 1e6], [1e8, 2e8, 4e8, 8e8], [1e-3, 9e-4, 8e-4, 7e-4])


def test_pipeline_edge_optimum_excluded_from_law_and_reported():
    df = pd.DataFrame(synthetic_rows(lr_steps=(0, 1, 2, 3, 4)))  # grid starts at η*(D_mid)
    sf = fit_sweep(df, n_boot=100)
    edges = sf.optima[sf.optima["edge"].notna()]
    assert len(edges) > 0 and (edges["edge"] == "below").all()
    assert not edges["used_in_law"].any()
    assert any("edge" in w for w in sf.warnings)
    for model, suggest in zip(edges["model"], edges["suggest_lrs"]):
        assert max(suggest) < df.loc[df["model"] == model, "lr"].min()


# --- search cost ---------------------------------------------------------------

def test_search_cost_on_hand_made_table():
    # Two runs (one per LR) with decay branches at D = 100 and 200 tokens; 10 FLOPs/token.
    # Stable phase to 160 tokens plus branches of 20 and 40 tokens: 2200 FLOPs per run.
    rows = []
    for run, lr in (("r0", 1e-3), ("r1", 2e-3)):
        for branch, D in enumerate((100, 200)):
            rows.append({"run_id": run, "model": "m", "lr": lr, "tokens": D, "branch": branch,
                         "flops": 10.0 * D, "run_flops": 2200.0})
    cost = search_cost(pd.DataFrame(rows))
    assert cost.pipeline_flops == 4400.0 and cost.pipeline_runs == 2
    assert cost.grid_flops == 2 * (1000.0 + 2000.0) and cost.grid_runs == 4
    assert cost.flops_ratio == pytest.approx(6000 / 4400)
    assert (cost.n_sizes, cost.n_lrs, cost.n_budgets) == (1, 2, 2)


# --- published laws ------------------------------------------------------------

def test_published_laws_at_reference_point():
    N, D = 1e9, 1e11
    # Hand-evaluated: 38.4588·1e9^-0.2219·1e11^-0.3509, 0.3118·(6·1e9·1e11)^-0.125,
    # 1.79·1e9^-0.713·1e11^0.307.
    assert ZHOU_2026.predict(N, D) == pytest.approx(5.34559e-05, rel=1e-5)
    assert DEEPSEEK_LLM.predict(N, D) == pytest.approx(7.88147e-04, rel=1e-5)
    assert STEP_LAW.predict(N, D) == pytest.approx(1.63250e-03, rel=1e-5)
    with pytest.raises(ValueError, match="anchor"):
        BJORCK_2024.predict(N, D)
    anchored = bjorck_law(eta_ref=2e-3, d_ref=1e10)
    assert anchored.predict(N, 1e10) == pytest.approx(2e-3)
    assert anchored.predict(N, 1e11) == pytest.approx(2e-3 * 10 ** -0.32)
    assert all(law.citation for law in PUBLISHED_LAWS.values())


def test_rescaled_law_keeps_shape_and_passes_through_reference():
    ref = (3e7, 4e8, 1.5e-3)
    law = rescale_law(ZHOU_2026, *ref)
    assert law.predict(ref[0], ref[1]) == pytest.approx(ref[2])
    ratio = law.predict(6e7, 4e8) / law.predict(3e7, 4e8)
    assert ratio == pytest.approx(2 ** -0.2219)


def test_compare_exponents_table(synthetic_fit):
    table = compare_exponents(synthetic_fit.law).set_index("law")
    assert table.loc["ours (this sweep)", "alpha_N"] == synthetic_fit.law.alpha
    zhou = table.loc[ZHOU_2026.name]
    assert zhou["beta_D"] == -0.3509
    assert zhou["d_beta"] == pytest.approx(synthetic_fit.law.beta + 0.3509)
    assert table.loc[STEP_LAW.name, "beta_in_our_ci"] is False  # +0.307 vs our ≈ −0.35
    assert table.loc[STEP_LAW.name, "alpha_in_our_ci"] is False
    assert math.isnan(table.loc[BJORCK_2024.name, "alpha_N"])  # no N term in that law
