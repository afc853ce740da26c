"""Two optimizer monitors read from the probes table (analysis/probe_series.py): do the Adam-eps
rule and the weight-decay rule actually act on the runs?

eps dominance   probe/eps_dominance/<role>: the fraction of the role's Adam coordinates with
                sqrt(v_hat) < eps, where eps rather than the gradient sets the update size. The
                muP eps rule (eps x 1/m for hidden weights, PAPER.md Sec. 3) matters only where
                this fraction is not ~0; at ~1 eps has replaced Adam's normalisation (SGD-like).
wd timescale    probe/wd_tau_steps/<role>, probe/wd_tau_tokens/<role>: the AdamW EMA timescale
                tau = 1/(lr_group(t) * wd_group) at that step (Wang & Aitchison, arXiv 2405.13698),
                inf without decay. The shortest tau is at the peak LR; it grows as the schedule
                decays. Compared with the run's length D in tokens: tau >> D means the decay barely
                acts within the run, tau << D means the weights remember only the last few percent
                of training.

Verdicts (our thresholds, not the paper's): eps `moot` when the fraction stays <= 0.01 over the
whole run, `dominant` when it stays >= 0.99, else `active`; tau `no decay` (inf), `negligible`
when the shortest tau >= 10 D, `strong` when it is <= D / 100, else `active`.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from lrscale.analysis.plots import new_figure, save_figure, log_scale

EPS_FILE = "eps_dominance.csv"
TAU_FILE = "wd_timescale.csv"
FIGURE_FILE = "monitors.png"
EPS_PREFIX = "probe/eps_dominance/"
TAU_STEPS_PREFIX = "probe/wd_tau_steps/"
TAU_TOKENS_PREFIX = "probe/wd_tau_tokens/"

EPS_MOOT, EPS_DOMINANT = 0.01, 0.99
TAU_NEGLIGIBLE, TAU_STRONG = 10.0, 0.01  # shortest tau as a multiple of the run's tokens D

_KEYS = ["run_id", "variant", "size", "lr", "selection"]


def _by_role(table: pd.DataFrame, prefix: str) -> pd.DataFrame:
    s = table[table["metric"].str.startswith(prefix)]
    return s.assign(role=s["metric"].str.slice(len(prefix)))


def eps_verdict(lo: float, hi: float) -> str:
    if hi <= EPS_MOOT:
        return "moot"
    if lo >= EPS_DOMINANT:
        return "dominant"
    return "active"


def eps_dominance_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per (run, role): the eps-dominance fraction at the first, last and peak-LR probe steps, its
    min, mean and max over training, and the verdict (moot / active / dominant)."""
    from lrscale.analysis.feature_learning import reference_steps
    s = _by_role(table, EPS_PREFIX)
    if s.empty:
        return pd.DataFrame(columns=[*_KEYS, "role", "n_probes", "first", "at_peak_lr", "final", "min", "mean",
                                     "max", "verdict"])
    ref = reference_steps(table)
    rows = []
    for (*key, role), g in s.groupby([*_KEYS, "role"], sort=False):
        g = g.sort_values("step")
        v = g["value"].to_numpy(float)
        at_peak = g.loc[g["step"] == ref.get(key[0]), "value"]
        rows.append({**dict(zip(_KEYS, key)), "role": role, "n_probes": len(g), "first": v[0],
                     "at_peak_lr": float(at_peak.iloc[0]) if len(at_peak) else np.nan, "final": v[-1],
                     "min": v.min(), "mean": v.mean(), "max": v.max(), "verdict": eps_verdict(v.min(), v.max())})
    return pd.DataFrame(rows).sort_values(["variant", "size", "lr", "role"]).reset_index(drop=True)


def tau_verdict(tau_min_tokens: float, run_tokens: float) -> str:
    if not np.isfinite(tau_min_tokens):
        return "no decay"
    if tau_min_tokens >= TAU_NEGLIGIBLE * run_tokens:
        return "negligible"
    if tau_min_tokens <= TAU_STRONG * run_tokens:
        return "strong"
    return "active"


def wd_timescale_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per (run, role): tau in steps and tokens at the peak LR (its minimum over training) and at
    the last probe, the run's length D in tokens (its last logged step), tau_peak / D, verdict."""
    steps, toks = _by_role(table, TAU_STEPS_PREFIX), _by_role(table, TAU_TOKENS_PREFIX)
    if steps.empty and toks.empty:
        return pd.DataFrame(columns=[*_KEYS, "role", "tau_steps_peak", "tau_steps_final", "tau_tokens_peak",
                                     "tau_tokens_final", "run_tokens", "tau_peak_over_D", "verdict"])
    run_tokens = table.groupby("run_id")["tokens"].max()
    rows = []
    roles = pd.concat([steps, toks])[[*_KEYS, "role"]].drop_duplicates()
    for rec in roles.to_dict("records"):
        row = dict(rec)
        for name, s in (("steps", steps), ("tokens", toks)):
            g = s[(s["run_id"] == rec["run_id"]) & (s["role"] == rec["role"])].sort_values("step")
            row[f"tau_{name}_peak"] = float(g["value"].min()) if len(g) else np.nan
            row[f"tau_{name}_final"] = float(g["value"].iloc[-1]) if len(g) else np.nan
        D = float(run_tokens[rec["run_id"]])
        row["run_tokens"] = D
        row["tau_peak_over_D"] = row["tau_tokens_peak"] / D if D > 0 else np.nan
        row["verdict"] = tau_verdict(row["tau_tokens_peak"], D)
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["variant", "size", "lr", "role"]).reset_index(drop=True)


def monitor_notes(eps: pd.DataFrame, tau: pd.DataFrame) -> list[str]:
    """Plain-language lines: where a rule does nothing, or too much."""
    notes = []
    if len(eps):
        counts = eps["verdict"].value_counts().to_dict()
        if counts.get("moot", 0) == len(eps):
            notes.append(f"eps dominance <= {EPS_MOOT} for every run and role: eps never sets the update, "
                         "so the eps rule is moot at this scale")
        dom = eps[eps["verdict"] == "dominant"]
        if len(dom):
            notes.append(f"eps dominance >= {EPS_DOMINANT} throughout for {len(dom)} (run, role) pair(s) "
                         f"(roles {', '.join(sorted(dom['role'].unique()))}): eps, not the gradient, sets "
                         "those updates (Adam behaves like SGD there); lower eps or check the eps rule")
        notes.append(f"eps verdicts: {counts}")
    if len(tau):
        counts = tau["verdict"].value_counts().to_dict()
        if counts.get("no decay", 0) == len(tau):
            notes.append("no weight decay on any logged role: the weight-decay rules are not exercised")
        else:
            for verdict, what in (("negligible", f"shortest tau >= {TAU_NEGLIGIBLE:g} x the run's tokens: "
                                                 "the decay barely acts within the run"),
                                  ("strong", f"shortest tau <= {TAU_STRONG:g} x the run's tokens: the weights "
                                             "remember only the last few percent of training")):
                hit = tau[tau["verdict"] == verdict]
                if len(hit):
                    notes.append(f"{len(hit)} (run, role) pair(s) {verdict}, {what} "
                                 f"(roles {', '.join(sorted(hit['role'].unique()))})")
        notes.append(f"tau verdicts: {counts}")
    return notes


def plot_monitors(table: pd.DataFrame, path, *, caption: str = "") -> Path:
    """Two panels: eps dominance over training (grey bands: moot <= 0.01, dominant >= 0.99) and tau
    in tokens over training (log; dotted: each run's length D). Colour = role, line style = variant."""
    from matplotlib import cm
    from matplotlib.lines import Line2D

    from lrscale.analysis.stability import _linestyles
    eps, tau = _by_role(table, EPS_PREFIX), _by_role(table, TAU_TOKENS_PREFIX)
    roles = sorted(set(eps["role"]) | set(tau["role"]))
    colors = dict(zip(roles, cm.tab10(np.arange(len(roles)) % 10)))
    styles = _linestyles(table["variant"].unique())
    fig, axes = new_figure(1, 2, panel_size=(6.0, 4.0), extra_height=0.8)
    ax_e, ax_t = axes[0]
    for (run_id, variant, role), g in eps.groupby(["run_id", "variant", "role"]):
        g = g.sort_values("step")
        ax_e.plot(g["step"], g["value"], color=colors[role], ls=styles[variant], lw=1)
    ax_e.axhspan(0, EPS_MOOT, color="0.85", zorder=0)
    ax_e.axhspan(EPS_DOMINANT, 1, color="0.85", zorder=0)
    ax_e.set_ylim(-0.02, 1.02)
    ax_e.set_xlabel("step")
    ax_e.set_ylabel("fraction of coordinates with sqrt(v̂) < ε")
    ax_e.set_title("ε dominance (bands: rule moot ≤ 0.01, ε dominant ≥ 0.99)", fontsize=9)
    finite = tau[np.isfinite(tau["value"])]
    for (run_id, variant, role), g in finite.groupby(["run_id", "variant", "role"]):
        g = g.sort_values("step")
        ax_t.plot(g["step"], g["value"], color=colors[role], ls=styles[variant], lw=1)
    for D in sorted(table.groupby("run_id")["tokens"].max().unique()):
        ax_t.axhline(D, color="k", ls=":", lw=0.8)
    if len(finite):
        log_scale(ax_t, "y")
    else:
        ax_t.text(0.5, 0.5, "no finite τ: no weight decay", transform=ax_t.transAxes, ha="center")
    ax_t.set_xlabel("step")
    ax_t.set_ylabel("τ = 1/(η_group(t)·λ_group), tokens")
    ax_t.set_title("AdamW EMA timescale (dotted: run length D)", fontsize=9)
    for ax in (ax_e, ax_t):
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=c, lw=2, label=r) for r, c in colors.items()]
    handles += [Line2D([], [], color="k", ls=ls, label=v) for v, ls in styles.items()]
    ax_t.legend(handles=handles, fontsize=6.5, ncol=2)
    fig.suptitle("Optimizer monitors: does the ε rule / the weight-decay rule act?\n"
                 + "\n".join(textwrap.wrap(caption, width=120)), fontsize=9)
    return save_figure(fig, path)


def write_monitors(table: pd.DataFrame, out, *, caption: str = "") -> dict[str, str]:
    """eps_dominance.csv, wd_timescale.csv and monitors.png into `out`, for the monitors the runs
    logged; {} when they logged neither."""
    out = Path(out)
    eps, tau = eps_dominance_table(table), wd_timescale_table(table)
    written = {}
    if len(eps):
        eps.to_csv(out / EPS_FILE, index=False, float_format="%.6g")
        written["eps_dominance"] = EPS_FILE
    if len(tau):
        tau.to_csv(out / TAU_FILE, index=False, float_format="%.6g")
        written["wd_timescale"] = TAU_FILE
    if written:
        plot_monitors(table, out / FIGURE_FILE, caption=caption)
        written["monitors"] = FIGURE_FILE
    return written
