"""Token-horizon analysis (analysis/horizon.py) on synthetic sweeps with a planted exponent:
eta*(D) = eta0 (D/D0)^-beta, one run per LR with a decay-branch row per budget."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lrscale.analysis.horizon import PAPER_BETA, horizon_optima, load_horizon
from lrscale.analysis.synthetic_transfer import planted_horizon
from lrscale.analysis.transfer import main

BUDGETS = (40960, 81920, 163840, 327680)


def test_planted_exponent_recovered_exactly_without_noise(tmp_path):
    df = load_horizon(planted_horizon(tmp_path / "h", beta=PAPER_BETA, budgets=BUDGETS, n_lrs=7))
    assert sorted(df["size"].unique()) == list(BUDGETS) and (df["eta"] == df["lr"]).all()
    table, fits = horizon_optima(df)
    b = fits["mup"]
    assert b["beta"] == pytest.approx(PAPER_BETA, abs=1e-6) and b["span"] == 8 and b["n_budgets_used"] == 4
    t = table.set_index("tokens")
    for D in BUDGETS:
        shift = math.log2(D / BUDGETS[0])
        assert t.loc[D, "eta_star"] == pytest.approx(1e-2 * (D / BUDGETS[0]) ** -PAPER_BETA, rel=1e-6)
        assert t.loc[D, "drift_log2"] == pytest.approx(-PAPER_BETA * shift, abs=1e-6)
        # the rule with the true beta holds the base LR in place
        assert t.loc[D, "drift_rule_paper_log2"] == pytest.approx(0.0, abs=1e-6)
        assert t.loc[D, "drift_rule_fitted_log2"] == pytest.approx(0.0, abs=1e-6)
        assert t.loc[D, "eta_base_star_paper"] == pytest.approx(1e-2, rel=1e-6)


def test_planted_exponent_inside_its_interval_with_noise(tmp_path):
    df = load_horizon(planted_horizon(tmp_path / "h", beta=0.2, budgets=BUDGETS + (655360,), n_lrs=9,
                                      noise=0.004, seed=3))
    table, fits = horizon_optima(df)
    b = fits["mup"]
    assert b["beta_ci"][0] < 0.2 < b["beta_ci"][1] and b["beta"] == pytest.approx(0.2, abs=0.05)
    # a wrong rule (the paper's beta on a beta = 0.2 model) over-corrects: positive drift at the longest budget
    last = table.set_index("tokens").loc[655360]
    assert last["drift_rule_paper_log2"] == pytest.approx((PAPER_BETA - 0.2) * 4, abs=0.25)
    assert last["drift_rule_paper_log2_lo"] > 0


def test_base_budget_and_short_spans_are_reported(tmp_path):
    df = load_horizon(planted_horizon(tmp_path / "h", budgets=(40960, 81920, 163840), n_lrs=7))
    table, fits = horizon_optima(df, base_tokens=81920)
    t = table.set_index("tokens")
    assert t.loc[81920, "drift_log2"] == 0.0 and t.loc[40960, "drift_log2"] == pytest.approx(0.35, abs=1e-6)
    assert any("poorly determined" in n for n in fits["mup"]["notes"])
    with pytest.raises(ValueError, match="not a measured budget"):
        horizon_optima(df, base_tokens=12345)


def test_cli_axis_tokens_writes_the_horizon_outputs(tmp_path, capsys):
    sweep = planted_horizon(tmp_path / "h", budgets=BUDGETS, n_lrs=7)
    assert main([str(sweep), "--axis", "tokens", "--out", str(tmp_path / "o"), "--hardware", "test"]) == 0
    assert "fitted β = 0.350" in capsys.readouterr().out
    for f in ("horizon.png", "horizon.csv", "horizon.md", "horizon.json", "run_config.csv", "results.jsonl"):
        assert (tmp_path / "o" / f).exists(), f
    summary = json.loads((tmp_path / "o" / "horizon.json").read_text())
    assert summary["beta"]["mup"]["beta"] == pytest.approx(0.35, abs=1e-6)
    assert np.isfinite(summary["optima"][0]["eta_star"])


def test_log_scale_counts_only_points_drawn_in_data_coordinates():
    """A log axis needs a drawn positive value: points with a NaN coordinate are not drawn, and an
    axhline's x is a fraction of the axes, not data (both once made a failed fit's figure crash)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lrscale.analysis.plots import log_scale
    fig, ax = plt.subplots()
    ax.errorbar([64.0, 128.0], [float("nan")] * 2, yerr=[0.0, 0.0], fmt="o")   # fits failed: nothing drawn
    ax.axhline(0.0)
    assert not log_scale(ax, "x") and ax.get_xscale() == "linear"
    fig.canvas.draw()                                                         # and the figure renders
    ax.plot([64.0, 128.0], [1.0, 2.0])
    assert log_scale(ax, "x") and ax.get_xscale() == "log"
    fig2, ax2 = plt.subplots()
    ax2.scatter([1e-3, 2e-3], [4.0, 5.0])
    assert log_scale(ax2, "x") and log_scale(ax2, "y")
    plt.close("all")
