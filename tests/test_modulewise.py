"""Module-wise LR ablation (analysis/modulewise.py): loss at the optimum and the sharpness of the
loss-vs-LR curve (Eq. 2 curvature, loss increase at x2 and x1/2), checked against hand arithmetic."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lrscale.analysis.modulewise import LN2_SQ, loss_at, modulewise_optima, write_modulewise
from lrscale.analysis.synthetic_transfer import planted_ablation, quadratic_loss
from lrscale.analysis.transfer import load_transfer


def test_loss_at_interpolates_in_log_lr_by_hand():
    lrs, losses = [1.0, 2.0, 4.0, 2.0], [3.0, 1.0, 2.0, 2.0]     # LR 2 twice: mean 1.5
    assert loss_at(lrs, losses, 2.0) == pytest.approx(1.5)
    assert loss_at(lrs, losses, 2 ** 1.5) == pytest.approx((1.5 + 2.0) / 2)   # half way in ln eta
    assert loss_at(lrs, losses, 2 ** 0.25) == pytest.approx(3.0 + 0.25 * (1.5 - 3.0))
    assert math.isnan(loss_at(lrs, losses, 8.0))
    assert loss_at(lrs, losses, 8.0, diverged_lrs=[8.0]) == math.inf
    assert loss_at(lrs, losses, 0.25, diverged_lrs=[0.5]) == math.inf
    assert math.isnan(loss_at(lrs, losses, 0.25, diverged_lrs=[8.0]))


def test_curvature_and_x2_increase_by_hand(tmp_path):
    """L = L_min + C (ln eta - ln eta*)^2 on LRs spaced by 2: Eq. 2 is exact, so C, eta* and L_min are
    the planted ones and the Eq. 2 increase at x2 is C ln(2)^2. The interpolated increase is worked out
    by hand: eta_ref = eta* sits between grid LRs, and so does 2 eta_ref, at the same fraction of their
    interval, so both chords overshoot the parabola by the same amount and the increase is C ln(2)^2 too."""
    sweep = planted_ablation(tmp_path / "a", variants={"sp": (4e-3, 4.3, 0.2), "mup": (1e-2, 4.2, 0.08)},
                             lrs=[1.5e-3, 3e-3, 6e-3, 1.2e-2, 2.4e-2, 4.8e-2])
    opt = modulewise_optima(load_transfer(sweep)).set_index("variant")
    for variant, (eta, L_min, C) in {"sp": (4e-3, 4.3, 0.2), "mup": (1e-2, 4.2, 0.08)}.items():
        r = opt.loc[variant]
        assert r["eta_star"] == pytest.approx(eta, rel=1e-6) and r["eq2_loss_min"] == pytest.approx(L_min)
        assert r["eq2_C"] == pytest.approx(C) and r["dloss_x2_eq2"] == pytest.approx(C * LN2_SQ)
        assert r["eta_ref_source"] == "eq2"
        # by hand: loss at eta_ref and at 2 eta_ref, each a chord between its two neighbouring grid LRs
        grid = np.array([1.5e-3, 3e-3, 6e-3, 1.2e-2, 2.4e-2, 4.8e-2])
        def chord(x):  # noqa: E306
            i = np.searchsorted(grid, x) - 1
            f = (math.log(x) - math.log(grid[i])) / math.log(2)
            left, right = (quadratic_loss(g, eta, L_min=L_min, C=C) for g in grid[i:i + 2])
            return (1 - f) * left + f * right
        assert r["loss_at_ref"] == pytest.approx(chord(eta))
        assert r["dloss_x2"] == pytest.approx(chord(2 * eta) - chord(eta))
        assert r["dloss_x2"] == pytest.approx(C * LN2_SQ)
        assert r["dloss_half"] == pytest.approx(chord(eta / 2) - chord(eta))
    gap = opt.loc["mup", "best_loss"] - opt.loc["sp", "best_loss"]
    assert opt.loc["mup", "best_loss_minus_sp"] == pytest.approx(gap)
    assert opt.loc["sp", "best_loss_minus_sp"] == 0.0


def test_uneven_grid_interpolated_increase_by_hand():
    # eta* = 1 on LRs {0.5, 1, 1.5, 3}: eta_ref = 1 is a grid LR; 2 lies between 1.5 and 3.
    C = 0.1
    rows = [{"variant": "sp", "size": 64, "lr": lr, "status": "ok", "val_loss": 4 + C * math.log(lr) ** 2}
            for lr in (0.5, 1.0, 1.5, 3.0)]
    r = modulewise_optima(pd.DataFrame(rows)).iloc[0]
    assert r["eta_star"] == pytest.approx(1.0) and r["eq2_C"] == pytest.approx(C)
    f = math.log(2 / 1.5) / math.log(3 / 1.5)
    by_hand = (1 - f) * C * math.log(1.5) ** 2 + f * C * math.log(3) ** 2
    assert r["dloss_x2"] == pytest.approx(by_hand)
    assert r["dloss_half"] == pytest.approx(C * math.log(2) ** 2)
    assert r["dloss_x2"] > r["dloss_x2_eq2"]  # the chord lies above the parabola


def test_a_cliff_above_the_optimum_is_an_infinite_increase(tmp_path):
    sweep = planted_ablation(tmp_path / "a", variants={"sp": (1.2e-2, 4.3, 0.2)},
                             lrs=[1.5e-3, 3e-3, 6e-3, 1.2e-2, 2.4e-2], diverge_above=1.3e-2)
    r = modulewise_optima(load_transfer(sweep)).iloc[0]
    assert r["n_diverged"] == 1 and r["eta_ref_source"] == "grid" and r["best_lr"] == pytest.approx(1.2e-2)
    assert r["dloss_x2"] == math.inf


def test_write_modulewise_outputs(tmp_path):
    out = write_modulewise(planted_ablation(tmp_path / "a"), tmp_path / "o", hardware="test")
    for f in ("modulewise.png", "modulewise.csv", "modulewise.md", "modulewise.json", "run_config.csv"):
        assert (tmp_path / "o" / f).exists(), f
    assert "| sp_mup_lr |" in out["markdown"] and len(out["optima"]) == 3


def test_modulewise_writes_figure_5_at_each_variants_best_lr(tmp_path):
    """The why behind the losses: probes of each variant's best run, with a spike planted in SP's runs
    counted there and nowhere else; --no-probes leaves them out."""
    import pandas as pd

    out = write_modulewise(planted_ablation(tmp_path / "a", spike="sp"), tmp_path / "o", hardware="test")
    files = out["probe_outputs"]["files"]
    for name in ("probes.csv", "spikes.csv", "fig5_stability.png", "monitors.png"):
        assert name in files.values() and (tmp_path / "o" / name).exists(), name
    spikes = pd.read_csv(tmp_path / "o" / "spikes.csv")
    best = spikes[spikes["selection"].str.contains("best")].set_index("variant")
    assert set(best.index) == {"sp", "sp_mup_lr", "mup"}
    assert best.loc["sp", "loss_spikes"] == 1 and best.loc["sp", "lr"] == pytest.approx(3e-3)  # grid 6e-3 x 2^k: nearest 4e-3
    assert (best.drop(index="sp")["loss_spikes"] == 0).all()
    bare = write_modulewise(planted_ablation(tmp_path / "b", spike="sp"), tmp_path / "p", probes=False)
    assert bare["probe_outputs"] == {} and not (tmp_path / "p" / "probes.csv").exists()


def test_best_lr_is_the_lowest_mean_over_seeds_and_the_gap_carries_its_standard_error(tmp_path):
    """Seeds at the optima: a lucky seed at a neighbouring LR must not pick it (the mean does), and
    the gap to SP gets se = sqrt(sd_a^2/n_a + sd_sp^2/n_sp), computed here by hand."""
    df = load_transfer(planted_ablation(tmp_path / "a"))
    extra = []

    def seeds(variant, lr, losses):
        base = df[(df["variant"] == variant) & np.isclose(df["lr"], lr)].iloc[0]
        for i, loss in enumerate(losses):
            extra.append({**base.to_dict(), "run_id": f"{base['run_id']}-s{i + 1}", "val_loss": loss})
        return float(base["val_loss"])

    l_mup = seeds("mup", 1.2e-2, [])                 # mup's grid optimum, loss quadratic_loss(1.2e-2, ...)
    seeds("mup", 1.2e-2, [l_mup + 0.005, l_mup - 0.005])     # mean l_mup, sd 0.005
    l_nb = seeds("mup", 6e-3, [])
    seeds("mup", 6e-3, [2 * l_mup + 0.01 - l_nb])    # lucky: below l_mup alone; mean of the two l_mup + 0.005
    assert min(r["val_loss"] for r in extra) < l_mup - 0.005     # the lowest single run is the lucky one
    l_sp = seeds("sp", 3e-3, [])
    seeds("sp", 3e-3, [l_sp + 0.01, l_sp - 0.01])            # mean l_sp, sd 0.01
    opt = modulewise_optima(pd.concat([df, pd.DataFrame(extra)], ignore_index=True)).set_index("variant")
    assert opt.at["mup", "best_lr"] == pytest.approx(1.2e-2)
    assert opt.at["mup", "best_loss"] == pytest.approx(l_mup) and opt.at["mup", "n_seeds_at_best"] == 3
    assert opt.at["mup", "best_loss_sd"] == pytest.approx(0.005)
    assert opt.at["mup", "best_loss_minus_sp"] == pytest.approx(l_mup - l_sp)
    assert opt.at["mup", "best_loss_minus_sp_se"] == pytest.approx(math.sqrt(0.005 ** 2 / 3 + 0.01 ** 2 / 3))
    assert math.isnan(opt.at["sp_mup_lr", "best_loss_minus_sp_se"])   # one seed there: no se
