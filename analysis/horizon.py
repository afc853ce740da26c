"""Transfer across the token horizon (PAPER.md Sec. 3 "Token horizon", Sec. 5 figure 3): how the
optimal peak LR of one model moves with the training budget D, and whether the horizon rule
eta(D) = eta(D0) * (D/D0)^-beta holds it in place.

Input: a sweep of one model (usually muP) over peak LRs, WSD runs whose decay branches measure
the loss at several budgets (>= 4 budgets spanning >= 8x recommended), WITHOUT the horizon rule
(optim.horizon_beta = 0). The LR axis is the peak LR the groups trained at (`peak_lr` in the
results, else `lr`).

Per budget D: eta*(D) from Eq. 2 (analysis.fitting.fit_lr_curve, 5 LRs nearest the minimum) with
its 95% delta-method interval, and the drift log2(eta*(D) / eta*(D0)) with an interval
(analysis.drift.log2_drift). Across budgets: beta, the negative slope of ln eta* on ln D, by
least squares weighted with the Eq. 2 standard errors (analysis.drift.fit_log_linear: 95%
interval from the larger of the propagated errors and the scatter, Student t).

Why runs without the rule answer the rule: the rule only rescales the peak LR, eta_run =
eta_base * (D/D0)^-beta, so a run with the rule at base LR eta_base and budget D IS the plain run
at eta = eta_base * (D/D0)^-beta. The loss-optimal base LR under the rule is therefore
eta*(D) * (D/D0)^beta, and its drift is log2(eta*(D)/eta*(D0)) + beta * log2(D/D0). Reported for
beta = 0.3509 (arXiv 2601.05049 Eq. 6) and for the fitted beta; the interval is the no-rule
drift's interval shifted (beta taken as fixed, its own uncertainty not propagated). Zero drift
with the rule means the rule transfers the LR across horizons.

    python -m analysis.transfer sweeps/transfer_horizon --axis tokens [--base-tokens D0] --out DIR
"""
from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from lrscale.analysis.drift import fit_log_linear
from lrscale.training.io import jsonable
from lrscale.analysis.plots import new_figure, save_figure, log_scale
from lrscale.analysis.run_configs import export_study_tables, load_runs
from lrscale.analysis.transfer import (EQ2_WINDOW, _ci, _f, add_drift, caption_for, config_keys_used, draw_lr_curves,
                                       eq2_fit, fit_columns, loss_ylim, size_colors, usable, variant_order)

PAPER_BETA = 0.3509  # arXiv 2601.05049 Eq. 6: eta* ~ D^-0.3509
RULES = {"paper": PAPER_BETA}  # plus "fitted": the sweep's own beta
MIN_BUDGETS, MIN_SPAN = 4, 8.0


def load_horizon(source: str | Path, *, variant_keys: Iterable[str] = ()) -> pd.DataFrame:
    """Every (run, budget) row with `variant`, `size` = tokens and `eta`, the trained peak LR."""
    df = load_runs(source, "tokens", variant_keys=variant_keys)
    eta = df["peak_lr"].astype(float) if "peak_lr" in df else pd.Series(np.nan, index=df.index)
    return df.assign(eta=eta.where(np.isfinite(eta), df["lr"].astype(float)))


def horizon_optima(df: pd.DataFrame, *, base_tokens: float | None = None, window: int | None = EQ2_WINDOW,
                   level: float = 0.95, include_edge: bool = False) -> tuple[pd.DataFrame, dict]:
    """Per (variant, budget): grid and Eq. 2 optimum, drift without a rule and with each rule.
    Per variant: the fitted beta with its interval. Returns (table, {variant: beta summary}).

    Budgets whose Eq. 2 fit has no minimum, or (unless include_edge) whose optimum is not
    bracketed by the LR grid, are left out of the beta fit and flagged `used_in_beta = False`."""
    rows = []
    for (variant, D), g in df.groupby(["variant", "tokens"]):
        ok = usable(g)
        row = {"variant": variant, "tokens": int(D), "n_lrs": int(g["eta"].nunique()),
               "n_diverged": int((g["status"] == "diverged").sum()), "best_lr": math.nan, "best_loss": math.nan}
        if len(ok):
            best = ok.loc[ok["val_loss"].idxmin()]
            row.update(best_lr=float(best["eta"]), best_loss=float(best["val_loss"]))
        row.update(fit_columns(eq2_fit(g, lr_col="eta", window=window) if len(ok) else None))
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(["variant", "tokens"]).reset_index(drop=True)
    fits = {}
    parts = []
    for variant, t in table.groupby("variant", sort=False):
        t = t.copy()
        D0 = float(base_tokens) if base_tokens else float(t["tokens"].min())
        if not (t["tokens"] == D0).any():
            raise ValueError(f"--base-tokens {D0:g} is not a measured budget of {variant!r}: "
                             f"{t['tokens'].tolist()}")
        base = t.index[t["tokens"] == D0][0]
        t = add_drift(t, pd.Series(base, index=t.index), level=level, prefix="drift_log2")
        t["used_in_beta"] = np.isfinite(t["ln_eta_star"]) & (include_edge | (t["eq2_edge"] == ""))
        used = t[t["used_in_beta"]]
        beta = {"base_tokens": D0, "n_budgets": int(len(t)), "n_budgets_used": int(len(used)),
                "span": float(t["tokens"].max() / t["tokens"].min()), "beta": math.nan,
                "beta_ci": [math.nan, math.nan], "beta_se": math.nan, "fit": None, "notes": []}
        if len(used) >= 2:
            se = used["ln_eta_se"].to_numpy(float)
            fit = fit_log_linear(np.log(used["tokens"].to_numpy(float)), used["ln_eta_star"].to_numpy(float),
                                 se=se if np.all(np.isfinite(se) & (se > 0)) else None, level=level)
            lo, hi = fit.slope_ci[0]
            beta.update(beta=-float(fit.slopes[0]), beta_ci=[-float(hi), -float(lo)], beta_se=float(fit.slope_se[0]),
                        fit=fit.to_json())
        else:
            beta["notes"].append(f"beta not fitted: {len(used)} budget(s) with a bracketed Eq. 2 optimum, need >= 2")
        if len(t) < MIN_BUDGETS or beta["span"] < MIN_SPAN:
            beta["notes"].append(f"{len(t)} budgets spanning {beta['span']:.3g}x: beta is poorly determined "
                                 f"(>= {MIN_BUDGETS} budgets spanning >= {MIN_SPAN:g}x recommended)")
        shift = np.log2(t["tokens"].to_numpy(float) / D0)
        for name, b in {**RULES, "fitted": beta["beta"]}.items():
            for suffix in ("", "_lo", "_hi"):
                t[f"drift_rule_{name}_log2{suffix}"] = t[f"drift_log2{suffix}"] + b * shift
            t[f"eta_base_star_{name}"] = t["eta_star"] * (t["tokens"] / D0) ** b
        fits[variant] = beta
        parts.append(t)
    return pd.concat(parts).reset_index(drop=True), fits


def markdown(table: pd.DataFrame, fits: dict) -> str:
    lines = []
    for variant in variant_order(table["variant"]):
        b = fits[variant]
        lines.append(f"**{variant}**: fitted β = {_f(b['beta'], '.3f')} (95% CI {_ci(*b['beta_ci'], '.3f')}) over "
                     f"{b['n_budgets_used']} of {b['n_budgets']} budgets spanning {b['span']:.3g}×; "
                     f"paper β = {PAPER_BETA}; D0 = {b['base_tokens']:,.0f} tokens")
        lines += [f"- note: {n}" for n in b["notes"]]
        lines += ["", "| D (tokens) | best LR (grid) | η* (Eq. 2) | η* 95% CI | drift log2, no rule | "
                      f"with β={PAPER_BETA} | with fitted β | diverged |", "|" + "---|" * 8]
        for r in table[table["variant"] == variant].to_dict("records"):
            edge = f" ({r['eq2_edge']} edge)" if r["eq2_edge"] else ""
            cells = [f"{_f(r[f'{p}'], '+.2f')} {_ci(r[f'{p}_lo'], r[f'{p}_hi'], '+.2f')}"
                     for p in ("drift_log2", "drift_rule_paper_log2", "drift_rule_fitted_log2")]
            lines.append(f"| {r['tokens']:,} | {_f(r['best_lr'], '.3g')} | {_f(r['eta_star'], '.3g')}{edge} | "
                         f"{_ci(r['eta_ci_lo'], r['eta_ci_hi'], '.3g')} | {' | '.join(cells)} | {r['n_diverged']} |")
        lines.append("")
    return "\n".join(lines)


def plot_horizon(df: pd.DataFrame, table: pd.DataFrame, fits: dict, path, *, caption: str = "") -> Path:
    """Per variant: loss vs peak LR per budget; eta*(D) with its interval, the fitted power law and
    the paper's beta through D0; the drift without the rule and with each rule."""
    from matplotlib import cm
    variants = variant_order(table["variant"])
    fig, axes = new_figure(len(variants), 3, panel_size=(5.0, 4.0), extra_height=0.7)
    colors = size_colors(df["tokens"].unique())
    for row, variant in zip(axes, variants):
        g, t, b = df[df["variant"] == variant], table[table["variant"] == variant], fits[variant]
        draw_lr_curves(row[0], g, t, key="tokens", label="D ", colors=colors, lr_col="eta")
        row[0].set_ylim(*loss_ylim(g))
        row[0].set_xlabel("peak LR η (trained)")
        row[0].set_ylabel("validation loss at budget D")
        row[0].set_title(f"{variant}: loss vs LR per budget", fontsize=9)
        row[0].legend(fontsize=7, title="★ grid optimum, × diverged", title_fontsize=6)

        ax = row[1]
        ok = t[np.isfinite(t["eta_star"])]
        err = np.vstack([ok["eta_star"] - ok["eta_ci_lo"], ok["eta_ci_hi"] - ok["eta_star"]])
        ax.errorbar(ok["tokens"], ok["eta_star"], yerr=np.where(np.isfinite(err), err, 0), fmt="o", color="k",
                    capsize=3, label="η*(D), Eq. 2, 95% CI")
        ax.plot(t["tokens"], t["best_lr"], "s", mfc="none", color="0.5", label="grid optimum")
        D = np.geomspace(t["tokens"].min(), t["tokens"].max(), 50)
        if b["fit"]:
            ax.plot(D, np.exp(b["fit"]["intercept"]) * D ** (-b["beta"]), color="C0",
                    label=f"fit β = {b['beta']:.3f} [{b['beta_ci'][0]:.2f}, {b['beta_ci'][1]:.2f}]")
        base = t[t["tokens"] == b["base_tokens"]]
        if len(base) and np.isfinite(base["eta_star"].iloc[0]):
            ax.plot(D, base["eta_star"].iloc[0] * (D / b["base_tokens"]) ** (-PAPER_BETA), "--", color="C3",
                    label=f"paper β = {PAPER_BETA} through D0")
        log_scale(ax, "x")
        log_scale(ax, "y")
        ax.set_xlabel("tokens D")
        ax.set_ylabel("optimal peak LR")
        ax.set_title("η*(D)", fontsize=9)
        ax.legend(fontsize=7)

        ax = row[2]
        for k, (prefix, label) in enumerate((("drift_log2", "no rule"),
                                             ("drift_rule_paper_log2", f"rule β = {PAPER_BETA}"),
                                             ("drift_rule_fitted_log2", "rule, fitted β"))):
            y = t[prefix].to_numpy(float)
            err = np.abs(np.vstack([y - t[f"{prefix}_lo"].to_numpy(float), t[f"{prefix}_hi"].to_numpy(float) - y]))
            ax.errorbar(t["tokens"] * (1 + 0.03 * (k - 1)), y, yerr=np.where(np.isfinite(err), err, 0), fmt="o-",
                        color=cm.tab10(k), capsize=3, ms=4, label=label)
        ax.axhline(0, color="k", lw=0.8)
        log_scale(ax, "x")
        ax.set_xlabel("tokens D")
        ax.set_ylabel("drift log2 of the optimal (base) LR vs D0")
        ax.set_title("drift, 95% CI", fontsize=9)
        ax.legend(fontsize=7)
        for a in row:
            a.grid(alpha=0.3)
    fig.suptitle("Fig. 3 (horizon): optimal LR across token budgets, with and without the horizon rule "
                 "η(D) = η(D0)·(D/D0)^−β\n" + "\n".join(textwrap.wrap(caption, width=150)), fontsize=9)
    return save_figure(fig, path)


def write_horizon(sweep_dir: str | Path, out: str | Path | None = None, *, hardware: str = "unknown",
                  variant_keys: Iterable[str] = (), base_tokens: float | None = None) -> dict:
    """horizon.{png,csv,md,json} (and run_config.csv from a sweep directory) into `out`."""
    sweep_dir = Path(sweep_dir)
    out = Path(out) if out else sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    variant_keys = list(variant_keys)
    df = load_horizon(sweep_dir, variant_keys=variant_keys)
    table, fits = horizon_optima(df, base_tokens=base_tokens)
    caption = caption_for(df, hardware)
    plot_horizon(df, table, fits, out / "horizon.png", caption=caption)
    table.to_csv(out / "horizon.csv", index=False)
    md = markdown(table, fits)
    (out / "horizon.md").write_text(md)
    export_study_tables(sweep_dir, out, df["run_id"].unique(),
                        config_keys_used("tokens", [*variant_keys, "optim.horizon_beta"]))
    summary = jsonable({"sweep_dir": str(sweep_dir), "axis": "tokens", "variant_keys": variant_keys,
                         "base_tokens": base_tokens, "paper_beta": PAPER_BETA, "caption": caption,
                         "eq2_window": EQ2_WINDOW, "beta": fits,
                         "optima": json.loads(table.to_json(orient="records")), "markdown": md})
    (out / "horizon.json").write_text(json.dumps(summary, indent=1))
    return summary
