"""Figure 5 (PAPER.md Sec. 5): training stability, SP vs muP, from the probes table
(analysis/probe_series.py): max attention logit, output-logit RMS, gradient norm and loss with
their spikes, router imbalance and router z over training, per size; left column at each
variant's best LR, right column at the common LR.

Spikes are counted with the run's own rule, `training.probes.count_spikes` (OLMo 2's spike
score, arXiv 2501.00656: a value more than 7 standard deviations above the mean of the 20
preceding logged values), imported, not re-implemented; `spike_steps` locates them with it.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from lrscale.analysis.plots import new_figure, save_figure, log_scale
from lrscale.analysis.probe_series import has_selection
from lrscale.training.probes import SPIKE_WINDOW, count_spikes

SPIKES_FILE = "spikes.csv"
FIGURE_FILE = "fig5_stability.png"

# (metric, axis label, log scale?)
FIG5_METRICS = (
    ("probe/max_attn_logit", "max attention logit", True),
    ("probe/logit_rms", "output-logit RMS", False),
    ("grad_norm", "gradient norm (global, pre-clip)", True),
    ("train_loss", "training loss", False),
    ("moe/imbalance", "router imbalance (max/mean load)", False),
    ("moe/router_z", "router z (mean logsumexp²)", True),
)
SPIKED = ("train_loss", "grad_norm")


def spike_steps(values, steps=None, window: int = SPIKE_WINDOW) -> list:
    """The entries `count_spikes` counts, located: entry i is a spike iff counting the window
    that ends at i finds one more spike than counting it without i. Exact, because an entry's
    verdict depends only on the `window` entries before it. Returns steps[i] (default i)."""
    values = [float(v) for v in values]
    steps = list(range(len(values))) if steps is None else list(steps)
    hits = []
    for i in range(len(values)):
        lo = max(0, i - window)
        if count_spikes(values[lo:i + 1], window=window) > count_spikes(values[lo:i], window=window):
            hits.append(steps[i])
    return hits


def spike_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per run of the probes table: loss and gradient-norm spike counts (count_spikes over the
    logged series, as summary.json's stability block counts them), the steps they happened at,
    and the maxima of the figure-5 metrics."""
    rows = []
    for (run_id, variant, size, lr, selection), g in table.groupby(
            ["run_id", "variant", "size", "lr", "selection"], sort=False):
        row = {"run_id": run_id, "variant": variant, "size": size, "lr": lr, "selection": selection}
        for metric in SPIKED:
            s = g[g["metric"] == metric].sort_values("step")
            name = "loss" if metric == "train_loss" else metric
            row[f"{name}_spikes"] = count_spikes(s["value"].tolist()) if len(s) else np.nan
            row[f"{name}_spike_steps"] = " ".join(str(int(x)) for x in spike_steps(s["value"], s["step"]))
        for metric, _, _ in FIG5_METRICS:
            s = g.loc[g["metric"] == metric, "value"]
            finite = s[np.isfinite(s)]
            row[f"{metric.replace('/', '_').replace('probe_', '')}_max"] = (
                finite.max() if len(finite) else (np.inf if len(s) else np.nan))
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["variant", "size", "lr"]).reset_index(drop=True)


def _linestyles(variants):
    from lrscale.analysis.transfer import variant_order
    styles = ["--", "-", ":", "-.", (0, (5, 1)), (0, (1, 1))]
    return {v: styles[i % len(styles)] for i, v in enumerate(variant_order(variants))}


def plot_stability(table: pd.DataFrame, path, *, axis: str = "d_model", caption: str = "",
                   x: str = "step") -> Path:
    """Figure 5: one row per logged figure-5 metric, columns best LR | common LR; colour = size,
    line style = variant; red circles mark the spikes of training loss and gradient norm."""
    from matplotlib.lines import Line2D

    from lrscale.analysis.transfer import fmt_size, size_colors
    metrics = [m for m in FIG5_METRICS if (table["metric"] == m[0]).any()]
    if not metrics:
        raise ValueError("the probes table has none of the figure-5 metrics "
                         f"{[m[0] for m in FIG5_METRICS]}: were probes on (train.probe_every)?")
    selections = [s for s in ("best", "common") if has_selection(table, s).any()]
    fig, axes = new_figure(len(metrics), len(selections), panel_size=(5.6, 2.3), extra_height=0.9, sharex="col")
    colors = size_colors(table["size"].unique())
    styles = _linestyles(table["variant"].unique())
    for j, sel in enumerate(selections):
        t = table[has_selection(table, sel)]
        lrs = sorted(t["lr"].unique())
        for i, (metric, label, log) in enumerate(metrics):
            ax = axes[i, j]
            for (run_id, variant, size), g in t[t["metric"] == metric].groupby(["run_id", "variant", "size"]):
                g = g.sort_values("step")
                ax.plot(g[x], g["value"], color=colors[size], ls=styles[variant], lw=1.1)
                if metric in SPIKED:
                    hit = g[g["step"].isin(spike_steps(g["value"], g["step"]))]
                    ax.plot(hit[x], hit["value"], "o", mfc="none", mec="red", ms=7, mew=1.3)
            if log:
                log_scale(ax, "y")
            ax.set_ylabel(label, fontsize=8)
            ax.grid(alpha=0.3)
        what = "each variant's best LR" if sel == "best" else \
            f"common LR {', '.join(f'{v:.3g}' for v in lrs[:3])}{'…' if len(lrs) > 3 else ''}"
        axes[0, j].set_title(f"at {what}", fontsize=9)
        axes[-1, j].set_xlabel(x)
    handles = [Line2D([], [], color=c, lw=2, label=f"{axis} {fmt_size(s)}") for s, c in colors.items()]
    handles += [Line2D([], [], color="k", ls=ls, label=v) for v, ls in styles.items()]
    handles += [Line2D([], [], ls="", marker="o", mfc="none", mec="red", label="spike (count_spikes rule)")]
    axes[0, -1].legend(handles=handles, fontsize=6.5, ncol=2)
    caption = "\n".join(textwrap.wrap(caption, width=120))
    fig.suptitle(f"Fig. 5: training stability over training, per {axis}\n{caption}", fontsize=9)
    return save_figure(fig, path)
