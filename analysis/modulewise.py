"""Does module-wise LR tuning pay? (PAPER.md Sec. 1: the paper attributes the Fitting paradigm's win
to module-wise LRs bringing no gain at scale under modern normalisation.) One width, three variants,
an LR sweep each:
  sp          SP init and forward, one global LR;
  sp_mup_lr   SP init and forward with muP's per-module LR multipliers only;
  mup         full muP.
Per variant: the loss at its optimum (grid minimum, and Eq. 2's L_min with eta* and its interval),
and how sharp the loss-vs-LR curve is around the optimum:
  Eq. 2 curvature C of L = L_min + C (ln eta - a)^2, whose loss increase at x2 and x1/2 the optimum
  is C (ln 2)^2 both ways (a symmetric model);
  the measured increase at 2 eta_ref and eta_ref / 2, interpolated linearly in ln eta between
  measured LRs (mean over seeds), relative to the interpolated loss at eta_ref; eta_ref is the
  Eq. 2 optimum when it is bracketed by the grid, else the grid optimum. Outside the sampled LRs
  the increase is nan, or inf when a run at or below that LR diverged (the curve ends in a cliff).

    python -m analysis.transfer sweeps/transfer_ablation --analysis modulewise --out DIR
"""
from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from lrscale.training.io import jsonable
from lrscale.analysis.plots import new_figure, save_figure, log_scale
from lrscale.analysis.run_configs import export_study_tables
from lrscale.analysis.transfer import (EQ2_WINDOW, _ci, _f, caption_for, config_keys_used, eq2_fit, fit_columns,
                                       load_transfer, loss_per_lr, loss_ylim, usable, variant_order)

LN2_SQ = math.log(2) ** 2


def loss_at(lrs, losses, target: float, diverged_lrs=()) -> float:
    """Loss at LR `target` by linear interpolation in ln eta over the measured LRs (repeated LRs are
    averaged). nan outside the measured range; inf when beyond the largest finite LR a diverged run
    sits at or below the target (or, for targets below, at or above it)."""
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    keep = np.isfinite(losses)
    grid = np.unique(lrs[keep])
    if not grid.size:
        return math.nan
    mean = np.array([losses[keep][lrs[keep] == g].mean() for g in grid])
    tol = 1e-9 * target
    if target > grid[-1] + tol:
        return math.inf if any(grid[-1] < d <= target + tol for d in diverged_lrs) else math.nan
    if target < grid[0] - tol:
        return math.inf if any(target - tol <= d < grid[0] for d in diverged_lrs) else math.nan
    return float(np.interp(math.log(target), np.log(grid), mean))


def modulewise_optima(df: pd.DataFrame, *, window: int | None = EQ2_WINDOW) -> pd.DataFrame:
    """Per (variant, size): grid optimum, Eq. 2 optimum and curvature, the loss increase at x2 and
    x1/2 (Eq. 2 and interpolated), and the gap to SP's optimum loss (negative: better than SP)."""
    rows = []
    for (variant, size), g in df.groupby(["variant", "size"]):
        ok = usable(g)
        row = {"variant": variant, "size": size, "n_lrs": int(g["lr"].nunique()),
               "n_diverged": int((g["status"] == "diverged").sum()), "best_lr": math.nan, "best_loss": math.nan,
               "best_loss_sd": math.nan, "n_seeds_at_best": 0}
        if len(ok):  # the LR whose mean over seeds is lowest: a lucky seed does not pick it
            per_lr = loss_per_lr(ok)
            lr = per_lr["mean"].idxmin()
            row.update(best_lr=float(lr), best_loss=float(per_lr.at[lr, "mean"]),
                       best_loss_sd=float(per_lr.at[lr, "std"]), n_seeds_at_best=int(per_lr.at[lr, "count"]))
        fit = eq2_fit(g, window=window) if len(ok) else None
        row.update(fit_columns(fit))
        bracketed = fit is not None and fit.convex and not fit.edge
        ref = row["eta_star"] if bracketed else row["best_lr"]
        bad = g.loc[g["status"] == "diverged", "lr"].astype(float).tolist()
        at = (lambda x: loss_at(ok["lr"], ok["val_loss"], x, bad))  # noqa: E731
        l_ref = at(ref) if np.isfinite(ref) else math.nan
        row.update(eta_ref=ref, eta_ref_source="eq2" if bracketed else "grid", loss_at_ref=l_ref,
                   dloss_x2_eq2=row["eq2_C"] * LN2_SQ if fit is not None and fit.convex else math.nan,
                   dloss_x2=at(2 * ref) - l_ref if np.isfinite(ref) else math.nan,
                   dloss_half=at(ref / 2) - l_ref if np.isfinite(ref) else math.nan)
        rows.append(row)
    out = pd.DataFrame(rows).sort_values(["size", "variant"]).reset_index(drop=True)
    for col in ("best_loss", "eq2_loss_min"):
        sp = out[out["variant"] == "sp"].set_index("size")[col]
        out[f"{col}_minus_sp"] = out[col] - out["size"].map(sp).astype(float)
    # standard error of the gap, from the seeds at both optima (nan with one seed on either side)
    out["best_loss_var_mean"] = out["best_loss_sd"] ** 2 / out["n_seeds_at_best"].where(out["n_seeds_at_best"] > 0)
    sp_var = out[out["variant"] == "sp"].set_index("size")["best_loss_var_mean"]
    out["best_loss_minus_sp_se"] = np.sqrt(out["best_loss_var_mean"] + out["size"].map(sp_var).astype(float))
    out.loc[out["variant"] == "sp", "best_loss_minus_sp_se"] = math.nan
    return out.drop(columns="best_loss_var_mean")


def markdown(opt: pd.DataFrame) -> str:
    lines = ["| variant | size | best LR (grid) | best loss (mean ± sd over seeds) | η* (Eq. 2) [95% CI] | "
             "L_min (Eq. 2) | C | ΔL ×2 (Eq. 2: C·ln²2) | ΔL ×2 (interp.) | ΔL ×½ (interp.) | best loss − SP (± se) | "
             "diverged |",
             "|" + "---|" * 12]
    for r in opt.to_dict("records"):
        edge = f" ({r['eq2_edge']} edge)" if r["eq2_edge"] else ""
        sd = f" ± {r['best_loss_sd']:.4f} ({r['n_seeds_at_best']} seeds)" if r["n_seeds_at_best"] > 1 else ""
        se = f" ± {r['best_loss_minus_sp_se']:.4f}" if np.isfinite(r["best_loss_minus_sp_se"]) else ""
        lines.append(f"| {r['variant']} | {r['size']} | {_f(r['best_lr'], '.3g')} | {_f(r['best_loss'], '.4f')}{sd} | "
                     f"{_f(r['eta_star'], '.3g')}{edge} {_ci(r['eta_ci_lo'], r['eta_ci_hi'], '.3g')} | "
                     f"{_f(r['eq2_loss_min'], '.4f')} | {_f(r['eq2_C'], '.4f')} | {_f(r['dloss_x2_eq2'], '.4f')} | "
                     f"{_f(r['dloss_x2'], '.4f') if r['dloss_x2'] != math.inf else 'diverged'} | "
                     f"{_f(r['dloss_half'], '.4f') if r['dloss_half'] != math.inf else 'diverged'} | "
                     f"{_f(r['best_loss_minus_sp'], '+.4f')}{se} | {r['n_diverged']} |")
    return "\n".join(lines) + "\n"


def plot_modulewise(df: pd.DataFrame, opt: pd.DataFrame, path, *, caption: str = "") -> Path:
    """Left: loss vs LR per variant (every run a dot, the line through the means over seeds) with
    its Eq. 2 fit (dashed) and optimum (*). Right: the mean loss increase over each variant's own
    optimum against LR / eta_ref: the sharper curve is the one that punishes a mis-set LR more."""
    from matplotlib import cm
    variants = variant_order(df["variant"])
    colors = dict(zip(variants, cm.tab10(np.arange(len(variants)) % 10)))
    fig, axes = new_figure(1, 2, panel_size=(5.4, 4.2), extra_height=0.7)
    ax, ax2 = axes[0]
    for variant in variants:
        g = df[df["variant"] == variant].sort_values("lr")
        ok = usable(g)
        o = opt[opt["variant"] == variant].iloc[0]
        c = colors[variant]
        per_lr = loss_per_lr(g)   # the line joins the means over seeds; every seed is a dot
        ax.plot(per_lr.index, per_lr["mean"], "-", color=c, lw=1.2, label=variant)
        ax.plot(ok["lr"], ok["val_loss"], "o", color=c, ms=4)
        bad = g[g["status"] != "ok"]
        if len(bad):
            ax.plot(bad["lr"], np.full(len(bad), 0.97), "x", color=c, ms=7, transform=ax.get_xaxis_transform())
        fit = eq2_fit(g)
        if fit is not None and fit.convex:
            x = np.geomspace(fit.lrs.min(), fit.lrs.max(), 60)
            ax.plot(x, fit.predict(x), "--", color=c, lw=1)
        if np.isfinite(o["best_lr"]):
            ax.plot(o["best_lr"], o["best_loss"], "*", ms=13, color=c, mec="k", mew=0.6)
        if np.isfinite(o["eta_ref"]) and np.isfinite(o["loss_at_ref"]):
            ax2.plot(per_lr.index / o["eta_ref"], per_lr["mean"] - o["loss_at_ref"], "o-", color=c, ms=4, lw=1.2,
                     label=f"{variant}: C = {o['eq2_C']:.3g}, ΔL×2 = {o['dloss_x2']:.3g}")
    ax.set_ylim(*loss_ylim(df))
    log_scale(ax, "x", base=2)
    ax.set_xlabel("peak LR η (base LR)")
    ax.set_ylabel("final validation loss")
    ax.set_title("loss vs LR (dots: runs; line: mean over seeds; dashed: Eq. 2; ★ best mean; × diverged)",
                 fontsize=8)
    ax.legend(fontsize=8)
    for x in (0.5, 2.0):
        ax2.axvline(x, color="0.6", ls=":", lw=1)
    log_scale(ax2, "x", base=2)
    ax2.set_xlabel("η / η_ref (η_ref: Eq. 2 optimum if bracketed, else grid)")
    ax2.set_ylabel("loss − loss at η_ref")
    ax2.set_title("sharpness around each variant's optimum", fontsize=9)
    ax2.legend(fontsize=7)
    for a in (ax, ax2):
        a.grid(alpha=0.3)
    fig.suptitle("Module-wise LR ablation: one global LR (SP) vs μP's per-module LR multipliers (sp_mup_lr) vs "
                 "full μP\n" + "\n".join(textwrap.wrap(caption, width=120)), fontsize=9)
    return save_figure(fig, path)


def write_modulewise(sweep_dir: str | Path, out: str | Path | None = None, *, hardware: str = "unknown",
                     variant_keys: Iterable[str] = (), window: int | None = EQ2_WINDOW, probes: bool = True,
                     common_lr: float | None = None) -> dict:
    """modulewise.{png,csv,md,json} into `out`; from a sweep directory also run_config.csv, a copy of
    the results table and, with `probes` and runs that logged them, probes.csv with figure 5 and the
    optimizer monitors at each variant's best LR (analysis.probe_series): the why behind the losses."""
    sweep_dir = Path(sweep_dir)
    out = Path(out) if out else sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    variant_keys = list(variant_keys)
    df = load_transfer(sweep_dir, "d_model", variant_keys=variant_keys)
    opt = modulewise_optima(df, window=window)
    caption = caption_for(df, hardware)
    plot_modulewise(df, opt, out / "modulewise.png", caption=caption)
    opt.to_csv(out / "modulewise.csv", index=False)
    md = markdown(opt)
    (out / "modulewise.md").write_text(md)
    export_study_tables(sweep_dir, out, df["run_id"], config_keys_used("d_model", variant_keys))
    probe_outputs = {}
    if probes and (sweep_dir / "runs").is_dir():
        from lrscale.analysis.probe_series import write_probe_figures
        probe_outputs = write_probe_figures(sweep_dir, df, out, axis="d_model", hardware=hardware,
                                            common_lr=common_lr)
    notes = probe_outputs.get("monitor_notes", [])
    if notes:
        md += "\nOptimizer monitors (monitors.png):\n" + "".join(f"- {n}\n" for n in notes)
        (out / "modulewise.md").write_text(md)
    result = jsonable({"sweep_dir": str(sweep_dir), "analysis": "modulewise", "variant_keys": variant_keys,
                        "window": window, "caption": caption, "optima": json.loads(opt.to_json(orient="records")),
                        "probe_outputs": probe_outputs, "markdown": md})
    (out / "modulewise.json").write_text(json.dumps(result, indent=1))
    return result
