"""Figure 6 (PAPER.md Sec. 5): feature learning across widths, SP vs muP, from the probes table
(analysis/probe_series.py) of real training runs: per role the relative update
||W_after - W_before||_F / ||W_before||_F of one optimizer step (probe/update_rel/<role>) and per
module the activation RMS (probe/act_rms/<module>), against width, over training.

The coordinate check (analysis/coord_check.py) asks the same question on a few steps of a fixed
batch; here the runs are the transfer sweep's own, at one common LR for every width (the
coordinate-check setting; `selection="best"` uses each width's best LR instead). For each
(variant, quantity, module, probe step) the slope of log(value) against log(width) is fitted with
`coord_check.slope`. Reading the slopes (training/probes.py): Frobenius update_rel of hidden roles
scales like m^0 under SP and m^-1/2 under muP with Adam; activation RMS should be flat (slope ~ 0)
under muP and grows under SP once training has moved the features.

The reference step is the last probe step still at the peak LR: under WSD the LR decays to 0, so
updates measured at the very end are ~0 and say nothing about width.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from lrscale.analysis.coord_check import slope
from lrscale.analysis.plots import new_figure, save_figure, log_scale
from lrscale.analysis.probe_series import has_selection

SLOPES_FILE = "feature_learning_slopes.csv"
FIGURE_FILE = "fig6_feature_learning.png"
KINDS = {"update_rel": ("probe/update_rel/", "‖ΔW‖_F / ‖W‖_F per role (one step)"),
         "act_rms": ("probe/act_rms/", "activation RMS per module")}
PEAK_FRACTION = 0.999  # "still at the peak LR": the logged LR within 0.1% of the run's maximum


def reference_steps(table: pd.DataFrame) -> dict[str, int]:
    """Per run: the last probe step at which the logged schedule LR is still at its peak (the last
    probe step when the table has no `lr` series)."""
    out = {}
    for run_id, g in table.groupby("run_id"):
        probe_steps = np.sort(g.loc[g["metric"].str.startswith("probe/"), "step"].unique())
        if not len(probe_steps):
            continue
        lr = g[g["metric"] == "lr"]
        if len(lr):
            peak_steps = lr.loc[lr["value"] >= PEAK_FRACTION * lr["value"].max(), "step"]
            before = probe_steps[probe_steps <= peak_steps.max()]
            out[run_id] = int(before[-1] if len(before) else probe_steps[0])
        else:
            out[run_id] = int(probe_steps[-1])
    return out


def _values(table: pd.DataFrame, selection: str) -> pd.DataFrame:
    """variant, kind, module, step, size, value (runs of one selection, averaged per size)."""
    t = table[has_selection(table, selection)]
    parts = []
    for kind, (prefix, _) in KINDS.items():
        s = t[t["metric"].str.startswith(prefix)]
        parts.append(s.assign(kind=kind, module=s["metric"].str.slice(len(prefix))))
    v = pd.concat(parts) if parts else pd.DataFrame()
    if v.empty:
        return v
    return v.groupby(["variant", "kind", "module", "step", "size"], as_index=False)["value"].mean()


def feature_learning_slopes(table: pd.DataFrame, *, selection: str = "common") -> pd.DataFrame:
    """Per (variant, kind, module, probe step): slope of log value vs log size (nan when a value
    is 0 or missing, e.g. a zero update at the end of the decay), the sizes used, and whether the
    step is the variant's reference step (the last one at peak LR)."""
    v = _values(table, selection)
    if v.empty:
        return pd.DataFrame(columns=["variant", "kind", "module", "step", "reference", "slope", "n_sizes", "sizes"])
    ref = reference_steps(table[has_selection(table, selection)])
    run_variant = table.drop_duplicates("run_id").set_index("run_id")["variant"]
    ref_of_variant = {var: min(s for r, s in ref.items() if run_variant[r] == var)
                      for var in set(run_variant[list(ref)])}
    rows = []
    for (variant, kind, module, step), g in v.groupby(["variant", "kind", "module", "step"]):
        g = g.sort_values("size")
        rows.append({"variant": variant, "kind": kind, "module": module, "step": int(step),
                     "reference": int(step) == ref_of_variant.get(variant),
                     "slope": slope(g["size"].astype(float).tolist(), g["value"].tolist()) if len(g) > 1 else math.nan,
                     "n_sizes": len(g), "sizes": " ".join(str(s) for s in g["size"])})
    return pd.DataFrame(rows).sort_values(["variant", "kind", "module", "step"]).reset_index(drop=True)


def plot_feature_learning(table: pd.DataFrame, path, *, selection: str = "common", axis: str = "d_model",
                          caption: str = "") -> Path:
    """Figure 6: rows update_rel | act_rms; one column per variant with each module's value vs size
    at the reference step (legend: fitted log-log slope), and a last column with the median slope
    over modules against training step (band: min to max over modules), one line per variant."""
    from matplotlib import cm

    from lrscale.analysis.transfer import variant_order
    v = _values(table, selection)
    slopes = feature_learning_slopes(table, selection=selection)
    if v.empty:
        raise ValueError("the probes table has no probe/update_rel/* or probe/act_rms/* series")
    variants = variant_order(v["variant"])
    kinds = [k for k in KINDS if (v["kind"] == k).any()]
    fig, axes = new_figure(len(kinds), len(variants) + 1, panel_size=(4.4, 3.4), extra_height=0.8)
    palette = cm.tab10(np.arange(len(variants)) % 10)
    for i, kind in enumerate(kinds):
        for j, variant in enumerate(variants):
            ax = axes[i, j]
            sl = slopes[(slopes["variant"] == variant) & (slopes["kind"] == kind) & slopes["reference"]]
            step = int(sl["step"].iloc[0]) if len(sl) else int(v["step"].max())
            g = v[(v["variant"] == variant) & (v["kind"] == kind) & (v["step"] == step)]
            modules = sorted(g["module"].unique())
            cols = cm.viridis(np.linspace(0, 0.9, max(len(modules), 1)))
            for c, module in zip(cols, modules):
                m = g[(g["module"] == module) & (g["value"] > 0)].sort_values("size")
                s = sl.loc[sl["module"] == module, "slope"]
                label = f"{module} ({s.iloc[0]:+.2f})" if len(s) and np.isfinite(s.iloc[0]) else module
                ax.plot(m["size"], m["value"], "o-", color=c, ms=3, lw=1, label=label)
            log_scale(ax, "x", base=2)
            log_scale(ax, "y")
            ax.set_title(f"{variant}, step {step}", fontsize=9)
            ax.set_xlabel(axis)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=5.5, ncol=2)
        axes[i, 0].set_ylabel(KINDS[kind][1], fontsize=8)
        ax = axes[i, -1]
        for variant, c in zip(variants, palette):
            s = slopes[(slopes["variant"] == variant) & (slopes["kind"] == kind)]
            agg = s.groupby("step")["slope"].agg(["median", "min", "max"]).dropna()
            ax.plot(agg.index, agg["median"], "o-", color=c, ms=3, label=variant)
            ax.fill_between(agg.index, agg["min"], agg["max"], color=c, alpha=0.15)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_title(f"slope vs log {axis} over training", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("slope (median over modules, band min–max)", fontsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    what = "each size's best LR" if selection == "best" else "one common LR"
    caption = "\n".join(textwrap.wrap(caption, width=140))
    fig.suptitle(f"Fig. 6: feature learning across {axis} at {what} (legend: log-log slope at the last "
                 f"peak-LR probe step; Adam: hidden update_rel ~ m^0 SP, m^-1/2 μP)\n{caption}", fontsize=9)
    return save_figure(fig, path)
