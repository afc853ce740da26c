"""Figures 1a, 1b, 2 and 7 of PAPER.md §5, drawn from a `SweepFit`.

Uses matplotlib's object API on the Agg canvas (no pyplot, no global backend state),
so it runs headless and is safe to import from anywhere. Every figure states its
scale (N and D range), the N kind, the data fingerprint and the hardware: our runs are
far smaller than the paper's, and a figure must not hide that (PAPER.md §2).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from matplotlib import cm, colors, ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from lrscale.analysis.fitting import SearchCost, SweepFit
from lrscale.analysis.laws import PUBLISHED_LAWS, bjorck_law, choose_reference_point, rescale_law


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _short_sci(value: float, _pos=None) -> str:
    """2e-03 -> '2e-3', 5e+06 -> '5e6': compact log-axis labels."""
    mant, exp = f"{value:.0e}".split("e")
    return f"{mant}e{int(exp)}"


def scale_line(sf: SweepFit) -> str:
    s = sf.scale()
    return (f"N ({sf.n_kind}) {_fmt(s['N_min'])}–{_fmt(s['N_max'])}, "
            f"D {_fmt(s['D_min'])}–{_fmt(s['D_max'])} tokens, {s['n_sizes']} sizes × "
            f"{s['n_lrs']} LRs × {s['n_budgets']} budgets, {sf.parametrization.upper()}")


def caption(sf: SweepFit, hardware: str) -> str:
    fp = ", ".join(sf.data_fingerprints) or "none recorded"
    return f"data: {fp} | hardware: {hardware} | {sf.search_cost.pipeline_runs} runs"


def _new_figure(n_panels: int, panel_size=(4.2, 3.3), max_cols: int = 3):
    cols = min(n_panels, max_cols)
    rows = math.ceil(n_panels / cols)
    fig = Figure(figsize=(panel_size[0] * cols, panel_size[1] * rows + 1.0),
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def new_figure(rows: int, cols: int, panel_size=(4.2, 3.3), extra_height: float = 1.0, **subplots):
    """A headless Agg figure with a rows x cols grid of axes (always a 2-D array)."""
    fig = Figure(figsize=(panel_size[0] * cols, panel_size[1] * rows + extra_height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, np.atleast_2d(fig.subplots(rows, cols, squeeze=False, **subplots))


def save_figure(fig: Figure, path, dpi: int = 110) -> Path:
    """Write a PNG atomically: a reader never sees a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, path)
    return path


def _finish(fig: Figure, title: str, sf: SweepFit, hardware: str, path) -> Path:
    # Title, scale and provenance all go in the suptitle: constrained layout then
    # reserves room for them, so nothing overlaps and no tight-bbox pass is needed.
    fig.suptitle(f"{title}\n{scale_line(sf)}\n{caption(sf, hardware)}", fontsize=9)
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)  # never leave a half-written PNG behind
    return path


def _models_by_size(sf: SweepFit) -> list[tuple[str, float]]:
    sizes = sf.points.groupby("model")["N"].first().sort_values()
    return list(sizes.items())


def plot_loss_vs_tokens(sf: SweepFit, path, *, hardware: str = "unknown") -> Path:
    """Fig. 1a: validation loss vs tokens D per (N, η), with Eq. 4 fits (log x).
    Hollow markers: Eq. 4 predictions at the extrapolated horizons."""
    models = _models_by_size(sf)
    fig, axes = _new_figure(len(models))
    norm = colors.LogNorm(sf.points["lr"].min(), sf.points["lr"].max() * (1 + 1e-9))
    cmap = cm.viridis
    ext = sf.settings.get("extrapolate_tokens") or []
    for ax, (model, N) in zip(axes, models):
        pts = sf.points[sf.points["model"] == model]
        d_hi = max([pts["tokens"].max(), *ext])
        grid = np.geomspace(pts["tokens"].min(), d_hi, 100)
        for lr, g in pts.groupby("lr"):
            color = cmap(norm(lr))
            ax.plot(g["tokens"], g["val_loss"], "o", color=color, ms=4)
            fit = sf.data_fits.get((model, float(lr)))
            if fit is not None:
                ax.plot(grid, fit.predict(grid), "-", color=color, lw=1)
                if ext:
                    ax.plot(ext, fit.predict(ext), "o", mfc="none", color=color, ms=5)
        ax.set_xscale("log")
        ax.set_title(f"{model}  N={_fmt(N)}", fontsize=9)
        ax.set_xlabel("tokens D")
        ax.set_ylabel("validation loss")
        ax.grid(alpha=0.3)
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), label="peak LR η",
                 shrink=0.8)
    title = "Fig. 1a: loss vs tokens per (N, η), lines: Eq. 4 L = L0 + A·D^-γ"
    if ext:
        title += f" (hollow: extrapolated to {', '.join(_fmt(d) for d in ext)})"
    return _finish(fig, title, sf, hardware, path)


def plot_loss_vs_lr(sf: SweepFit, path, *, hardware: str = "unknown") -> Path:
    """Fig. 1b: validation loss vs LR per (N, D), with Eq. 2 fits; ★ marks η*, a red
    hollow ★ an edge optimum (not bracketed by the grid); × marks diverged/failed LRs."""
    models = _models_by_size(sf)
    fig, axes = _new_figure(len(models))
    norm = colors.LogNorm(sf.points["tokens"].min(), sf.points["tokens"].max() * (1 + 1e-9))
    # plasma without its pale-yellow end, which is invisible on white
    cmap = colors.LinearSegmentedColormap.from_list("plasma_dark",
                                                     cm.plasma(np.linspace(0, 0.85, 64)))
    for ax, (model, N) in zip(axes, models):
        pts = sf.points[sf.points["model"] == model]
        for D, g in pts.groupby("tokens"):
            color = cmap(norm(D))
            ax.plot(g["lr"], g["val_loss"], "o", color=color, ms=4)
            fit = sf.lr_fits.get((model, int(D)))
            if fit is None:
                continue
            lo, hi = g["lr"].min(), g["lr"].max()
            if fit.convex:
                lo, hi = min(lo, fit.eta_star), max(hi, fit.eta_star)
            grid = np.geomspace(lo / 1.3, hi * 1.3, 100)
            ax.plot(grid, fit.predict(grid), "-", color=color, lw=1)
            if fit.convex and fit.edge:
                ax.plot(fit.eta_star, fit.loss_min, "*", ms=14, mfc="none", mec="red", mew=1.5)
                ax.annotate(f"edge ({fit.edge})", (fit.eta_star, fit.loss_min), fontsize=7,
                            color="red", xytext=(4, -10), textcoords="offset points")
            elif fit.convex:
                ax.plot(fit.eta_star, fit.loss_min, "*", ms=11, color=color, mec="k", mew=0.5)
        bad = sf.unusable[sf.unusable["model"] == model]
        if len(bad):
            ax.plot(bad["lr"], np.full(len(bad), 0.96), "x", color="k", ms=7,
                    transform=ax.get_xaxis_transform())
        # Diverging LRs give huge losses; keep the axis on the basin around the optimum.
        y_lo, y_hi = pts["val_loss"].min(), pts["val_loss"].max()
        pad = y_hi - y_lo + 1e-9
        ax.set_ylim(y_lo - 0.05 * pad, y_hi + 0.12 * pad)
        ax.set_xscale("log")
        ax.set_title(f"{model}  N={_fmt(N)}", fontsize=9)
        ax.set_xlabel("peak LR η")
        ax.set_ylabel("validation loss")
        ax.grid(alpha=0.3)
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), label="tokens D",
                 shrink=0.8)
    markers = [Line2D([], [], marker="*", ls="none", color="0.5", mec="k", ms=10,
                      label="η* (Eq. 2)"),
               Line2D([], [], marker="*", ls="none", mfc="none", mec="red", ms=12,
                      label="edge optimum (not bracketed: extend the grid)"),
               Line2D([], [], marker="x", ls="none", color="k", label="diverged / failed")]
    fig.legend(handles=markers, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    title = "Fig. 1b: loss vs LR per (N, D), lines: Eq. 2 L = L_min + C·(ln η − a)²"
    return _finish(fig, title, sf, hardware, path)


def _published_for_plot(sf: SweepFit):
    """Published laws pinned through our measured optimum nearest the data centre."""
    used = sf.law_points()
    ref = choose_reference_point(used["N"], used["D"], used["eta_star"])
    laws = []
    for key, law in PUBLISHED_LAWS.items():
        if key == "bjorck":
            laws.append(rescale_law(bjorck_law(1.0, 1.0), *ref))
        else:
            laws.append(rescale_law(law, *ref))
    return ref, laws


# Grey styles for the published laws, kept apart from the dashed colour lines of our fit.
_LAW_STYLES = [dict(ls="-", lw=2.5, alpha=0.45), dict(ls="-.", lw=1.2), dict(ls=":", lw=1.5),
               dict(ls=(0, (6, 2, 1, 2, 1, 2)), lw=1.2)]


def plot_optimal_lr(sf: SweepFit, path, *, hardware: str = "unknown") -> Path:
    """Fig. 2: η* vs N (one line per D) and vs D (one line per N), with the fitted Eq. 6
    (dashed, same colour) and the published laws of PAPER.md §4 rescaled to pass through
    our measured optimum nearest the data centre (grey; compare slopes, not constants).
    Filled: measured optima; squares: Eq. 4-extrapolated horizons; hollow: excluded from
    the law (edge or non-convex). Error bars: delta-method CI of Eq. 2."""
    fig, (ax_n, ax_d) = _new_figure(2, panel_size=(5.2, 4.2))
    opt = sf.optima[np.isfinite(sf.optima["eta_star"].astype(float))]
    law = sf.law

    def draw(ax, x_col, line_col, cmap):
        keys = sorted(opt[line_col].unique())
        norm = colors.LogNorm(min(keys), max(keys) * (1 + 1e-9)) if keys else None
        for key in keys:
            g = opt[opt[line_col] == key].sort_values(x_col)
            color = cmap(norm(key) * 0.85)
            lo = (g["eta_star"] - g["eta_ci_lo"]).clip(lower=0).fillna(0)
            hi = (g["eta_ci_hi"] - g["eta_star"]).clip(lower=0).fillna(0)
            ax.errorbar(g[x_col], g["eta_star"], yerr=[lo, hi], fmt="none", ecolor=color,
                        alpha=0.5, lw=0.8)
            ax.plot(g[x_col], g["eta_star"], "-", color=color, lw=0.6, alpha=0.6)
            for src, marker in (("measured", "o"), ("eq4", "s")):
                s = g[g["source"] == src]
                used = s["used_in_law"].astype(bool)
                ax.plot(s.loc[used, x_col], s.loc[used, "eta_star"], marker, color=color, ms=5,
                        label=f"{line_col}={_fmt(key)}" if src == "measured" else None)
                ax.plot(s.loc[~used, x_col], s.loc[~used, "eta_star"], marker, mfc="none",
                        mec=color, ms=6)
            if law is not None:
                xs = np.geomspace(opt[x_col].min(), opt[x_col].max(), 50)
                N_arg, D_arg = (xs, key) if x_col == "N" else (key, xs)
                ax.plot(xs, law.predict(N_arg, D_arg), "--", color=color, lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):  # default minor labels on a narrow log range collide
            axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            axis.set_major_formatter(ticker.FuncFormatter(_short_sci))
            axis.set_minor_formatter(ticker.NullFormatter())
        ax.set_ylabel("optimal peak LR η*")
        ax.grid(alpha=0.3, which="both")

    draw(ax_n, "N", "D", cm.plasma)
    draw(ax_d, "D", "N", cm.viridis)
    ax_n.set_xlabel(f"N ({sf.n_kind})")
    ax_d.set_xlabel("tokens D")

    extra = []
    if law is not None and sf.law_points().shape[0]:
        ref, laws = _published_for_plot(sf)
        N_ref, D_ref, _ = ref
        for style, pub in zip(_LAW_STYLES, laws):
            if pub.alpha is not None:
                xs = np.geomspace(opt["N"].min(), opt["N"].max(), 50)
                ax_n.plot(xs, pub.predict(xs, D_ref), color="0.35", **style)
            xs = np.geomspace(opt["D"].min(), opt["D"].max(), 50)
            ax_d.plot(xs, pub.predict(N_ref, xs), color="0.35", **style)
            extra.append(Line2D([], [], color="0.35", **style,
                                label=pub.name.replace(" (rescaled)", "") + f": {pub.formula}"))
        for ax in (ax_n, ax_d):
            ax.plot(ref[0] if ax is ax_n else ref[1], ref[2], "+", color="k", ms=12, mew=1.5)
        ax_n.set_title(f"vs N; grey laws at D={_fmt(D_ref)}", fontsize=9)
        ax_d.set_title(f"vs D; grey laws at N={_fmt(N_ref)}", fontsize=9)
        fit_txt = (f"Eq. 6 fit: η* = {law.c:.3g}·N^{law.alpha:.3f}·D^{law.beta:.3f}\n"
                   f"α ∈ [{law.alpha_ci[0]:.3f}, {law.alpha_ci[1]:.3f}], "
                   f"β ∈ [{law.beta_ci[0]:.3f}, {law.beta_ci[1]:.3f}] (95% boot.), "
                   f"R²={law.r2:.3f}")
        extra.insert(0, Line2D([], [], color="k", ls="--", label=fit_txt))
        extra.append(Line2D([], [], color="k", marker="+", ls="none",
                            label="reference optimum the grey laws pass through"))
    else:
        ax_n.set_title("Eq. 6 not fitted (too few optima)", fontsize=9)
    ax_n.legend(fontsize=6, loc="lower left")
    ax_d.legend(fontsize=6, loc="lower left")
    extra += [Line2D([], [], color="0.3", marker="o", ls="none", label="measured optimum"),
              Line2D([], [], color="0.3", marker="s", ls="none",
                     label="optimum at an Eq. 4-extrapolated horizon"),
              Line2D([], [], mec="0.3", mfc="none", marker="o", ls="none",
                     label="excluded from Eq. 6 (edge or non-convex)")]
    fig.legend(handles=extra, loc="outside lower center", fontsize=7, ncol=2, frameon=False)
    return _finish(fig, "Fig. 2: optimal LR vs N and D, fitted Eq. 6 and published laws",
                   sf, hardware, path)


def plot_search_cost(sf: SweepFit, path, *, hardware: str = "unknown") -> Path:
    """Fig. 7: compute and number of runs of the full (N, η, D) grid vs the
    decay-branch pipeline. Both measure the same (N, η, D) points, so prediction error
    is equal by construction (up to a decay branch standing in for a separate run)."""
    cost: SearchCost = sf.search_cost
    fig, (ax_f, ax_r) = _new_figure(2, panel_size=(4.2, 3.4))
    labels = ["full grid\nO(n·C_η·C_D) runs", "pipeline\nO(n·C_η) runs"]
    bar_colors = ["#b44", "#48b"]
    for ax, values, ylabel in ((ax_f, [cost.grid_flops, cost.pipeline_flops], "training FLOPs"),
                               (ax_r, [cost.grid_runs, cost.pipeline_runs], "training runs")):
        bars = ax.bar(labels, values, color=bar_colors)
        for bar, v in zip(bars, values):
            ax.annotate(_fmt(v), (bar.get_x() + bar.get_width() / 2, v), ha="center",
                        va="bottom", fontsize=8)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, max(values) * 1.15 if max(values) > 0 else 1)
        ax.grid(alpha=0.3, axis="y")
    ax_f.set_title(f"compute: grid / pipeline = {cost.flops_ratio:.2f}×", fontsize=9)
    ax_r.set_title(f"runs: grid / pipeline = {cost.runs_ratio:.2f}×", fontsize=9)
    title = (f"Fig. 7: search cost, n={cost.n_sizes} sizes, {cost.n_lrs} LRs, "
             f"{cost.n_budgets} budgets")
    return _finish(fig, title, sf, hardware, path)


FIGURES = {
    "fig1a_loss_vs_tokens.png": plot_loss_vs_tokens,
    "fig1b_loss_vs_lr.png": plot_loss_vs_lr,
    "fig2_optimal_lr.png": plot_optimal_lr,
    "fig7_search_cost.png": plot_search_cost,
}


def plot_all(sf: SweepFit, out_dir, *, hardware: str = "unknown") -> dict[str, Path]:
    """Write the four figures into out_dir; returns name -> path."""
    out_dir = Path(out_dir)
    return {name: fn(sf, out_dir / name, hardware=hardware) for name, fn in FIGURES.items()}


def log_scale(ax, axis: str = "x", **kw) -> bool:
    """Put `axis` ("x" or "y") on a log scale when a drawn point (both coordinates finite) has a
    positive value along it; else leave it linear (a log axis with no positive data cannot be
    drawn: a sweep whose fits all failed must still give its figure). Returns whether it is log."""
    col = 0 if axis == "x" else 1
    # Only points in data coordinates (not an axhline's axes-fraction x) that matplotlib draws and
    # autoscales to: both coordinates finite.
    values = []
    for xy in [np.asarray(line.get_xydata(), dtype=float).reshape(-1, 2) for line in ax.get_lines()
               if line.get_transform() == ax.transData] + \
              [np.asarray(coll.get_offsets(), dtype=float).reshape(-1, 2) for coll in ax.collections
               if coll.get_offset_transform() == ax.transData]:
        values.append(xy[np.isfinite(xy).all(axis=1), col])
    data = np.concatenate(values) if values else np.array([])
    if not np.any(data > 0):
        return False
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log", **kw)
    return True
